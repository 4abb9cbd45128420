"""One Zarr v3 store per teacher: its token features for every data set, written chunk by chunk, resumable.

Layout (one group per data set; every array has zarr v3 dimension names, so xarray sees named dims):

    data/features/<teacher>.zarr/             root attrs["manifest"]: schemas.manifest.FeatureStoreManifest
      <data set>/                             attrs: token_rate, sampling_rate
        features     (segment, token, feature)  float16|float32, NaN beyond n_tokens,
                                                chunks (chunk_segments, max_tokens, feature_dim)
        n_tokens     (segment,)        int32    valid tokens of each segment
        segment_id   (segment,)        <U..     the series store's segment ids, in its order
        token_start  (token,)          float64  seconds; token i covers [i, i + 1) / token_rate
        token_end    (token,)          float64
        chunk_done   (chunk,)          bool     completion record, one flag per segment chunk
        stat_count   (chunk,)          int64    valid tokens in the chunk
        stat_mean    (chunk, feature)  float64  their per-feature mean
        stat_m2      (chunk, feature)  float64  their per-feature sum of squared deviations from it

Why it looks like this:
- Writing, resuming and loading all go by whole segment chunks. A chunk's flag is written only after its
  features and its statistics, and zarr replaces each file atomically, so a killed run leaves at worst a
  chunk whose features are written but whose flag is not; it is written again on resume, with the same
  bytes. A finished store therefore equals an uninterrupted run's.
- The statistics the distillation loss standardises with are kept per chunk and merged at the end (Chan et
  al.), so they need no second pass over the features and survive a resume unchanged.
- A store lives at a local path or any fsspec URL (s3://bucket/features/x.zarr, memory://, file://); see
  data_catalog.storage. Every write replaces one whole file or object, atomically on local disks (zarr's
  LocalStore renames a temporary file) and on object stores (a PUT), which is what resuming relies on.
- Only one process may write a store. On a local filesystem it holds a non-blocking flock on the store
  directory itself (a lock file inside would make zarr and xarray warn about an unknown object; one beside
  it would litter data/features/). Object stores have no locks, and a lock object would outlive a killed
  run and block its resume, so there the single writer is the user's responsibility (one extraction per
  store, e.g. one DVC stage or one cluster job); create_or_open logs a warning saying so. Readers take no lock.
- Zarr extensions used knowingly: fixed-length UTF-32 segment ids, numcodecs BitRound/Quantize filters and
  consolidated metadata. zarr warns that each is outside the v3 spec; we silence those warnings around our
  own calls, and other zarr implementations may not read lossy stores.
"""

import fcntl
import json
import logging
import math
import os
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np
import zarr
from pydantic import ValidationError
from zarr.codecs import BloscCodec
from zarr.codecs.numcodecs import BitRound, Quantize

from data_catalog.storage import StoreLocation
from data_catalog.zarr_metadata import consolidated_nodes, refused_parts
from data_catalog.zarr_warnings import quiet_zarr_extension_warnings
from schemas.manifest import (
    SCHEMA_VERSION,
    BitRoundLossy,
    FeatureStoreManifest,
    GroupInfo,
    QuantizeLossy,
    StoreCompression,
    config_hash,
)

__all__ = [
    "FeatureStore",
    "store_location",
    "StoreLockedError",
    "StoreMismatchError",
    "config_hash",
    "describe_store",
    "merge_moments",
    "plot_store",
]

logger = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504

# What open() accepts from a store on disk. Anything else (object / variable-length dtypes, pickle-like or
# unknown codecs, zarr v2 metadata) is refused: stores may come from elsewhere and are not trusted.
TRUSTED_DATA_TYPES = {"bool", "int32", "int64", "float16", "float32", "float64", "fixed_length_utf32"}
TRUSTED_CODECS = {"bytes", "blosc", "zstd", "numcodecs.bitround", "numcodecs.quantize"}


class StoreMismatchError(RuntimeError):
    """The store on disk was written with another configuration (or other segments) than requested."""


class StoreLockedError(RuntimeError):
    """Another process is writing the store."""


def store_location(store_dir: str | Path, teacher: str) -> str:
    """Where a teacher's store lives: <store_dir>/<teacher>.zarr, for a local directory or an fsspec URL."""
    return f"{str(store_dir).rstrip('/')}/{teacher}.zarr"


def merge_moments(counts, means, m2s) -> tuple[int, np.ndarray, np.ndarray]:
    """Merge per-part (count, mean, sum of squared deviations) into the whole's (count, mean, variance).

    Chan, Golub & LeVeque's parallel update, in float64: exact up to rounding, and stable where the naive
    sum-of-squares formula cancels catastrophically. The variance is the population one (ddof=0).
    counts: (P,), means: (P, F), m2s: (P, F). Parts with count 0 are skipped; an empty whole gives NaN.
    """
    count, mean, m2 = _merge_m2(counts, means, m2s)
    variance = m2 / count if count > 0 else np.full_like(mean, np.nan)
    return count, mean, variance


def _merge_m2(counts, means, m2s) -> tuple[int, np.ndarray, np.ndarray]:
    """merge_moments, but returning the merged sum of squared deviations (what the store keeps per chunk)."""
    means = np.asarray(means, dtype=np.float64)
    m2s = np.asarray(m2s, dtype=np.float64)
    count, mean, m2 = 0, np.zeros(means.shape[1:]), np.zeros(means.shape[1:])
    for part_count, part_mean, part_m2 in zip(np.asarray(counts, dtype=np.int64), means, m2s, strict=True):
        if part_count == 0:
            continue
        total = count + int(part_count)
        delta = part_mean - mean
        mean = mean + delta * (part_count / total)
        m2 = m2 + part_m2 + delta**2 * (count * part_count / total)
        count = total
    if count == 0:
        mean = np.full(means.shape[1:], np.nan)
    return count, mean, m2


def _package_version() -> str:
    try:
        return package_metadata.version("step-pipeline")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def _feature_codecs(compression: StoreCompression) -> tuple[list, list]:
    """(filters, compressors) of the features array for these options."""
    filters = []
    if isinstance(compression.lossy, BitRoundLossy):
        filters = [BitRound(keepbits=compression.lossy.bitround)]
    elif isinstance(compression.lossy, QuantizeLossy):
        filters = [Quantize(digits=compression.lossy.quantize)]
    return filters, _compressors(compression)


def _compressors(compression: StoreCompression) -> list:
    if compression.codec == "none":
        return []
    return [BloscCodec(cname=compression.codec, clevel=compression.clevel, shuffle="bitshuffle")]


def _read_manifest_json(location: StoreLocation) -> dict:
    """The raw manifest dict from the root zarr.json, read without zarr (so nothing untrusted is decoded)."""
    root_metadata = json.loads(location.fs.cat_file(location.join("zarr.json")))
    manifest = root_metadata.get("attributes", {}).get("manifest")
    if not isinstance(manifest, dict):
        raise ValueError(
            f"{location.shown} is a zarr store without a feature-store manifest (attrs['manifest'])"
        )
    return manifest


def _validated_manifest(path: str | Path, raw: dict) -> FeatureStoreManifest:
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"feature store {path} has schema_version {raw.get('schema_version')!r}; this version of "
            f"step-pipeline reads {SCHEMA_VERSION}"
        )
    try:
        return FeatureStoreManifest.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"feature store {path} has an invalid manifest:\n{error}") from None


def _untrusted_metadata(location: StoreLocation) -> list[str]:
    """Every node of the store (its zarr.json files and its consolidated metadata) whose dtype or codecs
    are not on the whitelist, as readable problem strings. Read with fsspec, never through zarr."""
    keys = [location.relative(path) for path in location.fs.find(location.path)]  # every file, as a store key
    problems = [f"{key}: zarr v2 metadata" for key in keys if key.rpartition("/")[2].startswith(".z")]
    nodes: dict[str, dict] = {}
    for metadata_key in (key for key in keys if key.rpartition("/")[2] == "zarr.json"):
        document = json.loads(location.fs.cat_file(location.join(metadata_key)))
        key = metadata_key.rpartition("/")[0] or "."
        nodes[key] = document
        prefix = "" if key == "." else f"{key}/"
        nodes |= {f"{inner} (consolidated)": node for inner, node in consolidated_nodes(document, prefix)}

    for key, node in nodes.items():
        data_type_name, codec_names = refused_parts(node, TRUSTED_DATA_TYPES, TRUSTED_CODECS)
        if data_type_name is not None:
            problems.append(f"{key}: data type {data_type_name!r} (object/variable-length or unknown)")
        problems += [f"{key}: codec {codec_name!r} is not whitelisted" for codec_name in codec_names]
    return problems


def _remove_partial_files(location: StoreLocation) -> None:
    """Delete the temporary files zarr's LocalStore writes before an atomic rename, left by a killed run
    (object stores have none: an interrupted PUT leaves no object)."""
    if not location.is_local:
        return
    for partial in location.fs.find(location.path):
        if partial.endswith(".partial"):
            logger.info("removing %s left by an interrupted write", partial)
            location.fs.rm_file(partial)


def _clear_store(location: StoreLocation) -> None:
    """Delete everything in the store, but not its directory (its flock is ours)."""
    for child in location.children():
        location.fs.rm(child, recursive=True)


def _lock_store(location: StoreLocation) -> int | None:
    """The single-writer lock: a flock on a local store's directory (released when the descriptor is closed,
    also by a killed process), returned as that descriptor. None on other filesystems, which have no locks."""
    if not location.is_local:
        logger.warning(
            "feature store %s is on %s, which has no locks: make sure no other extraction writes it at the "
            "same time", location.shown, type(location.fs).__name__,
        )  # fmt: skip
        return None
    location.fs.makedirs(location.path, exist_ok=True)
    lock_fd = os.open(location.path, os.O_RDONLY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise StoreLockedError(
            f"feature store {location.shown} is being written by another extraction (it holds a lock on the "
            "directory); wait for it to finish or stop it"
        ) from None
    return lock_fd


def _mismatches(stored: FeatureStoreManifest, requested: FeatureStoreManifest) -> list[str]:
    """The identity fields that differ, each as 'field: store has X, requested Y'."""
    if stored.schema_version != requested.schema_version:
        return [f"schema_version: store has {stored.schema_version}, requested {requested.schema_version}"]
    differences = []
    for field in FeatureStoreManifest.IDENTITY_FIELDS:
        stored_value, requested_value = getattr(stored, field), getattr(requested, field)
        if field == "compression":
            if stored_value != requested_value:
                differences.append(
                    f"compression: store has '{stored_value.describe()}', requested '{requested_value.describe()}'"
                )
        elif field == "config_hash" and stored_value != requested_value:
            differences.append(f"config_hash: store has {stored_value!r}, requested {requested_value!r}")
            for key in sorted(set(stored.config) | set(requested.config)):
                if stored.config.get(key, "<absent>") != requested.config.get(key, "<absent>"):
                    differences.append(
                        f"config[{key!r}]: store has {stored.config.get(key, '<absent>')!r}, "
                        f"requested {requested.config.get(key, '<absent>')!r}"
                    )
        elif stored_value != requested_value:
            differences.append(f"{field}: store has {stored_value!r}, requested {requested_value!r}")
    return differences


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
        lock_fd = _lock_store(location)
        try:
            requested = manifest.model_copy(update={"compression": compression})
            if overwrite:
                logger.warning("overwriting feature store %s", location.shown)
                _clear_store(location)
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
            stored = _validated_manifest(path, _read_manifest_json(location))
        except ValueError as error:
            raise StoreMismatchError(f"{error}. {refusal}") from None
        differences = _mismatches(stored, requested)
        if differences:
            raise StoreMismatchError(
                f"feature store {path} was written with another configuration:\n  "
                + "\n  ".join(differences)
                + f"\n{refusal}"
            )
        _remove_partial_files(location)
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
                "package_version": _package_version(),
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
        problems = _untrusted_metadata(location)
        if problems:
            raise ValueError(f"refusing to read feature store {location.shown}:\n  " + "\n  ".join(problems))
        manifest = _validated_manifest(location.shown, _read_manifest_json(location))
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
        self._check_group_request(name, segment_ids, n_tokens, token_rate, sampling_rate)
        n_tokens = n_tokens.astype(np.int32)

        with quiet_zarr_extension_warnings():
            if name in self._root and "chunk_done" not in self._root[name]:
                # chunk_done is created last: without it the layout was cut short and holds no features
                logger.warning("group %r of %s has an incomplete layout; recreating it", name, self.path)
                del self._root[name]
            if name not in self._root:
                self._create_group_layout(name, segment_ids, n_tokens, token_rate, sampling_rate)
        self._load_group(name)
        self._check_group_matches(name, segment_ids, n_tokens, token_rate, sampling_rate)

        if name not in self.manifest.groups:
            info = GroupInfo(
                n_segments=len(segment_ids), max_tokens=int(n_tokens.max()),
                token_rate=token_rate, sampling_rate=sampling_rate,
            )  # fmt: skip
            self.manifest = self.manifest.model_copy(update={"groups": {**self.manifest.groups, name: info}})
            self._mark_incomplete()  # also writes the manifest

    def _check_group_request(self, name, segment_ids, n_tokens, token_rate, sampling_rate) -> None:
        where = f"group {name!r} of feature store {self.path}"
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{where}: a group name must be non-empty, without '/' and not start with '.'")
        if segment_ids.ndim != 1 or len(segment_ids) == 0:
            raise ValueError(f"{where}: segment_ids must be a non-empty list, got shape {segment_ids.shape}")
        if n_tokens.shape != segment_ids.shape:
            raise ValueError(f"{where}: {len(segment_ids)} segment ids but n_tokens has shape {n_tokens.shape}")
        if n_tokens.dtype.kind not in "iu" or n_tokens.min() < 0 or n_tokens.max() < 1:
            raise ValueError(f"{where}: n_tokens must be non-negative integers, at least one positive")
        if len(np.unique(segment_ids)) != len(segment_ids):
            raise ValueError(f"{where}: segment ids are not unique")
        if not (token_rate > 0 and (sampling_rate is None or sampling_rate > 0)):
            raise ValueError(f"{where}: token_rate {token_rate} and sampling_rate {sampling_rate} must be > 0")

    def _create_group_layout(self, name, segment_ids, n_tokens, token_rate, sampling_rate) -> None:
        compression = self.manifest.compression
        n_segments, max_tokens, feature_dim = len(segment_ids), int(n_tokens.max()), self.manifest.feature_dim
        n_chunks = math.ceil(n_segments / compression.chunk_segments)
        filters, compressors = _feature_codecs(compression)
        group = self._root.create_group(
            name, attributes={"token_rate": float(token_rate),
                              "sampling_rate": None if sampling_rate is None else float(sampling_rate)}
        )
        group.create_array(
            "features",
            shape=(n_segments, max_tokens, feature_dim),
            chunks=(compression.chunk_segments, max_tokens, feature_dim),
            dtype=compression.dtype,
            fill_value=np.nan,
            filters=filters,
            compressors=compressors,
            dimension_names=("segment", "token", "feature"),
            attributes={
                "long_name": f"{self.manifest.teacher} token features",
                "coordinates": "segment_id token_start token_end",  # so xarray shows them as coordinates
            },
        )
        per_segment = {"shape": (n_segments,), "chunks": (n_segments,), "dimension_names": ("segment",)}
        group.create_array("n_tokens", dtype="int32", compressors=compressors, **per_segment)[:] = n_tokens
        group.create_array("segment_id", dtype=segment_ids.dtype, compressors=compressors, **per_segment)[
            :
        ] = segment_ids
        token_index = np.arange(max_tokens, dtype=np.float64)
        for array_name, times in (("token_start", token_index), ("token_end", token_index + 1)):
            group.create_array(
                array_name, shape=(max_tokens,), dtype="float64", compressors=compressors,
                dimension_names=("token",), attributes={"units": "s" if sampling_rate is not None else "samples"},
            )[:] = times / token_rate  # fmt: skip
        # One tiny file per chunk for the record and the statistics: each write_chunk writes its own files,
        # never read-modify-writes a shared one.
        per_chunk = {"compressors": [], "dimension_names": ("chunk",)}
        group.create_array("stat_count", shape=(n_chunks,), chunks=(1,), dtype="int64", fill_value=0, **per_chunk)
        for array_name in ("stat_mean", "stat_m2"):
            group.create_array(
                array_name, shape=(n_chunks, feature_dim), chunks=(1, feature_dim), dtype="float64",
                fill_value=np.nan, compressors=[], dimension_names=("chunk", "feature"),
            )  # fmt: skip
        group.create_array("chunk_done", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False, **per_chunk)

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

        features = np.asarray(features)
        expected = f"({len(chunk_ids)}, {int(chunk_n_tokens.max())}..{max_tokens}, {feature_dim})"
        if (
            features.ndim != 3
            or features.shape[0] != len(chunk_ids)
            or features.shape[2] != feature_dim
            or not chunk_n_tokens.max() <= features.shape[1] <= max_tokens
        ):
            raise ValueError(f"{where}: features have shape {features.shape}, expected {expected}")

        # (k, max_tokens, F) float32, NaN beyond each segment's tokens
        padded = np.full((len(chunk_ids), max_tokens, feature_dim), np.nan, dtype=np.float32)
        for row, n in enumerate(chunk_n_tokens):
            padded[row, :n] = features[row, :n]
        counts, means, m2s = [], [], []  # per segment: (), (F,), (F,)
        for row, n in enumerate(chunk_n_tokens):
            tokens = padded[row, :n].astype(np.float64)  # (n, F)
            if not np.isfinite(tokens).all():
                raise ValueError(f"{where}: segment {str(chunk_ids[row])!r} has non-finite features (NaN or inf)")
            if self.manifest.dtype == "float16" and n and np.abs(tokens).max() > FLOAT16_MAX:
                raise ValueError(
                    f"{where}: segment {str(chunk_ids[row])!r} has features beyond float16's range "
                    f"(|x| up to {np.abs(tokens).max():.3g} > {FLOAT16_MAX}); store them as float32"
                )
            if n:
                counts.append(n)
                means.append(tokens.mean(axis=0))
                m2s.append(((tokens - means[-1]) ** 2).sum(axis=0))
        count, mean, m2 = _merge_m2(counts, np.reshape(means, (-1, feature_dim)), np.reshape(m2s, (-1, feature_dim)))

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


# -------------------------------------------------------------------- inspect


def _bytes_under(location: StoreLocation, *key: str) -> int:
    """Bytes of the files (objects) under a key of the store."""
    return sum(location.fs.du(location.join(*key), total=False).values())


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _codec_chain(array: zarr.Array) -> str:
    """The array's codecs as 'name(key=value, ...) -> ...', as written in its metadata."""
    parts = []
    for codec in array.metadata.to_dict()["codecs"]:
        configuration = ", ".join(f"{key}={value}" for key, value in codec.get("configuration", {}).items())
        parts.append(f"{codec['name']}({configuration})")
    return " -> ".join(parts)


def _store_statistics(store: FeatureStore) -> tuple[int, np.ndarray, np.ndarray, str]:
    """(tokens, mean (F,), std (F,), note): the manifest's, or merged from the chunks written so far."""
    manifest = store.manifest
    if manifest.complete:
        count = sum(int(store.chunk_statistics(name)[1].sum()) for name in store.group_names())
        return count, np.array(manifest.feature_mean), np.array(manifest.feature_std), "manifest"
    if not manifest.groups:
        return 0, np.array([]), np.array([]), "no groups"
    counts, means, m2s = [], [], []  # per group, over its written chunks: (c,), (c, F), (c, F)
    done_chunks = all_chunks = 0
    for name in sorted(manifest.groups):
        done, count, mean, m2 = store.chunk_statistics(name)
        counts.append(count[done])
        means.append(mean[done])
        m2s.append(m2[done])
        done_chunks, all_chunks = done_chunks + int(done.sum()), all_chunks + len(done)
    count, mean, variance = merge_moments(np.concatenate(counts), np.concatenate(means), np.concatenate(m2s))
    return count, mean, np.sqrt(variance), f"partial: {done_chunks} of {all_chunks} chunks written"


def describe_store(path: str | Path) -> str:
    """The `step-pipeline inspect` text: manifest, then per group its dims, chunking, codecs, sizes, then stats.

    path: a local path or fsspec URL; "on disk" sizes are the stored objects' sizes wherever they are."""
    store = FeatureStore.open(path)
    manifest = store.manifest
    lines = [
        f"Feature store {store.path}  ({'complete' if manifest.complete else 'INCOMPLETE'})",
        f"  on disk: {_human_bytes(_bytes_under(store._location))}",
        "Manifest",
    ]
    for field in ("teacher", "kind", "model_id", "revision", "weights_sha256", "layer", "native_rate",
                  "feature_dim", "dtype", "config_hash", "schema_version", "package_version", "created"):  # fmt: skip
        lines.append(f"  {field}: {getattr(manifest, field)}")
    lines.append(f"  compression: {manifest.compression.describe()}")
    lines.append(f"  config: {json.dumps(manifest.config, sort_keys=True)}")
    lines.append(f"  segment: {json.dumps(manifest.segment, sort_keys=True)}")

    for name in store.group_names():
        info, features = manifest.groups[name], store._group_arrays(name)["features"]
        n_segments, max_tokens, feature_dim = features.shape
        valid_tokens = int(store.segments(name)[1].sum())
        n_done = store.n_chunks(name) - len(store.pending_chunks(name))
        on_disk = _bytes_under(store._location, name, "features")
        logical = features.nbytes  # the full (segment, token, feature) box, NaN padding included
        valid_raw = valid_tokens * feature_dim * features.dtype.itemsize
        lines += [
            f"Group {name}  ({n_done} of {store.n_chunks(name)} chunks written)",
            f"  dims: segment {n_segments}, token {max_tokens}, feature {feature_dim}; "
            f"{valid_tokens} valid tokens ({valid_tokens / (n_segments * max_tokens):.0%} of the box)",
            f"  token_rate {info.token_rate:g} Hz, sampling_rate {info.sampling_rate:g} Hz" if info.sampling_rate
            else f"  token_rate {info.token_rate:g} per sample, sampling_rate unknown",
            f"  features {features.dtype} chunks {features.chunks}",
            f"  codecs: {_codec_chain(features)}",
            f"  features on disk {_human_bytes(on_disk)}, uncompressed {_human_bytes(logical)} "
            f"(ratio {logical / max(on_disk, 1):.2f}); valid tokens uncompressed {_human_bytes(valid_raw)} "
            f"(ratio {valid_raw / max(on_disk, 1):.2f})",
            f"  bytes per valid token: {on_disk / max(valid_tokens, 1):.1f} on disk, "
            f"{feature_dim * features.dtype.itemsize} raw",
        ]

    count, mean, std, note = _store_statistics(store)
    lines.append(f"Feature statistics over {count} tokens ({note})")
    if count:
        lines += [
            f"  mean: min {mean.min():.4g}, median {np.median(mean):.4g}, max {mean.max():.4g}",
            f"  std:  min {std.min():.4g}, median {np.median(std):.4g}, max {std.max():.4g}",
            f"  near-constant features (std < 1e-6): {int((std < 1e-6).sum())} of {len(std)}",
        ]
    return "\n".join(lines)


def plot_store(path: str | Path, png_path: str | Path, max_tokens_per_group: int = 200_000) -> None:
    """Draw per-feature mean +- std and a histogram of token L2 norms (per group, first chunks) to a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    store = FeatureStore.open(path)
    _, mean, std, note = _store_statistics(store)
    figure = Figure(figsize=(11, 4), layout="constrained")
    stats_axes, norm_axes = figure.subplots(1, 2)

    feature_index = np.arange(len(mean))
    stats_axes.plot(feature_index, mean, lw=1, label="mean")
    stats_axes.fill_between(feature_index, mean - std, mean + std, alpha=0.3, label="mean ± std")
    title = f"{store.manifest.teacher}: per-feature statistics ({note})"
    stats_axes.set(xlabel="feature", ylabel="value", title=title)
    stats_axes.legend()

    for name in store.group_names():
        norms, n_read = [], 0
        for chunk in np.flatnonzero(store.chunk_statistics(name)[0]):  # written chunks
            if n_read >= max_tokens_per_group:
                break
            features, n_tokens, _ = store.read_chunk(name, chunk)  # (k, max_tokens, F)
            valid = np.arange(features.shape[1])[None, :] < n_tokens[:, None]  # (k, max_tokens)
            norms.append(np.linalg.norm(features[valid], axis=-1))  # (valid tokens,)
            n_read += len(norms[-1])
        if norms:
            norm_axes.hist(np.concatenate(norms), bins=80, histtype="step", label=name)
    norm_axes.set(xlabel="token L2 norm", ylabel="tokens", title="token norms")
    norm_axes.legend()
    figure.savefig(png_path, dpi=100)
    logger.info("wrote %s", png_path)
