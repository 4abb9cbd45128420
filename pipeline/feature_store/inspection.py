"""`step-pipeline inspect`: a store described as text (layout, codecs, sizes, manifest, statistics) and plotted."""

import json
import logging
from pathlib import Path

import numpy as np
import zarr

from data_catalog.storage import StoreLocation
from pipeline.feature_store.chunks import merge_moments
from pipeline.feature_store.store import FeatureStore

logger = logging.getLogger(__name__)


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
