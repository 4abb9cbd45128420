"""Pooling token features into one vector per series: the same operator for the student and, in evaluation,
for the teachers' cached tokens, so rows of the probe table differ only in their token features."""

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)


POOLING_PARTS = ("mean", "std", "max", "stats", "structure", "kernels")


def check_pooling(pooling: str) -> list[str]:
    """'mean+std' -> ['mean', 'std']; refuses unknown or repeated parts, naming them."""
    parts = pooling.split("+")
    unknown = [p for p in parts if p not in POOLING_PARTS]
    if unknown or len(set(parts)) != len(parts) or parts == ["stats"]:
        raise ValueError(f"pooling {pooling!r}: expected '+'-joined parts of {POOLING_PARTS} (not stats alone), "
                         f"each once")
    return parts


def pool_embedding(tokens: torch.Tensor, token_mask: torch.Tensor, pooling: str, keep_channels: bool = False,
                   statistics: torch.Tensor | None = None, fine_structure: torch.Tensor | None = None,
                   kernel_activity: torch.Tensor | None = None,
                   kernel_projection: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One vector per series from token features, the same operator for the student and for teachers.

    tokens (B, C, N, F), token_mask (B, N); pooling: '+'-joined parts, per channel over its valid tokens:
    `mean`, `std` (population), `max`, `stats` (the channel's signed-log mean and std from statistics
    compensation, `statistics` (B, C, 2)), `structure` (the mean, std and max over the channel's valid tokens
    of the student's lag and band inputs, `fine_structure` (B, C, N, J + K)) and `kernels` (the same of its fixed
    kernel activities, `kernel_activity` (B, C, N, 84 D); with `kernel_projection` (mean, scale, axes (M, 3 x 84 D))
    those 3 x 84 D numbers are standardised and projected on M axes). Channels are then averaged, or, with
    `keep_channels` (a fixed montage: which channel is which matters), concatenated in order. Returns (B, K) or
    (B, C K), K the parts' widths.
    """
    parts = check_pooling(pooling)
    pooled = []
    for part in parts:
        if part in ("mean", "std", "max"):
            pooled.append(token_moment(tokens, token_mask, part))
        elif part == "stats":
            if statistics is None:
                raise ValueError(f"pooling {pooling!r} needs the series statistics")
            pooled.append(statistics.to(tokens.dtype))
        else:
            inputs = fine_structure if part == "structure" else kernel_activity
            if inputs is None:
                raise ValueError(f"pooling {pooling!r} needs the student's " + (
                    "lag and band inputs (a model with structure_lags or structure_bands)" if part == "structure"
                    else "kernel activities (a model with structure_kernel_dilations)"))
            moments = torch.cat([token_moment(inputs.to(tokens.dtype), token_mask, m) for m in ("mean", "std", "max")],
                                dim=-1)  # (B, C, 3 W)
            if part == "kernels" and kernel_projection is not None:
                mean, scale, axes = (t.to(tokens.dtype) for t in kernel_projection)
                moments = ((moments - mean) / scale) @ axes.T  # (B, C, M)
            pooled.append(moments)
    per_channel = torch.cat(pooled, dim=-1)  # (B, C, K)
    return per_channel.flatten(1) if keep_channels else per_channel.mean(dim=1)


def token_moment(tokens: torch.Tensor, token_mask: torch.Tensor, moment: str) -> torch.Tensor:
    """(B, C, N, F) tokens, (B, N) mask -> (B, C, F): their mean, population std or max over valid tokens."""
    mask = token_mask[:, None, :, None].to(tokens.dtype)  # (B, 1, N, 1)
    if moment == "max":
        return tokens.masked_fill(mask == 0, float("-inf")).amax(dim=2)
    count = mask.sum(dim=2).clamp_min(1)  # (B, 1, 1)
    mean = (tokens * mask).sum(dim=2) / count  # (B, C, F)
    if moment == "mean":
        return mean
    variance = ((tokens - mean[:, :, None]) ** 2 * mask).sum(dim=2) / count  # (B, C, F)
    # sqrt's slope is infinite at 0 (a series of one token, or of identical ones): there the std is 0 and its
    # gradient 0, never NaN (a fixed-stride student on 16-sample series trained on NaN weights before this)
    safe = variance.clamp_min(torch.finfo(variance.dtype).tiny)
    return torch.where(variance > 0, safe.sqrt(), 0.0)


def principal_axes(raw: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (W,), scale (W,), axes (components, W)) of n pooled vectors (n, W): each number standardised, then the
    leading principal axes (signs fixed so each axis' largest loading is positive); with fewer than `components`
    vectors the missing axes are 0. What `kernel_projection` in pool_embedding applies."""
    if len(raw) < 2:
        raise ValueError(f"principal axes of {len(raw)} vectors: at least 2 are needed")
    mean, scale = raw.mean(axis=0), raw.std(axis=0)
    scale[scale == 0] = 1.0  # a constant number (a kernel never or always above its bias) projects to 0
    _, _, found = np.linalg.svd((raw - mean) / scale, full_matrices=False)  # (min(n, W), W) rows: directions
    found = found[:components]
    found *= np.sign(found[np.arange(len(found)), np.abs(found).argmax(axis=1)])[:, None]
    axes = np.zeros((components, raw.shape[1]))
    axes[: len(found)] = found
    if len(found) < components:
        log.warning("principal axes: %d vectors give %d of %d axes; the rest are 0", len(raw), len(found), components)
    return mean, scale, axes
