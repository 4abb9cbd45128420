"""The FeatureStore class: create, resume or open a store, lay out its groups, write chunks, finalize, read."""

import asyncio
import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import zarr
from zarr.core.group import ConsolidatedMetadata, GroupMetadata
from zarr.core.sync import sync

from data_catalog.storage import StoreLocation
from data_catalog.zarr_warnings import quiet_zarr_extension_warnings
from pipeline.feature_store.chunks import checked_chunk, merge_moments
from pipeline.feature_store.layout import GroupRequest, check_group_request, create_group_layouts, group_attributes
from pipeline.feature_store.manifest import (
    StoreMismatchError,
    clear_store,
    lock_store,
    mismatches,
    package_version,
    read_manifest_json,
    remove_partial_files,
    untrusted_metadata,
    validated_manifest,
)
from schemas.manifest import FeatureStoreManifest, GroupInfo, StoreCompression

logger = logging.getLogger(__name__)


def not_done(chunk_done: np.ndarray) -> list[int]:
    """The chunks a group's (chunk,) done flags leave pending, in order."""
    return np.flatnonzero(~chunk_done).tolist()


class FeatureStore:
    """One teacher's feature store. Write with `create_or_open` (locks), read with `open` (no lock).

    Typical extraction:

        with FeatureStore.create_or_open(path, manifest, compression, overwrite=False) as store:
            for data set:
                store.ensure_group(name, segment_ids, n_tokens, token_rate, sampling_rate)
                for chunk in store.pending_chunks(name):
                    segments = store.chunk_slice(name, chunk)
                    store.write_chunk(name, chunk, teacher_features_of(segments))  # (k, tokens, F) float32
            store.finalize()
    """

    ARRAY_NAMES = ("features", "n_tokens", "segment_id", "token_start", "token_end",
                   "stat_count", "stat_mean", "stat_m2", "chunk_done")  # fmt: skip

    def __init__(self, location: StoreLocation, root: zarr.Group, manifest: FeatureStoreManifest,
                 writable: bool = False, lock_fd: int | None = None, chunk_writer: bool = False):
        """Use create_or_open, open or open_chunk_writer."""
        self.path = location.shown  # a Path for a local path, else the URL as given: for messages
        self.manifest = manifest
        self._location = location
        self._root = root
        self._writable = writable  # opened by create_or_open and not closed yet
        self._lock_fd = lock_fd  # a local store's directory, open and flock'd while writing; None otherwise
        self._chunk_writer = chunk_writer  # a cluster worker: may write chunks the driver handed it, nothing else
        self._arrays: dict[str, dict[str, zarr.Array]] = {}  # group -> array name -> array
        self._group_metadata: dict[str, GroupMetadata] = {}  # group -> its metadata (attrs), for checks and finalize
        self._flags: dict[str, np.ndarray] = {}  # group -> chunk_done as this writer knows it (it holds the lock)
        self._segment_ids: dict[str, np.ndarray] = {}  # group -> (segment,) <U..
        self._n_tokens: dict[str, np.ndarray] = {}  # group -> (segment,) int32

    # ---------------------------------------------------------------- opening

    @classmethod
    def create_or_open(
        cls,
        path: str | Path,
        manifest: FeatureStoreManifest,
        compression: StoreCompression,
        overwrite: bool = False,
    ) -> "FeatureStore":
        """Open a store for writing: create it, resume it when its configuration matches, else refuse.

        path: a local path or an fsspec URL. The store records `manifest` with `compression` filled in.
        A store whose identity fields differ (config hash, model, layer, compression, schema version, ...)
        raises StoreMismatchError naming them, unless overwrite=True, which deletes it first. On a local
        filesystem it holds an exclusive lock until close() and a second writer gets StoreLockedError;
        elsewhere there is no lock (see the module docstring).
        """
        location = StoreLocation.of(path)
        lock_fd = lock_store(location)
        try:
            requested = manifest.model_copy(update={"compression": compression})
            if overwrite:
                logger.warning("overwriting feature store %s", location.shown)
                clear_store(location)
            if location.fs.isfile(location.join("zarr.json")):
                return cls._resume(location, requested, lock_fd)
            return cls._create(location, requested, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    @classmethod
    def _resume(cls, location: StoreLocation, requested: FeatureStoreManifest, lock_fd: int | None) -> "FeatureStore":
        path = location.shown
        refusal = "Pass --overwrite to replace it (its features are deleted)."
        try:
            stored = validated_manifest(path, read_manifest_json(location))
        except ValueError as error:
            raise StoreMismatchError(f"{error}. {refusal}") from None
        differences = mismatches(stored, requested)
        if differences:
            raise StoreMismatchError(
                f"feature store {path} was written with another configuration:\n  "
                + "\n  ".join(differences)
                + f"\n{refusal}"
            )
        remove_partial_files(location)
        with quiet_zarr_extension_warnings():  # never the consolidated metadata: it may be stale
            root = zarr.open_group(store=location.zarr_store(inline_io=True), mode="r+", zarr_format=3,
                                   use_consolidated=False)
        store = cls(location, root, stored, writable=True, lock_fd=lock_fd)
        store._load_groups(list(stored.groups))
        done = "complete" if stored.complete else "resuming"
        logger.info("feature store %s exists with the same configuration: %s", path, done)
        return store

    @classmethod
    def _create(cls, location: StoreLocation, requested: FeatureStoreManifest, lock_fd: int | None) -> "FeatureStore":
        leftovers = [child.rstrip("/").rpartition("/")[2] for child in location.children()]
        if leftovers:
            raise StoreMismatchError(
                f"{location.shown} exists but is not a feature store (no zarr.json; holds {sorted(leftovers)[:5]}). "
                "Pass --overwrite to replace it."
            )
        manifest = requested.model_copy(
            update={
                "package_version": package_version(),  # no creation time: a rerun must write the same bytes
                "groups": {},
                "feature_mean": None,
                "feature_std": None,
                "complete": False,
            }
        )
        with quiet_zarr_extension_warnings():
            root = zarr.create_group(
                store=location.zarr_store(inline_io=True), zarr_format=3,
                attributes={"manifest": manifest.model_dump(mode="json")},
            )
        logger.info("created feature store %s (%s)", location.shown, manifest.compression.describe())
        return cls(location, root, manifest, writable=True, lock_fd=lock_fd)

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        """Open a store (local path or fsspec URL) read-only, without a lock, after checking that it is one we
        can trust to decode."""
        location = StoreLocation.of(path)
        if not location.fs.isfile(location.join("zarr.json")):
            raise FileNotFoundError(f"no feature store at {location.shown} (no zarr.json)")
        problems = untrusted_metadata(location)
        if problems:
            raise ValueError(f"refusing to read feature store {location.shown}:\n  " + "\n  ".join(problems))
        manifest = validated_manifest(location.shown, read_manifest_json(location))
        with quiet_zarr_extension_warnings():
            root = zarr.open_group(store=location.zarr_store(read_only=True), mode="r", zarr_format=3)
        store = cls(location, root, manifest)
        store._load_groups(list(manifest.groups))
        return store

    @classmethod
    def open_chunk_writer(cls, path: str | Path) -> "FeatureStore":
        """Open a store laid out by a driver that holds its lock, to write the chunks the driver hands out.

        What a Dask worker uses: it takes no lock (the driver holds it), may only call write_chunk, and
        chunks are disjoint regions with their own statistics and flag files, so workers never write the
        same file. The driver finalizes. path: a local path or fsspec URL that every worker can reach.
        """
        store = cls.open(path)
        if store.manifest.complete:
            raise RuntimeError(f"feature store {store.path} is complete: there are no chunks to write")
        with quiet_zarr_extension_warnings():
            store._root = zarr.open_group(
                store=store._location.zarr_store(inline_io=True), mode="r+", zarr_format=3, use_consolidated=False
            )
        store._chunk_writer = True
        store._load_groups(list(store.manifest.groups))
        return store

    def _load_groups(self, names: list[str]) -> None:
        """Cache groups' array handles and their small per-segment arrays, all in one zarr call."""

        async def load(name: str):
            group = await self._root._async_group.getitem(name)
            arrays = dict(zip(self.ARRAY_NAMES, await asyncio.gather(*map(group.getitem, self.ARRAY_NAMES))))
            ids, n_tokens = await asyncio.gather(arrays["segment_id"].getitem(slice(None)),
                                                 arrays["n_tokens"].getitem(slice(None)))
            return group.metadata, arrays, ids, n_tokens

        async def load_all():
            return await asyncio.gather(*map(load, names))

        if not names:
            return
        with quiet_zarr_extension_warnings():
            loaded = sync(load_all())
        for name, (metadata, arrays, ids, n_tokens) in zip(names, loaded):
            self._keep_group(name, metadata, arrays, ids, n_tokens)

    def _keep_group(self, name: str, metadata: GroupMetadata, arrays: dict, segment_ids: np.ndarray,
                    n_tokens: np.ndarray) -> None:
        self._group_metadata[name] = metadata
        self._arrays[name] = {array_name: zarr.Array(arrays[array_name]) for array_name in self.ARRAY_NAMES}
        self._segment_ids[name] = segment_ids
        self._n_tokens[name] = n_tokens

    def close(self) -> None:
        """Stop writing and release the write lock (if held). Safe to call twice."""
        self._writable = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __del__(self) -> None:
        self.close()  # a store dropped without close() (e.g. after a crash in the caller) must not stay locked

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---------------------------------------------------------------- layout

    def ensure_group(
        self, name: str, segment_ids: list[str], n_tokens: np.ndarray, token_rate: float,
        sampling_rate: float | None,
    ) -> None:
        """Create a data set's group (layout only, no features), or check that the existing one matches.

        segment_ids: (segment,) ids from the series store, in its order; n_tokens: (segment,) valid tokens of
        each. An existing group with other ids, token counts or rates raises StoreMismatchError. sampling_rate
        None: unknown; token_rate is then per sample and token times are in samples.
        """
        self.ensure_groups([(name, segment_ids, n_tokens, token_rate, sampling_rate)])

    def ensure_groups(self, requests: list[tuple]) -> None:
        """ensure_group for several groups, each (name, segment_ids, n_tokens, token_rate, sampling_rate).

        Every request is checked first; then the new groups are laid out in one batch (create_group_layouts),
        the existing ones loaded in one batch, and the manifest, which names a group only once its layout is
        whole, written once: a few zarr calls whatever the number of groups.
        """
        self._require_writable()
        checked = []
        for name, segment_ids, n_tokens, token_rate, sampling_rate in requests:
            segment_ids = np.asarray(segment_ids, dtype=str)  # (segment,) <U..
            n_tokens = np.asarray(n_tokens)
            self.check_group_request(name, segment_ids, n_tokens, token_rate, sampling_rate)
            checked.append(GroupRequest(name, segment_ids, n_tokens.astype(np.int32), token_rate, sampling_rate))
        if len({request.name for request in checked}) != len(checked):
            raise ValueError(f"feature store {self.path}: a group is requested twice in one ensure_groups")

        with quiet_zarr_extension_warnings():
            state = sync(self._layout_states([request.name for request in checked]))
            partial = [name for name, whole in state.items() if whole is False]
            for name in partial:  # chunk_done is created last: without it the layout was cut short, no features
                logger.warning("group %r of %s has an incomplete layout; recreating it", name, self.path)
            new = [request for request in checked if not state[request.name]]
            if new:
                store = self._root.store_path.store
                created = sync(self._recreate(store, partial, new))
                for request in new:
                    metadata = GroupMetadata(attributes=group_attributes(request), zarr_format=3)
                    self._keep_group(request.name, metadata, created[request.name], request.segment_ids,
                                     request.n_tokens)
                    self._flags[request.name] = np.zeros(created[request.name]["chunk_done"].shape, dtype=bool)
            self._load_groups([request.name for request in checked if state[request.name]])
        for request in checked:
            self._check_group_matches(request.name, request.segment_ids, request.n_tokens, request.token_rate,
                                      request.sampling_rate)

        added = {
            request.name: GroupInfo(
                n_segments=len(request.segment_ids), max_tokens=int(request.n_tokens.max()),
                token_rate=request.token_rate, sampling_rate=request.sampling_rate,
            )  # fmt: skip
            for request in checked if request.name not in self.manifest.groups
        }
        if added:
            self.manifest = self.manifest.model_copy(update={"groups": {**self.manifest.groups, **added}})
            self._mark_incomplete()  # also writes the manifest

    async def _layout_states(self, names: list[str]) -> dict[str, bool | None]:
        """Per group: True laid out whole, False cut short (anything there but no chunk_done), None absent."""
        store = self._root.store_path.store

        async def state(name: str) -> bool | None:
            if await store.exists(f"{name}/chunk_done/zarr.json"):
                return True
            async for _ in store.list_prefix(f"{name}/"):
                return False
            return None

        return dict(zip(names, await asyncio.gather(*map(state, names))))

    async def _recreate(self, store, partial: list[str], new: list[GroupRequest]) -> dict:
        """Delete the layouts cut short, then lay out the new groups; returns their arrays by group and name."""
        await asyncio.gather(*(store.delete_dir(name) for name in partial))
        return await create_group_layouts(store, self.manifest, new)

    def check_group_request(self, name: str, segment_ids, n_tokens, token_rate: float,
                            sampling_rate: float | None) -> None:
        """What ensure_group refuses first (bad name, ids, token counts or rates), for a caller that lays out later."""
        check_group_request(f"group {name!r} of feature store {self.path}", name, np.asarray(segment_ids, dtype=str),
                            np.asarray(n_tokens), token_rate, sampling_rate)

    def _check_group_matches(self, name, segment_ids, n_tokens, token_rate, sampling_rate) -> None:
        where = f"group {name!r} of feature store {self.path}"
        advice = "The data set changed since extraction: pass --overwrite to extract it again."
        stored_ids, stored_n_tokens = self._segment_ids[name], self._n_tokens[name]
        if len(stored_ids) != len(segment_ids):
            raise StoreMismatchError(
                f"{where} holds {len(stored_ids)} segments, requested {len(segment_ids)}. {advice}"
            )
        differing = np.flatnonzero(stored_ids != segment_ids)
        if len(differing):
            index = differing[0]
            raise StoreMismatchError(
                f"{where}: segment {index} has id {str(stored_ids[index])!r} in the store, requested "
                f"{str(segment_ids[index])!r} ({len(differing)} ids differ). {advice}"
            )
        differing = np.flatnonzero(stored_n_tokens != n_tokens)
        if len(differing):
            index = differing[0]
            raise StoreMismatchError(
                f"{where}: segment {str(stored_ids[index])!r} has {stored_n_tokens[index]} tokens in the store, "
                f"requested {n_tokens[index]} ({len(differing)} segments differ). {advice}"
            )
        attrs = self._group_metadata[name].attributes
        for key, value in (("token_rate", token_rate), ("sampling_rate", sampling_rate)):
            if attrs[key] != (None if value is None else float(value)):
                raise StoreMismatchError(f"{where}: {key} is {attrs[key]} in the store, requested {value}. {advice}")

    def group_names(self) -> list[str]:
        """Data sets in the store, in the order they were added."""
        return list(self.manifest.groups)

    def n_chunks(self, name: str) -> int:
        return self._group_arrays(name)["chunk_done"].shape[0]

    def chunk_slice(self, name: str, chunk: int) -> slice:
        """Segment index range of a chunk (the last chunk may be shorter)."""
        n_chunks = self.n_chunks(name)
        if not 0 <= chunk < n_chunks:
            raise IndexError(f"chunk {chunk} out of range: group {name!r} of {self.path} has {n_chunks} chunks")
        chunk_segments = self.manifest.compression.chunk_segments
        return slice(chunk * chunk_segments, min((chunk + 1) * chunk_segments, len(self._segment_ids[name])))

    def segments(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A group's (segment_ids (segment,) <U.., n_tokens (segment,) int32), in the series store's order."""
        self._group_arrays(name)  # a clear error for an unknown group
        return self._segment_ids[name].copy(), self._n_tokens[name].copy()

    def pending_chunks(self, name: str) -> list[int]:
        """Chunks whose features are not yet (completely) written, in order."""
        return self.pending_chunks_of([name])[name]

    def pending_chunks_of(self, names: list[str]) -> dict[str, list[int]]:
        """pending_chunks of several groups, read in one zarr call."""
        for name in names:
            self._group_arrays(name)  # a clear error for an unknown group
        records = self._read_records(names, ("chunk_done",))
        return {name: not_done(records[name]["chunk_done"]) for name in names}

    def _group_arrays(self, name: str) -> dict[str, zarr.Array]:
        if name not in self._arrays:
            raise KeyError(f"feature store {self.path} has no group {name!r} (groups: {self.group_names()})")
        return self._arrays[name]

    # ---------------------------------------------------------------- writing

    def write_chunk(self, name: str, chunk: int, features: np.ndarray) -> None:
        """Write one chunk's features, then its statistics, then its completion flag.

        features: (k, tokens, feature_dim) float32 for the chunk's k segments, tokens between the chunk's
        largest n_tokens and the group's max_tokens; whatever lies beyond a segment's n_tokens is replaced by
        NaN. Everything is checked before anything is written, so a bad batch leaves the chunk pending.
        """
        self._require_writable(chunk_writes=True)
        arrays = self._group_arrays(name)
        segments = self.chunk_slice(name, chunk)
        chunk_ids, chunk_n_tokens = self._segment_ids[name][segments], self._n_tokens[name][segments]
        _, max_tokens, feature_dim = arrays["features"].shape
        where = f"chunk {chunk} of group {name!r} in feature store {self.path}"

        padded, (count, mean, m2) = checked_chunk(features, chunk_ids, chunk_n_tokens, max_tokens, feature_dim,
                                                  self.manifest.dtype, where)

        if self.manifest.complete:
            self._mark_incomplete()  # never in a chunk writer: it refuses complete stores
        done = arrays["chunk_done"]._async_array
        # a chunk of a group this writer laid out and has not written is known not done: no flag to read
        known = None if self._chunk_writer else self._flags.get(name)

        async def clear_flag() -> None:
            if await done.getitem(chunk):
                await done.setitem(chunk, False)  # rewriting: never leave a half-rewritten chunk marked done

        async def statistics_then_flag() -> None:  # in this order, in one zarr call (each call is a thread handoff)
            await arrays["stat_count"]._async_array.setitem(chunk, count)
            await arrays["stat_mean"]._async_array.setitem(chunk, mean)
            await arrays["stat_m2"]._async_array.setitem(chunk, m2)
            await done.setitem(chunk, True)

        with quiet_zarr_extension_warnings():
            if known is None or known[chunk]:
                sync(clear_flag())
            arrays["features"][segments] = padded.astype(self.manifest.dtype)
            sync(statistics_then_flag())
        if known is not None:
            known[chunk] = True

    def finalize(self) -> FeatureStoreManifest:
        """Merge the chunk statistics into the manifest, mark the store complete and consolidate metadata.

        Raises if a chunk is still pending. On a store that is already complete it changes nothing.
        """
        self._require_writable()
        if not self.manifest.groups:
            raise RuntimeError(f"cannot finalize feature store {self.path}: it has no groups")
        names = sorted(self.manifest.groups)  # a fixed merge order: resumed and uninterrupted runs agree exactly
        records = self._read_records(names, ("chunk_done", "stat_count", "stat_mean", "stat_m2"))
        for name in self.manifest.groups:
            pending = not_done(records[name]["chunk_done"])
            if pending:
                raise RuntimeError(
                    f"cannot finalize feature store {self.path}: group {name!r} has {len(pending)} of "
                    f"{self.n_chunks(name)} chunks unwritten (first: {pending[0]})"
                )
        if self.manifest.complete:
            root_metadata = json.loads(self._location.fs.cat_file(self._location.join("zarr.json")))
            if root_metadata.get("consolidated_metadata") is None:  # killed between the manifest and consolidating
                self._consolidate()
            return self.manifest

        count, mean, variance = merge_moments(
            *(np.concatenate([records[name][array_name] for name in names])
              for array_name in ("stat_count", "stat_mean", "stat_m2"))
        )
        groups = {name: info.model_copy(update={"complete": True}) for name, info in self.manifest.groups.items()}
        self.manifest = self.manifest.model_copy(
            update={
                "groups": groups,
                "feature_mean": mean.tolist(),
                "feature_std": np.sqrt(variance).tolist(),
                "complete": True,
            }
        )
        self._write_manifest()
        self._consolidate()
        logger.info("finalized feature store %s: %d groups, %d tokens", self.path, len(groups), count)
        return self.manifest

    def _read_records(self, names: list[str], array_names: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        """{group: {array name: whole array}} of small per-chunk arrays, read in one zarr call."""

        async def read_all():
            return await asyncio.gather(*(self._arrays[name][array_name]._async_array.getitem(slice(None))
                                          for name in names for array_name in array_names))

        values = iter(sync(read_all()))
        return {name: {array_name: next(values) for array_name in array_names} for name in names}

    def _consolidate(self) -> None:
        """Write the root's consolidated metadata from the handles this store holds, without walking the store.

        The same zarr.json as zarr.consolidate_metadata (tests/test_feature_store.py compares them): the groups'
        and arrays' metadata never change after their layout, and the root's attrs are the manifest just written.
        """
        members = {}
        for name in self.manifest.groups:  # consolidate_metadata marks groups without children of their own so
            members[name] = dataclasses.replace(self._group_metadata[name],
                                                consolidated_metadata=ConsolidatedMetadata(metadata={}))
            for array_name, array in self._arrays[name].items():
                members[f"{name}/{array_name}"] = array.metadata
        ConsolidatedMetadata._flat_to_nested(members)
        root = self._root._async_group
        metadata = dataclasses.replace(root.metadata, consolidated_metadata=ConsolidatedMetadata(metadata=members))
        with quiet_zarr_extension_warnings():
            sync(dataclasses.replace(root, metadata=metadata)._save_metadata())

    def _mark_incomplete(self) -> None:
        """The store is changing: drop the finished statistics (writing root attrs also drops the
        consolidated metadata, so readers cannot see a stale snapshot)."""
        groups = {name: info.model_copy(update={"complete": False}) for name, info in self.manifest.groups.items()}
        self.manifest = self.manifest.model_copy(
            update={"groups": groups, "feature_mean": None, "feature_std": None, "complete": False}
        )
        self._write_manifest()

    def _write_manifest(self) -> None:
        self._root.update_attributes({"manifest": self.manifest.model_dump(mode="json")})

    def _require_writable(self, chunk_writes: bool = False) -> None:
        if not self._writable and not (chunk_writes and self._chunk_writer):
            raise RuntimeError(f"feature store {self.path} is open read-only (or closed); use create_or_open")

    # ---------------------------------------------------------------- reading

    def read_chunk(self, name: str, chunk: int, as_stored: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One chunk as (features (k, max_tokens, F) float32 NaN-padded, n_tokens (k,), segment_ids (k,));
        as_stored: features in the store's own dtype (float16 by default), half the memory of float32."""
        arrays = self._group_arrays(name)
        segments = self.chunk_slice(name, chunk)
        if not arrays["chunk_done"][chunk]:
            raise RuntimeError(f"chunk {chunk} of group {name!r} in feature store {self.path} is not written yet")
        features = arrays["features"][segments]
        if not as_stored:
            features = features.astype(np.float32)
        return features, self._n_tokens[name][segments].copy(), self._segment_ids[name][segments].copy()

    def chunk_statistics(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(done (chunk,), count (chunk,), mean (chunk, F), m2 (chunk, F)) of a group's chunks."""
        arrays = self._group_arrays(name)
        return arrays["chunk_done"][:], arrays["stat_count"][:], arrays["stat_mean"][:], arrays["stat_m2"][:]
