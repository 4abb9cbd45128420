"""Embed series with a STEP encoder and write the embeddings to a Zarr v3 store that xarray reads.

The store holds `embedding (series, dim)` float32 and `series_id (series,)` fixed-width unicode, with attrs
naming the model and its pooling. Series are streamed: at most one block (a few batches) is in memory at a time, and each block
is appended to the store as soon as it is embedded.

    import xarray as xr
    embed_to_store(model, series, Path("out.zarr"))
    xr.open_zarr("out.zarr", consolidated=True).embedding  # (series, dim)
"""

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from data_catalog.series import Series
from data_catalog.zarr_warnings import quiet_zarr_extension_warnings
from pipeline.student import STEPEncoder
from pipeline.student.inputs import validate_series

logger = logging.getLogger(__name__)

BLOCK_BYTES = 256 * 2**20  # flush a block once its raw values reach this size, whatever the series count
EMBEDDING_CHUNK_ROWS = 4096  # rows per Zarr chunk of `embedding` (4096 x 128 float32 = 2 MB)


def embed_to_store(model: STEPEncoder, series: Iterable[Series], output: Path, batch_size: int = 32,
                   keep_channels: bool = False) -> Path:
    """Embed every series and write them, in input order, to the Zarr v3 store `output` (replaced if present).

    Blocks of up to 8 x batch_size series (or BLOCK_BYTES of values) are embedded together, so that
    `STEPEncoder.embed` can group similar lengths, then appended along `series`. The ids are kept in memory
    (strings are small) and written last as one fixed-width unicode array. `keep_channels`: per-channel vectors
    concatenated (a fixed montage), see `STEPEncoder.embed`.
    """
    output = Path(output)
    if output.exists():
        logger.warning("replacing embedding store %s", output)
    ids: list[str] = []
    block: list[Series] = []
    block_bytes = 0
    for item in series:
        validate_series(repr(item.id), item.values)  # fail naming the id, not an index within a block
        block.append(item)
        block_bytes += item.values.nbytes
        if len(block) >= 8 * batch_size or block_bytes >= BLOCK_BYTES:
            _append_block(model, block, output, batch_size, not ids, keep_channels)
            ids += [s.id for s in block]
            block, block_bytes = [], 0
    if block or not ids:
        _append_block(model, block, output, batch_size, not ids, keep_channels)
        ids += [s.id for s in block]

    width = max((len(i) for i in ids), default=1)
    series_id = xr.Dataset({"series_id": ("series", np.array(ids, dtype=f"<U{width}"))})
    series_id.attrs = {  # written last: appends along `series` would reset attrs written with the first block
        "model": str(model.name_or_path or "unsaved STEPEncoder"),
        "model_type": model.config.model_type,
        "hidden_size": model.config.hidden_size,
        "pooling": model.config.embedding_pooling,
        "keep_channels": int(keep_channels),
    }
    with quiet_zarr_extension_warnings():
        series_id.to_zarr(output, mode="a", zarr_format=3, consolidated=False)
        zarr.consolidate_metadata(str(output))
    logger.info("embedded %d series into %s", len(ids), output)
    return output


def _append_block(model: STEPEncoder, block: list[Series], output: Path, batch_size: int, first: bool,
                  keep_channels: bool) -> None:
    """Embed one block and write it: a new store for the first block, appended along `series` afterwards."""
    embeddings = model.embed(
        [s.values for s in block], sampling_rate=[s.sampling_rate for s in block], batch_size=batch_size,
        keep_channels=keep_channels,
    )  # (len(block), dim)
    dataset = xr.Dataset({"embedding": (("series", "dim"), embeddings)})
    if first:
        chunks = (EMBEDDING_CHUNK_ROWS, embeddings.shape[1])
        dataset.to_zarr(output, mode="w", zarr_format=3, consolidated=False, encoding={"embedding": {"chunks": chunks}})
    else:
        dataset.to_zarr(output, append_dim="series", consolidated=False)


def series_from_file(path: Path, sampling_rate: float | None = None, stacked: bool = False) -> Iterator[Series]:
    """The series of a .npy or .npz file, read one at a time (.npy is memory-mapped).

    The catalog's convention: an array is one series, (time,) or (channels, time); with `stacked` its first
    axis runs over series, (series, time) or (series, channels, time).
    .npz: one series per member, (time,) or (channels, time), named by the member's key.
    Ids are "<file stem>/<row>" for .npy (row 0 for a single series) and the member keys for .npz.
    """
    path = Path(path)
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if stacked:
            understood = array.ndim in (2, 3)
            array = array[:, None, :] if array.ndim == 2 else array  # (series, channels, time)
        else:
            understood = array.ndim in (1, 2)
            array = array.reshape(1, -1, array.shape[-1]) if understood else array  # (1, channels, time)
        if not understood:
            expected = "(series, time) or (series, channels, time)" if stacked else "(time,) or (channels, time)"
            raise ValueError(f"{path}: expected {expected}{'' if stacked else ' (or pass --stacked)'}, "
                             f"got shape {array.shape}")
        for row in range(array.shape[0]):
            yield Series(f"{path.stem}/{row}", np.asarray(array[row], dtype=np.float32), sampling_rate)
    elif path.suffix == ".npz":
        with np.load(path) as members:
            for key in members.files:
                values = np.asarray(members[key], dtype=np.float32)
                if values.ndim not in (1, 2):
                    raise ValueError(f"{path}: member {key!r} must be (time,) or (channels, time), "
                                     f"got shape {values.shape}")
                yield Series(key, values if values.ndim == 2 else values[None, :], sampling_rate)
    else:
        raise ValueError(f"{path}: expected a .npy or .npz file, got {path.suffix or 'no suffix'}")
