"""One data set's group in the prepared series store: the hash that dates it and opening it checked.

Shared by the writer (data_catalog/series_store.py, `prepare`) and the reader (data_catalog/readers.py,
SeriesStoreReader), so that imports run one way: series_store -> readers -> series_groups.
"""

import hashlib
import json
from pathlib import Path

import zarr

from data_catalog.storage import StoreLocation
from schemas.catalog import CatalogEntry


def entry_hash(entry: CatalogEntry) -> str:
    """Hash of everything in a catalog entry that changes the generated series (not its description, nor the
    montage's channel names, which only say how embeddings read the channels)."""
    payload = entry.model_dump(mode="json", exclude={"description", "channel_names"})
    if payload.get("probe"):
        payload["probe"].pop("baseline", None)  # a recorded score does not change the data
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def open_series_group(store_path: str | Path, entry: CatalogEntry) -> zarr.Group:
    """The prepared group of `entry`, refusing one that is missing, incomplete or from another entry."""
    store = StoreLocation.of(store_path).zarr_store(read_only=True)
    try:
        group = zarr.open_group(store, mode="r", path=entry.name, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise FileNotFoundError(
            f"{store_path}: no group {entry.name!r}; run `step-pipeline prepare` first"
        ) from exc
    if not group.attrs.get("complete"):
        raise RuntimeError(f"{store_path}/{entry.name}: incomplete (prepare was interrupted); rerun prepare")
    if group.attrs.get("entry_hash") != entry_hash(entry):
        raise RuntimeError(
            f"{store_path}/{entry.name}: prepared from a different catalog entry; rerun `step-pipeline prepare`"
        )
    return group
