"""The DVC wiring on a tiny params file: a first repro runs everything, a second nothing, and a changed param
reruns exactly the stages downstream of it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.project import tiny_catalog, tiny_params


def dvc(repo: Path, *args: str) -> str:
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    result = subprocess.run([str(bin_dir / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def relative_params() -> dict:
    """The tiny params with the default (relative) paths that dvc.yaml declares."""
    params = tiny_params(Path("."))
    params["prepare"]["catalog"] = "data_catalog/catalog.yaml"
    params["prepare"]["series_store"] = "data/series.zarr"
    params["extract"]["store_dir"] = "data/features"
    params["distill"] |= {"output_dir": "models/step-student", "checkpoint_dir": "models/checkpoints",
                          "reports_dir": "reports"}
    params["evaluate"]["reports_dir"] = "reports"
    return params


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dvc-repo")
    for name in ("pipeline", "data_catalog", "stages", "schemas"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / "data_catalog" / "catalog.yaml").write_text(yaml.safe_dump(tiny_catalog(), sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(relative_params(), sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    return repo


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_repro_runs_everything_then_nothing_then_only_downstream(repo):
    first = dvc(repo, "repro")
    assert stages_run(first) == {"prepare", "extract@silero_vad", "extract@fracast", "extract@spectral",
                                 "distill", "evaluate"}
    assert (repo / "models/step-student/model.safetensors").exists()
    metrics = json.loads((repo / "reports/probe_metrics.json").read_text())
    assert {"step-distilled", "step-random", "teacher:fracast"} <= set(metrics)
    assert "up to date" in dvc(repo, "status").lower()
    assert stages_run(dvc(repo, "repro")) == set()

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["distill"]["lr"] = 5e-4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(repo, "repro")) == {"distill", "evaluate"}

    params["extract"]["teachers"]["spectral"]["window_seconds"] = 4.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(repo, "repro")) == {"extract@spectral", "distill", "evaluate"}
    assert "reports/probe_metrics.json" in dvc(repo, "metrics", "show")
