"""Opening a feature store safely: where it lives, its manifest, what we trust to decode, the writer's lock."""

import fcntl
import json
import logging
import os
from importlib import metadata as package_metadata
from pathlib import Path

from pydantic import ValidationError

from data_catalog.storage import StoreLocation
from data_catalog.zarr_metadata import consolidated_nodes, refused_parts
from schemas.manifest import SCHEMA_VERSION, FeatureStoreManifest

logger = logging.getLogger(__name__)

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


def package_version() -> str:
    try:
        return package_metadata.version("step-pipeline")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def read_manifest_json(location: StoreLocation) -> dict:
    """The raw manifest dict from the root zarr.json, read without zarr (so nothing untrusted is decoded)."""
    root_metadata = json.loads(location.fs.cat_file(location.join("zarr.json")))
    manifest = root_metadata.get("attributes", {}).get("manifest")
    if not isinstance(manifest, dict):
        raise ValueError(
            f"{location.shown} is a zarr store without a feature-store manifest (attrs['manifest'])"
        )
    return manifest


def validated_manifest(path: str | Path, raw: dict) -> FeatureStoreManifest:
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"feature store {path} has schema_version {raw.get('schema_version')!r}; this version of "
            f"step-pipeline reads {SCHEMA_VERSION}"
        )
    try:
        return FeatureStoreManifest.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"feature store {path} has an invalid manifest:\n{error}") from None


def untrusted_metadata(location: StoreLocation) -> list[str]:
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


def remove_partial_files(location: StoreLocation) -> None:
    """Delete the temporary files zarr's LocalStore writes before an atomic rename, left by a killed run
    (object stores have none: an interrupted PUT leaves no object)."""
    if not location.is_local:
        return
    for partial in location.fs.find(location.path):
        if partial.endswith(".partial"):
            logger.info("removing %s left by an interrupted write", partial)
            location.fs.rm_file(partial)


def clear_store(location: StoreLocation) -> None:
    """Delete everything in the store, but not its directory (its flock is ours)."""
    for child in location.children():
        location.fs.rm(child, recursive=True)


def lock_store(location: StoreLocation) -> int | None:
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


def mismatches(stored: FeatureStoreManifest, requested: FeatureStoreManifest) -> list[str]:
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
