"""Does a fresh clone reproduce the committed results exactly? Clone HEAD, run `make repro`, compare with git.

    .venv/bin/python bench/fresh_clone_repro.py            # or: make fresh-clone-check
    .venv/bin/python bench/fresh_clone_repro.py --keep --dir /scratch

The clone gets its own .venv from the lock files and runs every stage from an empty data/ (about 20 minutes on
2 cores, plus the set-up). Afterwards `step-pipeline evaluate --update-readme README.md` rewrites the clone's
README from the reports the run just wrote. The check passes when `git status --porcelain` of the clone is then
empty: dvc.lock (the hash of every store and of the model), reports/ and the README's table are the committed
ones. The last line is the verdict; the exit status is 0 only when it passes.
"""

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("fresh_clone_repro")


@dataclass
class CloneCheck:
    commit: str
    changed: list[str]        # `git status --porcelain` lines after the run and the README rewrite
    readme_equal: bool        # README.md is not among them
    seconds: float

    @property
    def clean(self) -> bool:
        return not self.changed


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def check_fresh_clone(source: Path, clone: Path, command: list[str], readme_command: list[str]) -> CloneCheck:
    """Clone `source`'s HEAD into `clone` (which must not exist), run `command` there, then `readme_command`,
    and collect what git sees as changed. The commands run with the clone as working directory."""
    git("clone", "--quiet", "--no-hardlinks", str(source), str(clone), cwd=source.parent)
    commit = git("rev-parse", "HEAD", cwd=clone).strip()
    log.info("cloned %s at %s into %s; running %s", source, commit[:12], clone, " ".join(command))
    # the clone builds and uses its own .venv: nothing of the calling environment's venv or make may leak in
    inherited = ("VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VENV")
    environment = {name: value for name, value in os.environ.items() if name not in inherited}
    environment["PATH"] = os.pathsep.join(entry for entry in environment.get("PATH", "").split(os.pathsep)
                                          if Path(entry) != source / ".venv" / "bin")
    environment["HF_HUB_OFFLINE"] = "1"
    started = time.perf_counter()
    subprocess.run(command, cwd=clone, check=True, env=environment)
    seconds = time.perf_counter() - started
    subprocess.run(readme_command, cwd=clone, check=True, env=environment)
    changed = [line for line in git("status", "--porcelain", cwd=clone).splitlines() if line.strip()]
    readme_equal = not any(line[3:] == "README.md" for line in changed)
    return CloneCheck(commit, changed, readme_equal, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where the scratch clone goes (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards (it holds a .venv and data/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    scratch = Path(tempfile.mkdtemp(prefix="step-fresh-clone-", dir=args.dir))
    try:
        result = check_fresh_clone(ROOT, scratch / "clone", ["make", "repro"],
                                   [".venv/bin/step-pipeline", "evaluate", "--update-readme", "README.md"])
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    for line in result.changed:
        print(f"changed: {line}")
    if args.keep:
        print(f"clone kept at {scratch / 'clone'}")
    print(f"fresh clone of {result.commit[:12]}: make repro {result.seconds / 60:.1f} min; git status "
          f"{'clean' if result.clean else f'NOT clean ({len(result.changed)} files)'}; README table "
          f"{'equals the committed one' if result.readme_equal else 'DIFFERS from the committed one'}")
    sys.exit(0 if result.clean else 1)


if __name__ == "__main__":
    main()
