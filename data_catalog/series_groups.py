"""One data set's group in the prepared series store: the hash that dates it and opening it checked.

Shared by the writer (data_catalog/series_store.py, `prepare`) and the reader (data_catalog/readers.py,
SeriesStoreReader), so that imports run one way: series_store -> readers -> series_groups.
"""

import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync

from data_catalog.storage import StoreLocation
from schemas.catalog import CatalogEntry


def entry_hash(entry: CatalogEntry) -> str:
    """Hash of everything in a catalog entry that changes the generated series (not its description, nor the
    montage's channel names, which only say how embeddings read the channels)."""
    payload = entry.model_dump(mode="json", exclude={"description", "channel_names"})
    if payload.get("probe"):
        payload["probe"].pop("baseline", None)  # a recorded score does not change the data
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


SERIES_ARRAYS = ("values", "offset", "length", "label", "split", "series_id")
SMALL_ARRAYS = SERIES_ARRAYS[1:]  # read whole when a group is opened; `values` is read on demand


def open_series_groups(store_path: str | Path, names: list[str], inline_io: bool = False) -> list:
    """Per group name, in one zarr call: (attrs, ({array: handle}, {small array: values}) or the exception
    opening them raised), or the exception opening the group itself raised. Checked by `checked_series_group`.

    Why one call: each zarr call from a thread hands off to zarr's event loop and back, which cost a cheap
    teacher's extraction more than the bytes did (two group opens, six array opens and five reads per data set).
    inline_io: a local store does its file I/O inline in zarr's event loop (data_catalog.storage.InlineLocalStore).
    """
    store = StoreLocation.of(store_path).zarr_store(read_only=True, inline_io=inline_io)

    async def open_one(name: str):
        group = await zarr.api.asynchronous.open_group(store, mode="r", path=name, use_consolidated=False)
        try:
            arrays = dict(zip(SERIES_ARRAYS, await asyncio.gather(*map(group.getitem, SERIES_ARRAYS))))
            values = await asyncio.gather(*(arrays[name].getitem(slice(None)) for name in SMALL_ARRAYS))
            opened = ({name: zarr.Array(array) for name, array in arrays.items()}, dict(zip(SMALL_ARRAYS, values)))
        except Exception as exc:  # raised after the group's attrs are checked: they say why first
            opened = exc
        return dict(group.attrs), opened

    async def open_all():
        return await asyncio.gather(*map(open_one, names), return_exceptions=True)

    return sync(open_all())


def checked_series_group(store_path: str | Path, entry: CatalogEntry,
                         opened) -> tuple[dict[str, zarr.Array], dict[str, np.ndarray]]:
    """The arrays of `entry`'s prepared group as open_series_groups gave them, refusing a group that is missing,
    incomplete or from another entry."""
    if isinstance(opened, (FileNotFoundError, zarr.errors.GroupNotFoundError)):
        raise FileNotFoundError(f"{store_path}: no group {entry.name!r}; run `step-pipeline prepare` first") from opened
    if isinstance(opened, BaseException):
        raise opened
    attrs, arrays = opened
    if not attrs.get("complete"):
        raise RuntimeError(f"{store_path}/{entry.name}: incomplete (prepare was interrupted); rerun prepare")
    if attrs.get("entry_hash") != entry_hash(entry):
        raise RuntimeError(
            f"{store_path}/{entry.name}: prepared from a different catalog entry; rerun `step-pipeline prepare`"
        )
    if isinstance(arrays, BaseException):
        raise arrays
    return arrays
