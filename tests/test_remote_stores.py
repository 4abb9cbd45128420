"""Feature and series stores on fsspec URLs: memory:// stands in for s3:// or gs:// (same FsspecStore code path,
no network), file:// for a URL that resolves to the local filesystem (LocalStore and the flock)."""

import json
import logging
import warnings

import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr

from data_catalog.catalog import load_catalog, open_reader
from data_catalog.readers import GeneratorReader, SeriesStoreReader
from data_catalog.series_store import prepare
from pipeline.feature_store import FeatureStore, StoreLockedError, StoreMismatchError, describe_store
from schemas.manifest import StoreCompression
from tests.conftest import ROOT
from tests.test_feature_store import (
    DATA_SETS,
    FEATURE_DIM,
    SAMPLING_RATE,
    TOKEN_RATE,
    build_store,
    make_manifest,
    valid_tokens,
    write_groups,
)

COMPRESSION = StoreCompression(chunk_segments=4)


@pytest.fixture
def memory():
    """The process-wide memory filesystem, emptied after the test (every instance shares one dict)."""
    fs = fsspec.filesystem("memory")
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


def store_objects(fs, root: str) -> dict[str, bytes]:
    """Every object of a store but the root zarr.json (which holds the creation time)."""
    return {path[len(root):]: fs.cat_file(path) for path in sorted(fs.find(root)) if path != f"{root}/zarr.json"}


def test_feature_store_round_trip_on_memory(memory, caplog):
    url = "memory://stores/toy.zarr"
    with caplog.at_level(logging.WARNING, logger="pipeline.feature_store"):
        manifest = build_store(url, COMPRESSION)
    assert "has no locks" in caplog.text  # object stores: the single writer is the user's job, and we say so

    assert memory.isfile("/stores/toy.zarr/quakes/features/zarr.json")  # really in memory
    store = FeatureStore.open(url)
    assert store.path == url and store.manifest == manifest and manifest.complete
    np.testing.assert_allclose(manifest.feature_mean, valid_tokens().mean(axis=0), rtol=1e-12)
    segment_ids, n_tokens, features = DATA_SETS["quakes"]
    chunk_features, chunk_n_tokens, chunk_ids = store.read_chunk("quakes", 5)  # the last, partial chunk
    assert chunk_ids.tolist() == segment_ids[20:23]
    for row, n in enumerate(chunk_n_tokens):
        np.testing.assert_array_equal(chunk_features[row, :n], features[20 + row, :n].astype(np.float16))
        assert np.isnan(chunk_features[row, n:]).all()
    with pytest.raises(RuntimeError, match="read-only"):
        store.write_chunk("quakes", 0, features[0:4])

    text = describe_store(url)
    assert f"Feature store {url}  (complete)" in text and "bytes per valid token" in text


def test_resume_on_memory_equals_an_uninterrupted_run(memory):
    reference, resumed = "memory://stores/reference.zarr", "memory://stores/resumed.zarr"
    build_store(reference, COMPRESSION)

    store = FeatureStore.create_or_open(resumed, make_manifest(), COMPRESSION)
    write_groups(store, only_chunks={"quakes": [0, 2]})
    del store  # dropped without finalize or close, like a killed run
    assert "INCOMPLETE" in describe_store(resumed)

    with FeatureStore.create_or_open(resumed, make_manifest(), COMPRESSION) as store:
        assert store.pending_chunks("quakes") == [1, 3, 4, 5]
        write_groups(store)
        store.finalize()
    assert store_objects(memory, "/stores/resumed.zarr") == store_objects(memory, "/stores/reference.zarr")


def test_other_configuration_on_memory_is_refused_until_overwrite(memory):
    url = "memory://stores/toy.zarr"
    build_store(url, COMPRESSION)
    other = make_manifest(config={"layer": 3, "normalize": False})
    with pytest.raises(StoreMismatchError, match=r"(?s)config\['normalize'\]: store has True, requested False"):
        FeatureStore.create_or_open(url, other, COMPRESSION)
    with FeatureStore.create_or_open(url, other, COMPRESSION, overwrite=True) as store:
        assert store.group_names() == []
    assert memory.ls("/stores/toy.zarr", detail=False) == ["/stores/toy.zarr/zarr.json"]

    memory.pipe_file("/stores/other.zarr/notes.txt", b"not a feature store")
    with pytest.raises(StoreMismatchError, match=r"memory://stores/other.zarr exists but is not a feature store"):
        FeatureStore.create_or_open("memory://stores/other.zarr", make_manifest(), COMPRESSION)


def test_untrusted_metadata_on_memory_is_refused(memory):
    url = "memory://stores/toy.zarr"
    build_store(url, COMPRESSION)
    metadata_path = "/stores/toy.zarr/voices/n_tokens/zarr.json"
    metadata = json.loads(memory.cat_file(metadata_path))
    memory.pipe_file(metadata_path, json.dumps(metadata | {"data_type": "object"}).encode())
    memory.pipe_file("/stores/toy.zarr/voices/.zattrs", b"{}")
    with pytest.raises(ValueError, match=r"(?s)refusing to read feature store memory://stores/toy.zarr:.*"
                                         r"voices/\.zattrs: zarr v2 metadata.*voices/n_tokens: data type 'object'"):
        FeatureStore.open(url)


def test_chunk_writers_on_memory(memory):
    """What Dask workers do: the driver lays out and finalizes, workers open the URL and write chunks."""
    url = "memory://stores/toy.zarr"
    segment_ids, n_tokens, features = DATA_SETS["voices"]
    with FeatureStore.create_or_open(url, make_manifest(), COMPRESSION) as driver:
        driver.ensure_group("voices", segment_ids, n_tokens, TOKEN_RATE, SAMPLING_RATE)
        for chunk in driver.pending_chunks("voices"):
            worker = FeatureStore.open_chunk_writer(url)
            worker.write_chunk("voices", chunk, features[driver.chunk_slice("voices", chunk)])
        manifest = driver.finalize()
    assert manifest.complete
    assert manifest.feature_mean == build_store("memory://stores/reference.zarr", COMPRESSION,
                                                {"voices": DATA_SETS["voices"]}).feature_mean
    with pytest.raises(RuntimeError, match="is complete"):
        FeatureStore.open_chunk_writer(url)


def test_file_url_is_the_local_store_with_its_lock(tmp_path):
    path = tmp_path / "toy.zarr"
    url = path.as_uri()  # file:///...
    build_store(url, COMPRESSION)
    assert (path / "quakes" / "features" / "zarr.json").is_file()
    assert FeatureStore.open(path).manifest == FeatureStore.open(url).manifest
    assert FeatureStore.open(url).path == url

    with FeatureStore.create_or_open(url, make_manifest(), COMPRESSION):  # the URL and the path: one lock
        with pytest.raises(StoreLockedError, match=f"feature store {path} is being written"):
            FeatureStore.create_or_open(path, make_manifest(), COMPRESSION)
    with pytest.raises(StoreMismatchError, match="feature_dim: store has 12, requested 8"):
        FeatureStore.create_or_open(url, make_manifest(feature_dim=8), COMPRESSION)


def test_xarray_and_zarr_read_a_feature_store_from_its_url(memory):
    """What users do with a store on s3:// (plus storage_options= when credentials are not in the env)."""
    url = "memory://stores/toy.zarr"
    build_store(url, COMPRESSION)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown-object or sync-filesystem warnings
        dataset = xr.open_zarr(url, group="quakes", consolidated=True)
        assert dataset["features"].dims == ("segment", "token", "feature")
        assert dataset["features"].shape == (23, 9, FEATURE_DIM)
        assert dataset["segment_id"].values.tolist() == DATA_SETS["quakes"][0]
        tree = xr.open_datatree(url, engine="zarr", consolidated=True)
        assert set(tree.children) == {"quakes", "voices"}
    assert zarr.open_group(url, mode="r", path="voices")["n_tokens"][:].tolist() == DATA_SETS["voices"][1].tolist()


def test_series_store_on_memory(memory):
    catalog = load_catalog(ROOT / "data_catalog" / "catalog.yaml")
    entry = catalog.get("leaves_like").model_copy(deep=True)
    entry.source.count = 10
    url = "memory://stores/series.zarr"
    assert prepare(url, [entry], chunk_samples=4096) == ["leaves_like"]
    assert prepare(url, [entry], chunk_samples=4096) == []  # up to date

    reader = open_reader(entry, catalog, url)
    assert isinstance(reader, SeriesStoreReader)
    generated = GeneratorReader(entry)
    for i in (0, 9):
        np.testing.assert_array_equal(reader[i].values, generated[i].values)
    block = reader.read_block(range(3, 6))
    assert [series.id for series in block] == reader.ids[3:6]
    np.testing.assert_array_equal(block[1].values, generated[4].values)
    dataset = xr.open_zarr(url, group="leaves_like", consolidated=True)
    assert dataset.sizes["sample"] == int(reader.lengths.sum())

    entry.source.seed += 1  # a changed entry is rebuilt in place
    assert prepare(url, [entry], chunk_samples=4096) == ["leaves_like"]
    np.testing.assert_array_equal(SeriesStoreReader(entry, url)[0].values, GeneratorReader(entry)[0].values)
    assert prepare(url, [], chunk_samples=4096) == []  # dropped from the catalog: removed
    assert memory.ls("/stores/series.zarr", detail=False) == ["/stores/series.zarr/zarr.json"]
    with pytest.raises(FileNotFoundError, match="no group 'leaves_like'; run `step-pipeline prepare` first"):
        SeriesStoreReader(entry, url)


def test_extract_and_distill_with_stores_on_a_url(extracted_project, memory, tmp_path):
    """The stages themselves take URLs: extraction writes a memory:// store equal to the local one, and
    distillation trains from stores that live only in memory://."""
    from pipeline.distill.train import distill
    from pipeline.extract import extract
    from schemas.params import load_params
    from tests.test_cluster_extract import assert_same_store

    root, params_path = extracted_project
    params = load_params(params_path)
    params.extract.store_dir = "memory://features"
    catalog = load_catalog(params.prepare.catalog)
    extract("spectral", params, catalog, catalog.datasets)
    assert_same_store("memory://features/spectral.zarr", root / "data/features/spectral.zarr")

    for teacher in ("silero_vad", "fracast"):  # the other stores, copied as they are
        memory.put(str(root / f"data/features/{teacher}.zarr"), f"/features/{teacher}.zarr", recursive=True)
    params.distill = params.distill.model_copy(update={
        "output_dir": str(tmp_path / "model"), "checkpoint_dir": str(tmp_path / "checkpoints"),
        "reports_dir": str(tmp_path / "reports"), "max_steps": 2})
    metrics = distill(params)
    assert metrics["steps"] == 2 and np.isfinite(metrics["val_loss"]["total"])
