"""Shared test set-up: offline hub, caches in a temp dir, and a project-root working directory helper."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_home_caches(tmp_path_factory, monkeypatch):
    """mne, matplotlib and huggingface write caches under HOME: keep them out of the user's home."""
    cache = tmp_path_factory.getbasetemp() / "home-caches"
    monkeypatch.setenv("MPLCONFIGDIR", str(cache / "matplotlib"))
    monkeypatch.setenv("HF_HOME", str(cache / "huggingface"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def extracted_project(tmp_path_factory):
    """The tiny project (tests/project.py), prepared and extracted with the three default teachers, once."""
    from stages import extract as extract_stage
    from stages import prepare as prepare_stage
    from tests.project import write_project

    root = tmp_path_factory.mktemp("project")
    params_path = write_project(root)
    prepare_stage.run(str(params_path))
    extract_stage.run(str(params_path))
    return root, params_path


def pytest_terminal_summary(terminalreporter):
    """The fault summary line (tests/fault_summary.py), when fault or bad-input tests ran."""
    from tests.fault_summary import summary_line

    line = summary_line()
    if line:
        terminalreporter.write_line(line)
