"""Stage one end to end on a tiny project: stores readable with xarray, statistics, resume, refusal, retries."""

import shutil

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from data_catalog.catalog import load_catalog
from pipeline.cli import app
from pipeline.extract import TeacherBatchError, extract
from pipeline.feature_store import FeatureStore, StoreMismatchError
from pipeline.teachers import load_teacher
from schemas.params import load_params


def store_arrays(path) -> dict:
    store = FeatureStore.open(path)
    out = {}
    for group in store.group_names():
        for chunk in range(store.n_chunks(group)):
            features, n_tokens, ids = store.read_chunk(group, chunk)
            out[(group, chunk)] = (features, n_tokens, ids)
    return out


def test_store_layout_through_xarray(extracted_project):
    root, params_path = extracted_project
    params = load_params(params_path)
    path = root / "data/features/silero_vad.zarr"
    ds = xr.open_zarr(path, group="pre_long", consolidated=True)
    assert ds["features"].dims == ("segment", "token", "feature")
    assert ds.sizes["segment"] == 4  # 30000 samples cut into 4 segments of <= 8192
    assert list(ds["segment_id"].values[:2]) == ["pre_long-000000@0", "pre_long-000000@7500"]
    assert {"token_start", "token_end", "n_tokens", "chunk_done"} <= set(ds.variables)
    tree = xr.open_datatree(path, engine="zarr", consolidated=True)
    assert {"pre_sleep", "pre_radar", "pre_long", "probe_sleep", "probe_radar"} <= set(tree.children)
    # token counts are the teacher's own, NaN beyond them
    teacher = load_teacher("silero_vad", params.extract.teachers["silero_vad"])
    sleep = xr.open_zarr(path, group="pre_sleep", consolidated=True)
    expected = teacher.num_tokens(3000, 100.0)
    assert (sleep["n_tokens"].values == expected).all()
    assert np.isfinite(sleep["features"].values[:, :expected]).all()
    assert np.isnan(sleep["features"].values[:, expected:]).all()


def test_manifest_statistics_match_numpy(extracted_project):
    root, _ = extracted_project
    for teacher in ("silero_vad", "fracast", "spectral"):
        store = FeatureStore.open(root / f"data/features/{teacher}.zarr")
        assert store.manifest.complete
        tokens = np.concatenate([f[:n].reshape(-1, f.shape[-1])
                                 for f, counts, _ in store_arrays(store.path).values() for n, f in zip(counts, f)])
        # stored features are float16; statistics were accumulated from float32 before the cast
        np.testing.assert_allclose(store.manifest.feature_mean, tokens.mean(0), rtol=2e-2, atol=2e-3)
        np.testing.assert_allclose(store.manifest.feature_std, tokens.std(0), rtol=2e-2, atol=2e-3)


def test_rerun_of_finished_extraction_does_nothing(extracted_project, monkeypatch):
    root, params_path = extracted_project
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    from pipeline.teachers.base import TeacherAdapter

    def never(*args, **kwargs):
        raise AssertionError("the teacher ran on a finished store")

    monkeypatch.setattr(TeacherAdapter, "encode", never)
    manifest = extract("spectral", params, catalog, catalog.datasets)
    assert manifest.complete


def extract_interrupted_after(chunks: int, teacher: str, params, catalog, monkeypatch) -> None:
    """Run `extract` in this process and interrupt it once `chunks` chunks are written (the real SIGKILL
    tests are in test_faults.py)."""
    calls = {"n": 0}
    original = FeatureStore.write_chunk

    def interrupt_after(self, *args):
        calls["n"] += 1
        if calls["n"] == chunks + 1:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args)

    monkeypatch.setattr(FeatureStore, "write_chunk", interrupt_after)
    with pytest.raises(KeyboardInterrupt):
        extract(teacher, params, catalog, catalog.datasets)
    monkeypatch.setattr(FeatureStore, "write_chunk", original)


def test_killed_extraction_resumes_to_identical_store(extracted_project, tmp_path, monkeypatch):
    root, params_path = extracted_project
    params = load_params(params_path)
    params.extract.store_dir = str(tmp_path / "features")
    catalog = load_catalog(params.prepare.catalog)
    extract_interrupted_after(3, "fracast", params, catalog, monkeypatch)
    partial = FeatureStore.open(tmp_path / "features/fracast.zarr")
    assert not partial.manifest.complete
    extract("fracast", params, catalog, catalog.datasets)

    resumed, reference = store_arrays(tmp_path / "features/fracast.zarr"), store_arrays(
        root / "data/features/fracast.zarr")
    assert resumed.keys() == reference.keys()
    for key in reference:
        for got, want in zip(resumed[key], reference[key]):
            np.testing.assert_array_equal(got, want)  # bitwise: fracast is deterministic on CPU
    assert (FeatureStore.open(tmp_path / "features/fracast.zarr").manifest.feature_mean
            == FeatureStore.open(root / "data/features/fracast.zarr").manifest.feature_mean)


def test_store_from_another_configuration_is_refused(extracted_project, tmp_path):
    root, params_path = extracted_project
    params = load_params(params_path)
    params.extract.store_dir = str(tmp_path / "features")
    shutil.copytree(root / "data/features/spectral.zarr", tmp_path / "features/spectral.zarr")
    catalog = load_catalog(params.prepare.catalog)
    params.extract.teachers["spectral"] = params.extract.teachers["spectral"].model_copy(
        update={"window_seconds": params.extract.teachers["spectral"].window_seconds * 2})
    with pytest.raises(StoreMismatchError, match="--overwrite"):
        extract("spectral", params, catalog, catalog.datasets[:1])
    manifest = extract("spectral", params, catalog, catalog.datasets[:1], overwrite=True)
    assert manifest.complete and list(manifest.groups) == ["pre_sleep"]


def test_failing_batch_is_retried_smaller_then_named(extracted_project, tmp_path, monkeypatch):
    root, params_path = extracted_project
    params = load_params(params_path)
    params.extract.store_dir = str(tmp_path / "features")
    catalog = load_catalog(params.prepare.catalog)
    entries = [catalog.get("pre_sleep")]
    from pipeline.teachers.spectral import SpectralTeacherAdapter as Adapter

    original = Adapter.encode

    def out_of_memory_above_two(self, values, rate):
        if len(values) > 2:
            raise RuntimeError("simulated out of memory")
        return original(self, values, rate)

    monkeypatch.setattr(Adapter, "encode", out_of_memory_above_two)
    extract("spectral", params, catalog, entries)
    got = store_arrays(tmp_path / "features/spectral.zarr")
    want = store_arrays(root / "data/features/spectral.zarr")
    for key in got:
        np.testing.assert_array_equal(got[key][0], want[key][0])

    def always_fails(self, values, rate):
        raise RuntimeError("broken teacher")

    monkeypatch.setattr(Adapter, "encode", always_fails)
    with pytest.raises(TeacherBatchError, match="segment 'pre_sleep-000000'"):
        extract("spectral", params, catalog, entries, overwrite=True)
    failed = FeatureStore.open(tmp_path / "features/spectral.zarr")
    assert failed.pending_chunks("pre_sleep") == list(range(failed.n_chunks("pre_sleep")))  # nothing marked done


def test_cli_extract_and_inspect(extracted_project, tmp_path):
    root, params_path = extracted_project
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "--teacher", "nope", "--params", str(params_path)])
    assert result.exit_code == 2 and "extract.teachers has no ['nope']" in result.output
    result = runner.invoke(app, ["inspect", str(root / "data/features/spectral.zarr"), "--plot",
                                 str(tmp_path / "stats.png")])
    assert result.exit_code == 0, result.output
    assert "pre_long" in result.output and "zstd" in result.output
    assert (tmp_path / "stats.png").stat().st_size > 1000
