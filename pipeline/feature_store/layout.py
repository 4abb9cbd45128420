"""A data set's group in a feature store: the codecs of its features, its arrays laid out, a request checked."""

import asyncio
import math
from dataclasses import dataclass

import numpy as np
from zarr.abc.store import Store
from zarr.codecs import BloscCodec
from zarr.codecs.numcodecs import BitRound, Quantize
from zarr.core.array import (
    DEFAULT_FILL_VALUE,
    AsyncArray,
    _parse_chunk_encoding_v3,
    _parse_chunk_key_encoding,
)
from zarr.core.chunk_grids import _auto_partition
from zarr.core.common import parse_shapelike
from zarr.core.dtype import parse_dtype
from zarr.core.dtype.common import HasItemSize
from zarr.core.group import GroupMetadata, create_nodes  # create_nodes by module name: a fault hook wraps it
from zarr.core.metadata import ArrayV3Metadata

from schemas.manifest import BitRoundLossy, FeatureStoreManifest, QuantizeLossy, StoreCompression


def feature_codecs(compression: StoreCompression) -> tuple[list, list]:
    """(filters, compressors) of the features array for these options."""
    filters = []
    if isinstance(compression.lossy, BitRoundLossy):
        filters = [BitRound(keepbits=compression.lossy.bitround)]
    elif isinstance(compression.lossy, QuantizeLossy):
        filters = [Quantize(digits=compression.lossy.quantize)]
    return filters, _blosc_compressors(compression)


def _blosc_compressors(compression: StoreCompression) -> list:
    """The features' (and small arrays') compressor: Blosc with bit shuffling, or none."""
    if compression.codec == "none":
        return []
    return [BloscCodec(cname=compression.codec, clevel=compression.clevel, shuffle="bitshuffle")]


def check_group_request(where: str, name: str, segment_ids: np.ndarray, n_tokens: np.ndarray, token_rate: float,
                        sampling_rate: float | None) -> None:
    """Refuse a malformed layout request (bad group name, ids, token counts or rates) before anything is written."""
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


@dataclass(frozen=True)
class GroupRequest:
    """One data set's group to lay out: its segments (ids and valid tokens, in the series store's order) and rates."""

    name: str
    segment_ids: np.ndarray  # (segment,) <U..
    n_tokens: np.ndarray  # (segment,) int32
    token_rate: float
    sampling_rate: float | None  # None: unknown; token times are then in samples


def group_arrays(manifest: FeatureStoreManifest, request: GroupRequest) -> list[tuple[str, dict, np.ndarray | None]]:
    """(array name, zarr create_array keyword arguments, values to write or None) of a group, chunk_done last."""
    compression = manifest.compression
    n_segments, max_tokens, feature_dim = len(request.segment_ids), int(request.n_tokens.max()), manifest.feature_dim
    n_chunks = math.ceil(n_segments / compression.chunk_segments)
    filters, compressors = feature_codecs(compression)
    features = {
        "shape": (n_segments, max_tokens, feature_dim), "chunks": (compression.chunk_segments, max_tokens, feature_dim),
        "dtype": compression.dtype, "fill_value": np.nan, "filters": filters, "compressors": compressors,
        "dimension_names": ("segment", "token", "feature"),
        "attributes": {
            "long_name": f"{manifest.teacher} token features",
            "coordinates": "segment_id token_start token_end",  # so xarray shows them as coordinates
        },
    }  # fmt: skip
    per_segment = {"shape": (n_segments,), "chunks": (n_segments,), "dimension_names": ("segment",),
                   "compressors": compressors}
    token_index = np.arange(max_tokens, dtype=np.float64)
    per_token = {"shape": (max_tokens,), "dtype": "float64", "compressors": compressors, "dimension_names": ("token",),
                 "attributes": {"units": "s" if request.sampling_rate is not None else "samples"}}
    # One tiny file per chunk for the record and the statistics: each write_chunk writes its own files,
    # never read-modify-writes a shared one.
    per_chunk = {"shape": (n_chunks,), "chunks": (1,), "compressors": [], "dimension_names": ("chunk",)}
    per_chunk_feature = {"shape": (n_chunks, feature_dim), "chunks": (1, feature_dim), "dtype": "float64",
                         "fill_value": np.nan, "compressors": [], "dimension_names": ("chunk", "feature")}
    return [
        ("features", features, None),
        ("n_tokens", {**per_segment, "dtype": "int32"}, request.n_tokens),
        ("segment_id", {**per_segment, "dtype": request.segment_ids.dtype}, request.segment_ids),
        ("token_start", per_token, token_index / request.token_rate),
        ("token_end", per_token, (token_index + 1) / request.token_rate),
        ("stat_count", {**per_chunk, "dtype": "int64", "fill_value": 0}, None),
        ("stat_mean", per_chunk_feature, None),
        ("stat_m2", per_chunk_feature, None),
        ("chunk_done", {**per_chunk, "dtype": "bool", "fill_value": False}, None),
    ]


def group_attributes(request: GroupRequest) -> dict:
    return {"token_rate": float(request.token_rate),
            "sampling_rate": None if request.sampling_rate is None else float(request.sampling_rate)}


def array_metadata(shape, dtype, chunks="auto", filters="auto", compressors="auto", fill_value=DEFAULT_FILL_VALUE,
                   attributes=None, dimension_names=None) -> ArrayV3Metadata:
    """The metadata zarr's Group.create_array writes for these arguments, built without touching a store.

    zarr's own init_array steps (no shards, default serializer and chunk keys), minus its existence checks and
    metadata write: building 9 arrays' metadata per group through init_array cost more than the layout's writes.
    tests/test_feature_store.py checks the result against Group.create_array's, file by file.
    """
    zdtype = parse_dtype(dtype, zarr_format=3)
    shape = parse_shapelike(shape)
    item_size = zdtype.item_size if isinstance(zdtype, HasItemSize) else 1
    _, chunk_shape = _auto_partition(array_shape=shape, shard_shape=None, chunk_shape=chunks, item_size=item_size)
    array_array, array_bytes, bytes_bytes = _parse_chunk_encoding_v3(compressors=compressors, filters=filters,
                                                                      serializer="auto", dtype=zdtype)
    return AsyncArray._create_metadata_v3(
        shape=shape, dtype=zdtype, fill_value=fill_value, chunk_shape=chunk_shape,
        chunk_key_encoding=_parse_chunk_key_encoding(None, zarr_format=3),
        codecs=(*array_array, array_bytes, *bytes_bytes), dimension_names=dimension_names, attributes=attributes,
    )


async def create_group_layouts(store: Store, manifest: FeatureStoreManifest,
                               requests: list[GroupRequest]) -> dict[str, dict[str, AsyncArray]]:
    """Lay out several groups at once, in three batched steps, and return their arrays by group and name.

    Why batched: each zarr call from a thread hands off to zarr's event loop, and for a cheap teacher those
    handoffs, not the bytes, were the cost of a layout (~57 ms per group as ~65 separate operations). Order
    kept for resuming: every group and array but chunk_done, then the small arrays' values, then every
    chunk_done; a group without chunk_done was cut short and is recreated (FeatureStore.ensure_groups).
    Equal, file by file, to creating each array with zarr's Group.create_array (tests/test_feature_store.py).
    """
    nodes, flags, values = {}, {}, {}
    for request in requests:
        nodes[request.name] = GroupMetadata(attributes=group_attributes(request), zarr_format=3)
        for array_name, kwargs, data in group_arrays(manifest, request):
            path = f"{request.name}/{array_name}"
            (flags if array_name == "chunk_done" else nodes)[path] = array_metadata(**kwargs)
            if data is not None:
                values[path] = data
    created = {path: node async for path, node in create_nodes(store=store, nodes=nodes)}
    await asyncio.gather(*(created[path].setitem(slice(None), data) for path, data in values.items()))
    created |= {path: node async for path, node in create_nodes(store=store, nodes=flags)}
    arrays: dict[str, dict[str, AsyncArray]] = {}
    for path, node in created.items():
        if isinstance(node, AsyncArray):
            group, _, array_name = path.partition("/")
            arrays.setdefault(group, {})[array_name] = node
    return arrays
