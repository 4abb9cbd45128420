"""The ablation table: built from `dvc exp show --json` output, one row per declared variant that has results."""

from pipeline.ablations import ABLATIONS, table


def experiment(name: str, mean: float, real: float) -> dict:
    metrics = {
        "reports/probe_metrics.json": {"data": {"step-distilled": {"mean": mean, "real_mean": real}}},
        "reports/probe_accuracy.json": {"data": {"step-distilled": {"real_mean": real + 0.05}}},
        "reports/probe_intervals.json": {"data": {"step-distilled": {"mean": {"low": mean - 0.02, "high": mean + 0.02},
                                                                      "real_mean": {"low": real - 0.1, "high": real + 0.1}}}},
    }
    return {"rev": "abc", "name": name, "data": {"metrics": metrics}}


def test_table_has_a_row_per_variant_with_intervals():
    shown = [{"rev": "workspace", "name": None, "data": {"metrics": {}},
              "experiments": [{"revs": [experiment("no-summary", 0.45, 0.6)]},
                              {"revs": [experiment("default", 0.41, 0.57)]},
                              {"revs": [experiment("not-a-variant", 0.9, 0.9)]}]}]
    lines = table(shown).splitlines()
    assert lines[0].startswith("| variant | overrides | generated mean F1")
    assert lines[2] == "| default | (params.yaml) | 0.410 ±0.020 | 0.570 ±0.100 | 0.620 |"  # declared order
    assert lines[3].startswith("| no-summary | distill.summary_weight=0.0 +student.overrides.embedding_size=0 | "
                               "0.450 ±0.020 |")
    assert len(lines) == 4 and "not-a-variant" not in "".join(lines)
    assert list(ABLATIONS)[0] == "default" and ABLATIONS["default"] == []


def test_every_variant_applies_to_the_committed_params_and_validates(tmp_path):
    """The overrides go through DVC's own Hydra parser (what `dvc exp run -S` uses) and give valid params that differ
    from the default: a misspelt key or a key missing its `+` would fail here, not an hour into a run."""
    import shutil
    from pathlib import Path

    import yaml
    from dvc.utils.hydra import apply_overrides

    from schemas.params import Params

    root = Path(__file__).resolve().parents[1]
    default = Params.model_validate(yaml.safe_load((root / "params.yaml").read_text()))
    for name, overrides in ABLATIONS.items():
        path = tmp_path / f"{name}.yaml"
        shutil.copy(root / "params.yaml", path)
        apply_overrides(path, overrides)
        params = Params.model_validate(yaml.safe_load(path.read_text()))
        assert (params == default) == (name == "default"), name
    in_domain = yaml.safe_load((tmp_path / "in-domain-corpus.yaml").read_text())["distill"]["datasets"]
    assert in_domain and all(name.startswith("pretrain_") for name in in_domain)


def test_a_detached_head_is_refused_and_reattached_after_an_interrupted_experiment(tmp_path, monkeypatch):
    """An interrupted `dvc exp run` can leave HEAD detached; commits made there reach no branch."""
    import subprocess

    import pytest

    from pipeline.ablations import current_branch, reattach, run

    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "--quiet", "--initial-branch", "main")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "one")
    monkeypatch.chdir(tmp_path)
    assert current_branch() == "main"
    git("checkout", "--quiet", "--detach")
    assert current_branch() is None
    with pytest.raises(RuntimeError, match="HEAD is detached: check out the branch"):
        run(["default"])
    reattach("main")  # detached at main's commit: main is checked out again
    assert current_branch() == "main"
    (tmp_path / "f").write_text("2")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "two")
    git("checkout", "--quiet", "HEAD~1")  # detached elsewhere: left as it is
    reattach("main")
    assert current_branch() is None
