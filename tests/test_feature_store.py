"""The teacher feature store: layout through xarray, streaming statistics, resume, refusal, lock, lossy codecs."""

import contextlib
import multiprocessing
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.feature_store import (
    FeatureStore,
    StoreLockedError,
    StoreMismatchError,
    describe_store,
    merge_moments,
    plot_store,
)
from schemas.manifest import FeatureStoreManifest, StoreCompression, config_hash

FEATURE_DIM = 12
TOKEN_RATE = 31.25
SAMPLING_RATE = 16_000.0


def make_manifest(**overrides) -> FeatureStoreManifest:
    fields = dict(
        teacher="toy", kind="toy", model_id="toy/model", revision="abc", weights_sha256="0" * 64, layer=3,
        native_rate=SAMPLING_RATE, feature_dim=FEATURE_DIM, config={"layer": 3, "normalize": True},
        segment={"max_seconds": 10.0},
    )  # fmt: skip
    return FeatureStoreManifest(**(fields | overrides))


def make_data_set(seed: int, n_segments: int, max_tokens: int, offset: float = 100.0):
    """Segment ids, token counts (some 0, one full) and smooth random-walk features (segment, token, F) float32.

    The default offset of 100 makes a naive sum-of-squares variance lose digits.
    """
    rng = np.random.default_rng(seed)
    n_tokens = rng.integers(0, max_tokens + 1, size=n_segments)
    n_tokens[0] = max_tokens
    steps = rng.normal(scale=0.05, size=(n_segments, max_tokens, FEATURE_DIM))
    features = offset + rng.normal(size=(1, 1, FEATURE_DIM)) + np.cumsum(steps, axis=1)
    segment_ids = [f"seg{seed}-{i:04d}" for i in range(n_segments)]
    return segment_ids, n_tokens, features.astype(np.float32)


DATA_SETS = {"quakes": make_data_set(1, 23, 9), "voices": make_data_set(2, 10, 5)}


def write_groups(store: FeatureStore, data_sets=DATA_SETS, only_chunks=None) -> None:
    """Ensure every group and write its pending chunks (or only those in only_chunks[name])."""
    for name, (segment_ids, n_tokens, features) in data_sets.items():
        store.ensure_group(name, segment_ids, n_tokens, TOKEN_RATE, SAMPLING_RATE)
        for chunk in store.pending_chunks(name):
            if only_chunks is not None and chunk not in only_chunks.get(name, []):
                continue
            segments = store.chunk_slice(name, chunk)
            # (k, tokens, F), with real values past each n_tokens that the store must blank to NaN
            chunk_features = features[segments, : n_tokens[segments].max()]
            store.write_chunk(name, chunk, chunk_features)


def build_store(path, compression=StoreCompression(chunk_segments=4), data_sets=DATA_SETS) -> FeatureStoreManifest:
    with FeatureStore.create_or_open(path, make_manifest(), compression) as store:
        write_groups(store, data_sets)
        return store.finalize()


def valid_tokens(data_sets=DATA_SETS) -> np.ndarray:
    """All groups' valid tokens, (tokens, F) float64: the reference for the store's statistics."""
    rows = [features[i, :n] for _, n_tokens, features in data_sets.values() for i, n in enumerate(n_tokens)]
    return np.concatenate(rows).astype(np.float64)


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store but the root zarr.json (which holds the creation time)."""
    return {
        file.relative_to(path).as_posix(): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file() and file != path / "zarr.json"
    }


def features_bytes(path: Path, group: str) -> int:
    return sum(file.stat().st_size for file in (path / group / "features").rglob("*") if file.is_file())



@contextlib.contextmanager
def features_write_fails(store: FeatureStore, group: str):
    """Within the block, writing `group`'s features raises OSError as a full disk does; restored after."""

    class FailingDisk:
        shape = store._arrays[group]["features"].shape

        def __setitem__(self, selection, value):
            raise OSError("No space left on device")

    real, store._arrays[group]["features"] = store._arrays[group]["features"], FailingDisk()
    try:
        yield
    finally:
        store._arrays[group]["features"] = real

def test_layout_reads_back_through_xarray(tmp_path):
    path = tmp_path / "toy.zarr"
    build_store(path)

    dataset = xr.open_zarr(path, group="quakes", consolidated=True)
    segment_ids, n_tokens, features = DATA_SETS["quakes"]
    assert dataset["features"].dims == ("segment", "token", "feature")
    assert dataset["features"].shape == (23, 9, FEATURE_DIM)
    assert dataset["features"].dtype == np.float16
    assert dataset["features"].encoding["chunks"] == (4, 9, FEATURE_DIM)
    assert dataset["segment_id"].dims == ("segment",) and dataset["segment_id"].dtype.kind == "U"
    assert dataset["segment_id"].values.tolist() == segment_ids
    np.testing.assert_array_equal(dataset["n_tokens"].values, n_tokens)
    np.testing.assert_allclose(dataset["token_start"].values, np.arange(9) / TOKEN_RATE)
    np.testing.assert_allclose(dataset["token_end"].values, np.arange(1, 10) / TOKEN_RATE)
    assert dataset["chunk_done"].values.all() and dataset["chunk_done"].dims == ("chunk",)
    assert dataset.attrs["token_rate"] == TOKEN_RATE

    stored = dataset["features"].values
    beyond = np.arange(9)[None, :] >= n_tokens[:, None]  # (segment, token) padding mask
    assert np.isnan(stored[beyond]).all()
    np.testing.assert_array_equal(stored[~beyond], features[~beyond].astype(np.float16))

    tree = xr.open_datatree(path, engine="zarr")
    assert set(tree.children) == {"quakes", "voices"}
    assert tree["voices"]["features"].dims == ("segment", "token", "feature")
    assert FeatureStoreManifest.model_validate(tree.attrs["manifest"]).complete


def test_statistics_equal_numpy_over_chunks_and_groups(tmp_path):
    manifest = build_store(tmp_path / "toy.zarr")
    tokens = valid_tokens()  # (tokens, F) float64, from the float32 features
    np.testing.assert_allclose(manifest.feature_mean, tokens.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(manifest.feature_std, tokens.std(axis=0), rtol=1e-9)
    assert manifest.complete and all(info.complete for info in manifest.groups.values())


def test_merge_moments_matches_numpy_on_random_splits():
    rng = np.random.default_rng(0)
    data = 1e6 + rng.normal(size=(1000, 5))  # a large offset: naive formulas would lose most digits
    splits = np.sort(rng.choice(np.arange(1, 1000), size=12, replace=False))
    parts = np.split(data, np.concatenate([splits, [splits[-1]]]))  # includes one empty part
    assert any(len(part) == 0 for part in parts)
    counts = [len(part) for part in parts]
    means = [part.mean(axis=0) if len(part) else np.zeros(5) for part in parts]
    m2s = [((part - mean) ** 2).sum(axis=0) for part, mean in zip(parts, means)]

    count, mean, variance = merge_moments(counts, means, m2s)
    assert count == 1000
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(variance, data.var(axis=0), rtol=1e-9)


def test_resumed_store_equals_uninterrupted_one_and_rerun_does_nothing(tmp_path):
    reference, resumed = tmp_path / "reference.zarr", tmp_path / "resumed.zarr"
    reference_manifest = build_store(reference)

    compression = StoreCompression(chunk_segments=4)
    store = FeatureStore.create_or_open(resumed, make_manifest(), compression)
    write_groups(store, only_chunks={"quakes": [0, 2]})
    # a crash inside write_chunk: chunk 1's features written (garbage), its statistics and flag not
    zarr.open_array(resumed / "quakes" / "features", mode="r+")[4:8] = np.full((4, 9, FEATURE_DIM), 7.0)
    del store  # dropped without finalize or close, like a killed run
    assert "INCOMPLETE" in describe_store(resumed) and "partial: 2 of 9 chunks written" in describe_store(resumed)

    with FeatureStore.create_or_open(resumed, make_manifest(), compression) as store:
        assert store.pending_chunks("quakes") == [1, 3, 4, 5]
        assert store.pending_chunks("voices") == [0, 1, 2]
        write_groups(store)
        resumed_manifest = store.finalize()

    assert store_files(resumed) == store_files(reference)  # every chunk and statistic, byte for byte
    assert resumed_manifest.feature_mean == reference_manifest.feature_mean
    assert resumed_manifest.feature_std == reference_manifest.feature_std

    before = {file: file.stat().st_mtime_ns for file in resumed.rglob("*")}
    with FeatureStore.create_or_open(resumed, make_manifest(), compression) as store:
        assert all(store.pending_chunks(name) == [] for name in store.group_names())
        write_groups(store)  # what the extraction loop does on a rerun: nothing is pending
        assert store.finalize() == resumed_manifest
    assert {file: file.stat().st_mtime_ns for file in resumed.rglob("*")} == before


def test_other_configuration_is_refused_until_overwrite(tmp_path):
    path = tmp_path / "toy.zarr"
    build_store(path)
    other_config = make_manifest(config={"layer": 3, "normalize": False})
    assert other_config.config_hash == config_hash({"normalize": False, "layer": 3})

    refused = r"(?s)config\['normalize'\]: store has True, requested False.*--overwrite"
    with pytest.raises(StoreMismatchError, match=refused):
        FeatureStore.create_or_open(path, other_config, StoreCompression(chunk_segments=4))
    with pytest.raises(StoreMismatchError, match=r"compression: store has 'float16.*requested 'float32"):
        FeatureStore.create_or_open(path, make_manifest(), StoreCompression(dtype="float32", chunk_segments=4))
    with pytest.raises(StoreMismatchError, match=r"feature_dim: store has 12, requested 8"):
        FeatureStore.create_or_open(path, make_manifest(feature_dim=8), StoreCompression(chunk_segments=4))

    with FeatureStore.create_or_open(path, other_config, StoreCompression(), overwrite=True) as store:
        assert store.group_names() == [] and store.manifest.config["normalize"] is False
        assert sorted(p.name for p in path.iterdir()) == ["zarr.json"]


def test_group_with_other_segments_is_refused(tmp_path):
    path = tmp_path / "toy.zarr"
    build_store(path)
    segment_ids, n_tokens, _ = DATA_SETS["voices"]
    with FeatureStore.create_or_open(path, make_manifest(), StoreCompression(chunk_segments=4)) as store:
        other_n_tokens = n_tokens.copy()
        other_n_tokens[3] = 0 if n_tokens[3] else 1
        with pytest.raises(StoreMismatchError, match=r"segment 'seg2-0003' has \d tokens in the store, requested"):
            store.ensure_group("voices", segment_ids, other_n_tokens, TOKEN_RATE, SAMPLING_RATE)
        with pytest.raises(StoreMismatchError, match="holds 10 segments, requested 9"):
            store.ensure_group("voices", segment_ids[:9], n_tokens[:9], TOKEN_RATE, SAMPLING_RATE)
        with pytest.raises(StoreMismatchError, match="token_rate"):
            store.ensure_group("voices", segment_ids, n_tokens, 50.0, SAMPLING_RATE)


def try_to_open_for_writing(path, results) -> None:
    """Run in a second process: what a concurrent extraction on the same store gets."""
    try:
        FeatureStore.create_or_open(path, make_manifest(), StoreCompression()).close()
        results.put("opened")
    except StoreLockedError as error:
        results.put(f"locked: {error}")


def test_a_second_writer_is_locked_out(tmp_path):
    path = tmp_path / "toy.zarr"
    context = multiprocessing.get_context("fork")  # a spawned child would spend ~10 s re-importing torch
    results = context.Queue()
    with FeatureStore.create_or_open(path, make_manifest(), StoreCompression()):
        second_writer = context.Process(target=try_to_open_for_writing, args=(path, results))
        second_writer.start()
        second_writer.join(timeout=60)
        assert results.get(timeout=5).startswith(f"locked: feature store {path} is being written by another")
        with pytest.raises(StoreLockedError):  # flock is per open file: the same process is refused too
            FeatureStore.create_or_open(path, make_manifest(), StoreCompression())
    second_writer = context.Process(target=try_to_open_for_writing, args=(path, results))
    second_writer.start()
    second_writer.join(timeout=60)
    assert results.get(timeout=5) == "opened"  # close() released the lock


def test_a_bad_batch_leaves_its_chunk_pending(tmp_path):
    segment_ids, n_tokens, features = DATA_SETS["quakes"]
    compression = StoreCompression(chunk_segments=4)
    with FeatureStore.create_or_open(tmp_path / "toy.zarr", make_manifest(), compression) as store:
        store.ensure_group("quakes", segment_ids, n_tokens, TOKEN_RATE, SAMPLING_RATE)
        broken = features[0:4].copy()
        broken[0, 2, 5] = np.nan  # inside segment 0's valid tokens
        with pytest.raises(ValueError, match="segment 'seg1-0000' has non-finite features"):
            store.write_chunk("quakes", 0, broken)
        with pytest.raises(ValueError, match=r"beyond float16's range"):
            store.write_chunk("quakes", 0, features[0:4] * 1000)
        with pytest.raises(ValueError, match=r"features have shape \(3, 9, 12\), expected \(4, 9..9, 12\)"):
            store.write_chunk("quakes", 0, features[0:3])

        with features_write_fails(store, "quakes"), pytest.raises(OSError):  # the features write itself fails
            store.write_chunk("quakes", 0, features[0:4])
        assert store.pending_chunks("quakes")[0] == 0
        assert store.chunk_statistics("quakes")[1][0] == 0  # no statistics recorded either
        with pytest.raises(RuntimeError, match="group 'quakes' has 6 of 6 chunks unwritten"):
            store.finalize()
        assert not (tmp_path / "toy.zarr" / "quakes" / "features" / "c").exists()


def test_read_chunk_for_the_loader_and_read_only_open(tmp_path):
    path = tmp_path / "toy.zarr"
    build_store(path, StoreCompression(dtype="float32", chunk_segments=4))
    store = FeatureStore.open(path)
    segment_ids, n_tokens, features = DATA_SETS["quakes"]
    chunk_features, chunk_n_tokens, chunk_ids = store.read_chunk("quakes", 5)  # the last, partial chunk
    assert chunk_features.dtype == np.float32 and chunk_features.shape == (3, 9, FEATURE_DIM)
    assert chunk_ids.tolist() == segment_ids[20:23]
    np.testing.assert_array_equal(chunk_n_tokens, n_tokens[20:23])
    for row, n in enumerate(chunk_n_tokens):
        np.testing.assert_array_equal(chunk_features[row, :n], features[20 + row, :n])  # float32: exact
        assert np.isnan(chunk_features[row, n:]).all()
    with pytest.raises(RuntimeError, match="read-only"):
        store.write_chunk("quakes", 0, features[0:4])


def test_read_chunk_as_stored_keeps_the_stores_dtype_and_values(tmp_path):
    """The distillation loader holds chunks as stored (float16 by default, half of float32) and casts per batch:
    the same numbers as read_chunk's float32, bit for bit."""
    path = tmp_path / "toy.zarr"
    build_store(path, StoreCompression(dtype="float16", chunk_segments=4))
    store = FeatureStore.open(path)
    stored, counts, ids = store.read_chunk("quakes", 1, as_stored=True)
    as_float32, counts32, ids32 = store.read_chunk("quakes", 1)
    assert stored.dtype == np.float16 and as_float32.dtype == np.float32
    np.testing.assert_array_equal(stored.astype(np.float32), as_float32)  # NaN padding included
    assert counts.tolist() == counts32.tolist() and ids.tolist() == ids32.tolist()


def test_lossy_filters_stay_within_their_bounds_and_shrink_the_store(tmp_path):
    data_sets = {"quakes": make_data_set(3, 64, 64, offset=0.0)}  # values cross zero: tiny ones too
    _, n_tokens, features = data_sets["quakes"]
    valid = np.arange(64)[None, :] < n_tokens[:, None]  # (segment, token)

    def stored(name, compression):
        build_store(tmp_path / name, compression, data_sets)
        return FeatureStore.open(tmp_path / name).read_chunk("quakes", 0)[0][valid]  # (tokens, F) float32

    lossless16 = stored("f16.zarr", StoreCompression(chunk_segments=64))
    keepbits = 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our own calls must not leak zarr's extension warnings
        bitround = stored("bitround.zarr", StoreCompression(chunk_segments=64, lossy={"bitround": keepbits}))
    smallest_normal = np.finfo(np.float16).smallest_normal
    relative_error = np.abs(bitround - lossless16) / np.maximum(np.abs(lossless16), smallest_normal)
    assert 0 < relative_error.max() <= 2.0 ** -(keepbits + 1)
    assert features_bytes(tmp_path / "bitround.zarr", "quakes") < 0.8 * features_bytes(tmp_path / "f16.zarr", "quakes")

    digits = 2
    lossless32 = stored("f32.zarr", StoreCompression(dtype="float32", chunk_segments=64))
    quantize = StoreCompression(dtype="float32", chunk_segments=64, lossy={"quantize": digits})
    quantized = stored("quantize.zarr", quantize)
    absolute_error = np.abs(quantized - lossless32)
    assert 0 < absolute_error.max() <= 0.5 * 10.0**-digits + np.abs(lossless32).max() * 2.0**-24
    assert features_bytes(tmp_path / "quantize.zarr", "quakes") < 0.8 * features_bytes(tmp_path / "f32.zarr", "quakes")
    np.testing.assert_array_equal(lossless32, features[valid])  # the float32 option is exact


def test_compression_options_are_validated():
    with pytest.raises(ValueError, match="quantize needs dtype float32"):
        StoreCompression(lossy={"quantize": 2})
    with pytest.raises(ValueError, match="more mantissa bits than float16 has"):
        StoreCompression(lossy={"bitround": 11})
    assert StoreCompression(dtype="float32", lossy={"bitround": 11}).lossy.bitround == 11
    with pytest.raises(ValueError, match="does not match config"):
        make_manifest(config_hash="0123456789abcdef")


def test_open_refuses_a_store_with_object_dtype(tmp_path):
    path = tmp_path / "toy.zarr"
    build_store(path)
    group = zarr.open_group(path / "voices", mode="r+", use_consolidated=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group.create_array("labels", shape=(10,), dtype=str)[:] = np.array(["x"] * 10, dtype=object)
    with pytest.raises(ValueError, match=r"(?s)refusing to read feature store .*voices/labels: data type 'string'"):
        FeatureStore.open(path)


def test_describe_and_plot(tmp_path):
    path = tmp_path / "toy.zarr"
    build_store(path, StoreCompression(codec="lz4", chunk_segments=4))
    text = describe_store(path)
    expected_parts = (
        "(complete)", "Group quakes", "segment 23, token 9, feature 12", "cname=lz4", "shuffle=bitshuffle",
        "ratio", "bytes per valid token", "config_hash", "teacher: toy",
    )  # fmt: skip
    for expected in expected_parts:
        assert expected in text, expected
    plot_store(path, tmp_path / "toy.png")
    assert (tmp_path / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
