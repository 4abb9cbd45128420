"""Extraction's batched I/O equals zarr's plain calls: layouts, consolidated metadata, inline local I/O, readers.

Extraction writes a store with as few zarr calls as it can (each call is a thread handoff that a cheap teacher's
forward pass makes expensive); these tests pin that the files are exactly what zarr's one-call-per-array API
writes, so the store format does not depend on how it was written.
"""

import asyncio
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer.core import default_buffer_prototype

from data_catalog.catalog import load_catalog, open_reader, open_readers
from data_catalog.series_store import prepare
from data_catalog.storage import InlineLocalStore, StoreLocation
from data_catalog.zarr_warnings import quiet_zarr_extension_warnings
from pipeline.feature_store import FeatureStore
from pipeline.feature_store.layout import GroupRequest, create_group_layouts, group_arrays, group_attributes
from schemas.manifest import StoreCompression
from tests.conftest import ROOT
from tests.test_feature_store import (
    DATA_SETS,
    SAMPLING_RATE,
    TOKEN_RATE,
    build_store,
    features_write_fails,
    make_manifest,
    write_groups,
)


def files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def requests(sampling_rate=SAMPLING_RATE) -> list[GroupRequest]:
    return [GroupRequest(name, np.asarray(ids, dtype=str), np.asarray(n_tokens, dtype=np.int32), TOKEN_RATE,
                         sampling_rate) for name, (ids, n_tokens, _) in DATA_SETS.items()]


def zarr_layout(path: Path, manifest, request: GroupRequest) -> None:
    """A group laid out with zarr's own synchronous API, one call per array (the reference)."""
    with quiet_zarr_extension_warnings():
        root = zarr.open_group(path, mode="a", zarr_format=3)
        group = root.create_group(request.name, attributes=group_attributes(request))
        for array_name, kwargs, data in group_arrays(manifest, request):
            array = group.create_array(array_name, **kwargs)
            if data is not None:
                array[:] = data


@pytest.mark.parametrize("compression", [StoreCompression(chunk_segments=4),
                                         StoreCompression(chunk_segments=8, lossy={"bitround": 7}),
                                         StoreCompression(dtype="float32", codec="none", chunk_segments=3)],
                         ids=["default", "bitround", "no-codec"])
@pytest.mark.parametrize("sampling_rate", [SAMPLING_RATE, None], ids=["rate", "rate-unknown"])
def test_batched_layout_equals_zarr_create_array_file_by_file(tmp_path, compression, sampling_rate):
    manifest = make_manifest(compression=compression)
    for request in requests(sampling_rate):
        zarr_layout(tmp_path / "reference.zarr", manifest, request)
    with quiet_zarr_extension_warnings():
        zarr.open_group(tmp_path / "batched.zarr", mode="a", zarr_format=3)
        arrays = asyncio.run(create_group_layouts(InlineLocalStore(tmp_path / "batched.zarr"), manifest,
                                                  requests(sampling_rate)))
    assert files(tmp_path / "batched.zarr") == files(tmp_path / "reference.zarr")
    assert sorted(arrays) == sorted(DATA_SETS) and sorted(arrays["quakes"]) == sorted(FeatureStore.ARRAY_NAMES)


def test_ensure_groups_in_one_batch_equals_one_group_at_a_time(tmp_path):
    compression = StoreCompression(chunk_segments=4)
    with FeatureStore.create_or_open(tmp_path / "one.zarr", make_manifest(), compression) as store:
        for name, (ids, n_tokens, _) in DATA_SETS.items():
            store.ensure_group(name, ids, n_tokens, TOKEN_RATE, SAMPLING_RATE)
        one_by_one = store.manifest
    with FeatureStore.create_or_open(tmp_path / "batch.zarr", make_manifest(), compression) as store:
        store.ensure_groups([(name, ids, n_tokens, TOKEN_RATE, SAMPLING_RATE)
                             for name, (ids, n_tokens, _) in DATA_SETS.items()])
        batched = store.manifest
        assert store.group_names() == list(DATA_SETS)
        assert store.pending_chunks_of(list(DATA_SETS)) == {name: store.pending_chunks(name) for name in DATA_SETS}
    assert batched.groups == one_by_one.groups
    one, batch = files(tmp_path / "one.zarr"), files(tmp_path / "batch.zarr")
    del one["zarr.json"], batch["zarr.json"]  # the manifest's creation time differs
    assert batch == one
    with FeatureStore.create_or_open(tmp_path / "batch.zarr", make_manifest(), compression) as store:
        name, (ids, n_tokens, _) = next(iter(DATA_SETS.items()))
        with pytest.raises(ValueError, match="requested twice"):
            store.ensure_groups([(name, ids, n_tokens, TOKEN_RATE, SAMPLING_RATE)] * 2)


def test_a_layout_cut_short_is_recreated_whole(tmp_path, caplog):
    """A kill inside the batched layout leaves groups without chunk_done (or with only some files): recreated."""
    compression = StoreCompression(chunk_segments=4)
    build_store(tmp_path / "reference.zarr", compression)
    path = tmp_path / "cut.zarr"
    with FeatureStore.create_or_open(path, make_manifest(), compression):
        pass
    with quiet_zarr_extension_warnings():
        asyncio.run(create_group_layouts(InlineLocalStore(path), make_manifest(compression=compression), requests()))
    (path / "quakes" / "chunk_done" / "zarr.json").unlink()  # as if killed before quakes' flags array
    shutil.rmtree(path / "voices" / "chunk_done")
    (path / "voices" / "zarr.json").unlink()  # the group's own metadata not written yet either
    with caplog.at_level(logging.WARNING), \
            FeatureStore.create_or_open(path, make_manifest(), compression) as store:
        write_groups(store)
        store.finalize()
    assert sum("incomplete layout; recreating it" in r.message for r in caplog.records) == 2
    reference, cut = files(tmp_path / "reference.zarr"), files(path)
    del reference["zarr.json"], cut["zarr.json"]
    assert cut == reference


def test_consolidated_metadata_equals_zarr_consolidate_metadata(tmp_path):
    for compression in (StoreCompression(chunk_segments=4), StoreCompression(dtype="float32", chunk_segments=8,
                                                                        lossy={"quantize": 3})):
        path = tmp_path / f"{compression.chunk_segments}.zarr"
        build_store(path, compression)
        ours = (path / "zarr.json").read_bytes()
        with quiet_zarr_extension_warnings():
            zarr.consolidate_metadata(str(path), zarr_format=3)
        assert ours == (path / "zarr.json").read_bytes()


def test_inline_local_store_round_trip_equals_the_default_store(tmp_path):
    data = np.arange(1000, dtype=np.float32).reshape(10, 100)
    paths = {}
    for inline in (False, True):
        location = StoreLocation.of(tmp_path / f"inline-{inline}.zarr")
        store = location.zarr_store(inline_io=inline)
        assert isinstance(store, InlineLocalStore) == inline
        with quiet_zarr_extension_warnings():
            array = zarr.create_array(store, name="x", shape=data.shape, chunks=(3, 40), dtype="float32")
            array[:] = data
            np.testing.assert_array_equal(zarr.open_array(location.zarr_store(read_only=True, inline_io=inline),
                                                          path="x", mode="r")[2:7, 10:90], data[2:7, 10:90])
        paths[inline] = location.path
    assert files(Path(paths[True])) == files(Path(paths[False]))

    store = InlineLocalStore(paths[True])
    prototype = default_buffer_prototype()

    async def operations():
        assert await store.exists("x/zarr.json") and not await store.exists("x/nothing")
        assert await store.get("x/nothing", prototype) is None
        whole = await store.get("x/c/0/0", prototype)
        parts = await store.get_partial_values(prototype, [("x/c/0/0", None), ("x/missing", None)])
        assert parts[0].to_bytes() == whole.to_bytes() and parts[1] is None
        await store.set_if_not_exists("x/zarr.json", whole)  # exists already: left alone
        await store.delete("x/c/0/0")
        assert not await store.exists("x/c/0/0")

    asyncio.run(operations())
    assert (Path(paths[True]) / "x/zarr.json").read_bytes() == (Path(paths[False]) / "x/zarr.json").read_bytes()
    with pytest.raises(ValueError, match="read-only|read only"):
        asyncio.run(InlineLocalStore(paths[True], read_only=True).set("x/y", whole_buffer(b"1")))
    assert StoreLocation.of(f"memory://{tmp_path.name}/m.zarr").zarr_store(inline_io=True).__class__.__name__ \
        == "FsspecStore"  # remote stores never inline


def whole_buffer(content: bytes):
    return default_buffer_prototype().buffer.from_bytes(content)


def test_readers_opened_in_one_batch_equal_readers_opened_one_by_one(tmp_path):
    """open_readers (one zarr call for every group, inline local I/O) reads what open_reader reads, and a missing
    or stale group is refused with the same message."""
    catalog = load_catalog(ROOT / "data_catalog" / "catalog.yaml")
    entries = [catalog.get(name).model_copy(deep=True) for name in ("leaves_like", "corpus_multichannel_3")]
    for entry in entries:
        entry.source.count = 6
    store = tmp_path / "series.zarr"
    prepare(store, entries, chunk_samples=4096)
    batched = open_readers(entries, catalog, store, inline_io=True)
    for entry, reader in zip(entries, batched):
        single = open_reader(entry, catalog, store)
        assert reader.ids == single.ids and reader.metadata == single.metadata
        np.testing.assert_array_equal(reader.lengths, single.lengths)
        for i in (0, len(single) - 1):
            np.testing.assert_array_equal(reader[i].values, single[i].values)
        block = reader.read_block(range(1, 4))
        np.testing.assert_array_equal(block[2].values, single[3].values)

    stale = entries[1].model_copy(deep=True)
    stale.source.seed += 1
    with pytest.raises(RuntimeError, match="prepared from a different catalog entry"):
        open_readers([entries[0], stale], catalog, store, inline_io=True)
    missing = entries[0].model_copy(update={"name": "never_prepared"})
    with pytest.raises(FileNotFoundError, match="no group 'never_prepared'; run `step-pipeline prepare` first"):
        open_readers([missing, entries[1]], catalog, store, inline_io=True)


def test_a_failed_rewrite_of_a_chunk_written_in_this_session_leaves_it_pending(tmp_path):
    """write_chunk skips reading the flag of a chunk it knows is not done, but a chunk it wrote is cleared first."""
    segment_ids, n_tokens, features = DATA_SETS["quakes"]
    compression = StoreCompression(chunk_segments=4)
    with FeatureStore.create_or_open(tmp_path / "toy.zarr", make_manifest(), compression) as store:
        store.ensure_groups([("quakes", segment_ids, n_tokens, TOKEN_RATE, SAMPLING_RATE)])
        store.write_chunk("quakes", 0, features[0:4])
        assert store.pending_chunks("quakes")[0] == 1
        with features_write_fails(store, "quakes"), pytest.raises(OSError):
            store.write_chunk("quakes", 0, features[0:4])
        assert store.pending_chunks("quakes")[0] == 0  # never left marked done over a half-rewritten chunk
        store.write_chunk("quakes", 0, features[0:4])
        assert store.pending_chunks("quakes")[0] == 1
