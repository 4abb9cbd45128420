"""A data set's group in a feature store: the codecs of its features, its arrays laid out, a request checked."""

import math

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.codecs.numcodecs import BitRound, Quantize

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


def create_group_layout(root: zarr.Group, manifest: FeatureStoreManifest, name: str, segment_ids: np.ndarray,
                        n_tokens: np.ndarray, token_rate: float, sampling_rate: float | None) -> None:
    """Create a group's arrays (features empty, chunk_done all False); chunk_done last, marking the layout whole."""
    compression = manifest.compression
    n_segments, max_tokens, feature_dim = len(segment_ids), int(n_tokens.max()), manifest.feature_dim
    n_chunks = math.ceil(n_segments / compression.chunk_segments)
    filters, compressors = feature_codecs(compression)
    group = root.create_group(
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
            "long_name": f"{manifest.teacher} token features",
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
