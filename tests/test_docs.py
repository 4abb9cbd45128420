"""The documentation holds together: README is short, every relative link and #anchor in README.md and docs/
resolves (GitHub's heading slugs), every docs page is reachable from README, and README's generated results block
is exactly what `step-pipeline evaluate --update-readme` writes from the committed reports/."""

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", lambda m: "`" + " " * (len(m.group(0)) - 2) + "`", line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return result


def relative_links(path: Path) -> list[str]:
    targets = [m.group(1) for line in prose_lines(path.read_text()) for m in LINK.finditer(line)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: are not ours


def test_github_slugs_match_githubs_rules():
    assert github_slug("The paper's recipe: `params-paper.yaml`") == "the-papers-recipe-params-paperyaml"
    assert github_slug("What `dvc repro` produces") == "what-dvc-repro-produces"
    assert github_slug("Validation per source, memory") == "validation-per-source-memory"
    assert github_slug("Fine-tuning against training from scratch (the paper's protocol)") == \
        "fine-tuning-against-training-from-scratch-the-papers-protocol"


def test_every_page_has_links_and_the_checker_sees_a_broken_one(tmp_path):
    assert all(relative_links(page) for page in PAGES if page.name in ("README.md", "design.md"))
    broken = tmp_path / "page.md"
    broken.write_text("# Title\n\n[a](#title) [b](#nowhere) `[c](#in-code)`\n```\n[d](#fenced)\n```\n")
    assert relative_links(broken) == ["#title", "#nowhere"] and anchors(broken) == {"title"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    problems = []
    for target in relative_links(page):
        location, _, anchor = target.partition("#")
        linked = (page.parent / location).resolve() if location else page
        if not linked.exists():
            problems.append(f"{target}: no such file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: no heading with anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_readme_is_short_and_maps_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    linked = {target.partition("#")[0] for target in relative_links(ROOT / "README.md")}
    unlinked = [page.name for page in PAGES[1:] if f"docs/{page.name}" not in linked]
    assert not unlinked, f"docs pages README does not link to: {unlinked}"


def test_readme_results_block_is_what_update_readme_writes(tmp_path):
    from pipeline.evaluate import README_END, README_START, update_readme

    readme = ROOT / "README.md"
    copy = tmp_path / "README.md"
    shutil.copy(readme, copy)
    update_readme(copy, ROOT / "reports")
    written, committed = copy.read_text(), readme.read_text()
    assert committed.count(README_START) == 1 and committed.count(README_END) == 1
    assert written == committed, "README's generated blocks are stale: run `step-pipeline evaluate --update-readme README.md`"


def test_fresh_clone_check_sees_a_clean_run_and_names_what_a_run_changed(tmp_path):
    """bench/fresh_clone_repro.py's logic on a tiny repository (its real run, `make repro`, takes 20 minutes)."""
    import subprocess
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from fresh_clone_repro import check_fresh_clone
    finally:
        sys.path.remove(str(ROOT / "bench"))
    source = tmp_path / "source"
    source.mkdir()
    (source / "README.md").write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    (source / "result.txt").write_text("0.622\n")
    (source / ".gitignore").write_text("/run_info/\n")
    for command in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *command], cwd=source, check=True)
    python = [sys.executable, "-c"]

    clean = check_fresh_clone(source, tmp_path / "clean", python + [
        "import pathlib; pathlib.Path('run_info').mkdir(); pathlib.Path('run_info/wall.txt').write_text('12 s')"],
        python + ["pass"])
    assert clean.clean and clean.readme_equal and len(clean.commit) == 40

    changed = check_fresh_clone(source, tmp_path / "changed", python + [
        "import pathlib; pathlib.Path('result.txt').write_text('0.627\\n')"],
        python + ["import pathlib; p = pathlib.Path('README.md'); p.write_text(p.read_text().replace('old', 'new'))"])
    assert not changed.clean and not changed.readme_equal
    assert sorted(line[3:] for line in changed.changed) == ["README.md", "result.txt"]


def test_ci_runs_the_test_command_the_readme_gives():
    readme = (ROOT / "README.md").read_text()
    assert "make test    # " in readme and "make repro   # " in readme
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test"
