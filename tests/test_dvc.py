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
    params["finetune"]["reports_dir"] = "reports"
    # the finetune stage tracks these (the splits, the probe's embedding and grid), so they must be spelled out
    params["evaluate"] |= {"seed": 0, "pooling": None, "probe_alphas": [0.1, 1.0, 10.0], "batch_size": 32}
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
                                 "distill", "evaluate", "finetune"}
    assert "finetune-scratch" in json.loads((repo / "reports/finetune_metrics.json").read_text())
    assert (repo / "models/step-student/model.safetensors").exists()
    metrics = json.loads((repo / "reports/probe_metrics.json").read_text())
    assert {"step-distilled", "step-random", "teacher:fracast"} <= set(metrics)
    assert "up to date" in dvc(repo, "status").lower()
    assert stages_run(dvc(repo, "repro")) == set()

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["distill"]["lr"] = 5e-4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(repo, "repro")) == {"distill", "evaluate", "finetune"}

    params["extract"]["teachers"]["spectral"]["window_seconds"] = 4.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(repo, "repro")) == {"extract@spectral", "distill", "evaluate", "finetune"}
    assert "reports/probe_metrics.json" in dvc(repo, "metrics", "show")


IMPORTED_PROJECT_FILES = """
import pathlib, sys
import pipeline.cli, stages.{stage}
root = pathlib.Path.cwd().resolve()
for module in list(sys.modules.values()):
    path = pathlib.Path(getattr(module, "__file__", None) or "/").resolve()
    if path.is_file() and path.is_relative_to(root) and ".venv" not in path.parts:
        print(path.relative_to(root))
"""


@pytest.mark.parametrize("stage", ["prepare", "extract", "distill", "evaluate", "finetune"])
def test_stage_deps_cover_the_project_modules_its_command_imports(stage):
    """A stage whose command imports a module it does not depend on would not rerun when that module changes."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    definition = stages[stage].get("do", stages[stage])  # foreach stages keep theirs under `do`
    assert f"step-pipeline {stage} " in definition["cmd"]
    deps = [str(d) for d in definition["deps"]]
    result = subprocess.run([sys.executable, "-c", IMPORTED_PROJECT_FILES.format(stage=stage)], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    imported = result.stdout.split()
    assert "pipeline/cli.py" in imported and f"stages/{stage}.py" in imported  # the probe itself works
    uncovered = [f for f in imported if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]
    assert not uncovered, f"dvc.yaml stage {stage!r} imports {uncovered} without depending on them"


def test_finetune_stage_runs_in_every_repro():
    """Fine-tuning is sized for the default run, so `dvc repro` runs it (it is not frozen) and tracks its reports."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["finetune"]
    assert not stage.get("frozen", False)
    for output in ["reports/finetune_metrics.json", "reports/finetune/loss.csv", "reports/finetune/splits.json"]:
        assert output in str(stage), output