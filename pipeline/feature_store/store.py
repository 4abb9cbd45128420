"""The FeatureStore class: create, resume or open a store, lay out its groups, write chunks, finalize, read."""

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

from data_catalog.storage import StoreLocation
from data_catalog.zarr_warnings import quiet_zarr_extension_warnings
from pipeline.feature_store.chunks import checked_chunk, merge_moments
from pipeline.feature_store.layout import check_group_request, create_group_layout
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
            root = zarr.open_group(store=location.zarr_store(), mode="r+", zarr_format=3, use_consolidated=False)
        store = cls(location, root, stored, writable=True, lock_fd=lock_fd)
        for name in stored.groups:
            store._load_group(name)
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
                "package_version": package_version(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "groups": {},
                "feature_mean": None,
                "feature_std": None,
                "complete": False,
            }
        )
        with quiet_zarr_extension_warnings():
            root = zarr.create_group(
                store=location.zarr_store(), zarr_format=3, attributes={"manifest": manifest.model_dump(mode="json")}
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
        for name in manifest.groups:
            store._load_group(name)
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
                store=store._location.zarr_store(), mode="r+", zarr_format=3, use_consolidated=False
            )
        store._chunk_writer = True
        for name in store.manifest.groups:
            store._load_group(name)
        return store

    def _load_group(self, name: str) -> None:
        """Cache a group's array handles and its small per-segment arrays."""
        with quiet_zarr_extension_warnings():
            group = self._root[name]
            self._arrays[name] = {array_name: group[array_name] for array_name in self.ARRAY_NAMES}
        self._segment_ids[name] = self._arrays[name]["segment_id"][:]
        self._n_tokens[name] = self._arrays[name]["n_tokens"][:]

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
        self._require_writable()
        segment_ids = np.asarray(segment_ids, dtype=str)  # (segment,) <U..
        n_tokens = np.asarray(n_tokens)
        self.check_group_request(name, segment_ids, n_tokens, token_rate, sampling_rate)
        n_tokens = n_tokens.astype(np.int32)

        with quiet_zarr_extension_warnings():
            if name in self._root and "chunk_done" not in self._root[name]:
                # chunk_done is created last: without it the layout was cut short and holds no features
                logger.warning("group %r of %s has an incomplete layout; recreating it", name, self.path)
                del self._root[name]
            if name not in self._root:
                create_group_layout(self._root, self.manifest, name, segment_ids, n_tokens, token_rate, sampling_rate)
        self._load_group(name)
        self._check_group_matches(name, segment_ids, n_tokens, token_rate, sampling_rate)

        if name not in self.manifest.groups:
            info = GroupInfo(
                n_segments=len(segment_ids), max_tokens=int(n_tokens.max()),
                token_rate=token_rate, sampling_rate=sampling_rate,
            )  # fmt: skip
            self.manifest = self.manifest.model_copy(update={"groups": {**self.manifest.groups, name: info}})
            self._mark_incomplete()  # also writes the manifest

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
        attrs = self._root[name].attrs
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
        return np.flatnonzero(~self._group_arrays(name)["chunk_done"][:]).tolist()

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
        if arrays["chunk_done"][chunk]:
            arrays["chunk_done"][chunk] = False  # rewriting: never leave a half-rewritten chunk marked done
        arrays["features"][segments] = padded.astype(self.manifest.dtype)
        arrays["stat_count"][chunk] = count
        arrays["stat_mean"][chunk] = mean
        arrays["stat_m2"][chunk] = m2
        arrays["chunk_done"][chunk] = True

    def finalize(self) -> FeatureStoreManifest:
        """Merge the chunk statistics into the manifest, mark the store complete and consolidate metadata.

        Raises if a chunk is still pending. On a store that is already complete it changes nothing.
        """
        self._require_writable()
        if not self.manifest.groups:
            raise RuntimeError(f"cannot finalize feature store {self.path}: it has no groups")
        for name in self.manifest.groups:
            pending = self.pending_chunks(name)
            if pending:
                raise RuntimeError(
                    f"cannot finalize feature store {self.path}: group {name!r} has {len(pending)} of "
                    f"{self.n_chunks(name)} chunks unwritten (first: {pending[0]})"
                )
        if self.manifest.complete:
            root_metadata = json.loads(self._location.fs.cat_file(self._location.join("zarr.json")))
            if root_metadata.get("consolidated_metadata") is None:  # killed between the manifest and consolidating
                with quiet_zarr_extension_warnings():
                    zarr.consolidate_metadata(self._location.zarr_store(), zarr_format=3)
            return self.manifest

        names = sorted(self.manifest.groups)  # a fixed merge order: resumed and uninterrupted runs agree exactly
        count, mean, variance = merge_moments(
            np.concatenate([self._arrays[name]["stat_count"][:] for name in names]),
            np.concatenate([self._arrays[name]["stat_mean"][:] for name in names]),
            np.concatenate([self._arrays[name]["stat_m2"][:] for name in names]),
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
        with quiet_zarr_extension_warnings():
            zarr.consolidate_metadata(self._location.zarr_store(), zarr_format=3)
        logger.info("finalized feature store %s: %d groups, %d tokens", self.path, len(groups), count)
        return self.manifest

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

    def read_chunk(self, name: str, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One chunk as (features (k, max_tokens, F) float32 NaN-padded, n_tokens (k,), segment_ids (k,))."""
        arrays = self._group_arrays(name)
        segments = self.chunk_slice(name, chunk)
        if not arrays["chunk_done"][chunk]:
            raise RuntimeError(f"chunk {chunk} of group {name!r} in feature store {self.path} is not written yet")
        features = arrays["features"][segments].astype(np.float32)
        return features, self._n_tokens[name][segments].copy(), self._segment_ids[name][segments].copy()

    def chunk_statistics(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(done (chunk,), count (chunk,), mean (chunk, F), m2 (chunk, F)) of a group's chunks."""
        arrays = self._group_arrays(name)
        return arrays["chunk_done"][:], arrays["stat_count"][:], arrays["stat_mean"][:], arrays["stat_m2"][:]
