"""The series store: generated data sets materialised once by `step-pipeline prepare` into one Zarr v3 store.

Layout, one group per data set (open with `xarray.open_zarr(path, group=NAME, consolidated=True)`):
  values     (channel, sample)  float32  every series of the set concatenated along time, no padding
  offset     (series,)          int64    where series i starts in `sample`
  length     (series,)          int64    its number of samples
  series_id  (series,)          <U       the ids every feature store and report uses
  label      (series,)          int32    class index, -1 when unlabelled
  split      (series,)          <U       "train" / "test" for probe sets, "" otherwise
Group attrs hold the catalog entry and its hash; a group is rewritten when its entry changes, skipped otherwise.
The store may live at a local path or any fsspec URL (s3://bucket/series.zarr, memory://...; see
data_catalog.storage); prepare writes it from one process.
"""

import logging
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from data_catalog.readers import GeneratorReader
from data_catalog.series_groups import entry_hash
from data_catalog.storage import StoreLocation
from data_catalog.zarr_warnings import quiet_zarr_extension_warnings
from schemas.catalog import CatalogEntry

log = logging.getLogger(__name__)
COMPRESSOR = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def write_dataset(store_path: str | Path, entry: CatalogEntry, chunk_samples: int) -> bool:
    """Generate `entry` into its group, streaming (memory: one chunk of samples). Returns False if up to date."""
    root = zarr.open_group(StoreLocation.of(store_path).zarr_store(), mode="a", use_consolidated=False)
    if entry.name in root:
        existing = root[entry.name]
        if existing.attrs.get("complete") and existing.attrs.get("entry_hash") == entry_hash(entry):
            log.info("%s: up to date, skipped", entry.name)
            return False
        del root[entry.name]  # stale or half-written: rebuild from scratch
    reader = GeneratorReader(entry)
    group = root.create_group(entry.name)
    n, channels = len(reader), entry.channels
    values = group.create_array(
        "values", shape=(channels, 0), chunks=(channels, chunk_samples), dtype="float32",
        compressors=[COMPRESSOR], dimension_names=("channel", "sample"),
    )
    offsets, lengths, labels = np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int32)
    buffer, buffered, written = [], 0, 0
    for i, series in enumerate(tqdm(reader, total=n, desc=f"prepare {entry.name}", unit="series")):
        offsets[i], lengths[i], labels[i] = written + buffered, series.length, series.metadata["label"]
        buffer.append(series.values)
        buffered += series.length
        if buffered >= chunk_samples:  # flush whole chunks only, so appends stay chunk-aligned
            block = np.concatenate(buffer, axis=1)
            whole = (block.shape[1] // chunk_samples) * chunk_samples
            values.append(block[:, :whole], axis=1)
            buffer, buffered, written = [block[:, whole:]], block.shape[1] - whole, written + whole
    if buffered:
        values.append(np.concatenate(buffer, axis=1), axis=1)
    ids = np.array(reader.ids)
    splits = np.array([meta["split"] for meta in reader.metadata])
    with quiet_zarr_extension_warnings():  # fixed-width unicode ids
        for name, data in (("offset", offsets), ("length", lengths), ("label", labels),
                           ("series_id", ids), ("split", splits)):
            group.create_array(name, data=data, dimension_names=("series",))
    group.attrs.update({
        "entry": entry.model_dump(mode="json"), "entry_hash": entry_hash(entry), "domain": entry.domain,
        "sampling_rate": entry.sampling_rate, "unit": entry.unit, "complete": True,
    })
    return True


def prepare(store_path: str | Path, entries: list[CatalogEntry], chunk_samples: int) -> list[str]:
    """Materialise every generator entry; drop groups no longer in the catalog. Returns the rebuilt names.

    store_path: a local path or an fsspec URL."""
    location = StoreLocation.of(store_path)
    rebuilt = [entry.name for entry in entries if write_dataset(store_path, entry, chunk_samples)]
    root = zarr.open_group(location.zarr_store(), mode="a", use_consolidated=False)
    for name in set(root.group_keys()) - {entry.name for entry in entries}:
        log.info("%s: no longer in the catalog, removed from %s", name, location.shown)
        del root[name]
    with quiet_zarr_extension_warnings():
        zarr.consolidate_metadata(location.zarr_store())
    return rebuilt
