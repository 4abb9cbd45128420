"""The command line: help, catalog tools, prepare and embed, with errors that name what is wrong."""

import numpy as np
import xarray as xr
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import ROOT
from tests.project import tiny_student, write_project

runner = CliRunner()


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("catalog", "prepare", "extract", "distill", "evaluate", "finetune", "embed", "inspect", "params"):
        assert command in result.output
    # option help comes from the pydantic field descriptions
    wide = {"COLUMNS": "200"}  # no line wrapping in the help table
    assert "Optimisation steps" in runner.invoke(app, ["distill", "--help"], env=wide).output
    params_doc = runner.invoke(app, ["params"]).output
    assert "distill.max_target_tokens" in params_doc and "average-pooled" in params_doc


def test_catalog_list_show_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["catalog", "list"])
    assert result.exit_code == 0, result.output
    assert "gwosc_like" in result.output and "radar" in result.output
    result = runner.invoke(app, ["catalog", "show", "stead_like"])
    assert "seismograms" in result.output and "binary_f1" in result.output
    assert runner.invoke(app, ["catalog", "show", "nope"]).exit_code == 2

    bad = yaml.safe_load((ROOT / "data_catalog/catalog.yaml").read_text())
    bad["datasets"][2]["channels"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = runner.invoke(app, ["catalog", "validate", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert "bad.yaml: datasets.2.channels: Input should be greater than or equal to 1" in result.output
    assert runner.invoke(app, ["catalog", "validate"]).exit_code == 0


def test_prepare_then_list_shows_lengths(tmp_path):
    params = write_project(tmp_path)
    result = runner.invoke(app, ["prepare", "--params", str(params)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["catalog", "list", "--params", str(params)])
    assert "30000-30000" in result.output  # the long record, read from the series store


def test_bad_params_exit_with_field_path(tmp_path):
    (tmp_path / "params.yaml").write_text("extract: {teachers: {}}\nprepare: {chunk_samples: 3}\n")
    result = runner.invoke(app, ["prepare", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert "prepare.chunk_samples: Input should be greater than or equal to 1024" in result.output


def test_embed_file_and_dataset(tmp_path):
    model_dir = tmp_path / "model"
    tiny_student().save_pretrained(model_dir)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 2, 300)).astype(np.float32))
    result = runner.invoke(app, ["embed", "--model", str(model_dir), "--input", str(tmp_path / "x.npy"),
                                 "--stacked", "--output", str(tmp_path / "x.zarr")])
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(tmp_path / "x.zarr", consolidated=True)
    # default pooling: mean+std+max (embedding 64), stats (2), structure (mean, std, max of 8 lags and 8 bands),
    # kernels (the pooled 3 x 3 x 84 kernel activities on 16 principal components)
    assert ds["embedding"].shape == (5, 3 * 64 + 2 + 3 * 16 + 16)
    assert np.isfinite(ds["embedding"].values).all()
    result = runner.invoke(app, ["embed", "--model", str(model_dir), "--input", str(tmp_path / "x.npy"),
                                 "--output", str(tmp_path / "x3.zarr")])
    assert result.exit_code == 2 and "pass --stacked" in result.output  # a 3-D array is never one series

    params = write_project(tmp_path / "project")
    runner.invoke(app, ["prepare", "--params", str(params)])
    result = runner.invoke(app, ["embed", "--model", str(model_dir), "--dataset", "probe_radar", "--params",
                                 str(params), "--output", str(tmp_path / "radar.zarr")])
    assert result.exit_code == 0, result.output
    assert xr.open_zarr(tmp_path / "radar.zarr", consolidated=True).sizes["series"] == 20
    result = runner.invoke(app, ["embed", "--model", str(tmp_path), "--input", str(tmp_path / "x.npy"),
                                 "--output", str(tmp_path / "y.zarr")])
    assert result.exit_code == 2 and "not a model directory" in result.output
