"""Pooling token features into one vector per series: the same operator for the student and, in evaluation,
for the teachers' cached tokens, so rows of the probe table differ only in their token features."""

import torch


POOLING_PARTS = ("mean", "std", "max", "stats", "structure")


def check_pooling(pooling: str) -> list[str]:
    """'mean+std' -> ['mean', 'std']; refuses unknown or repeated parts, naming them."""
    parts = pooling.split("+")
    unknown = [p for p in parts if p not in POOLING_PARTS]
    if unknown or len(set(parts)) != len(parts) or parts == ["stats"]:
        raise ValueError(f"pooling {pooling!r}: expected '+'-joined parts of {POOLING_PARTS} (not stats alone), "
                         f"each once")
    return parts


def pool_embedding(tokens: torch.Tensor, token_mask: torch.Tensor, pooling: str, keep_channels: bool = False,
                   statistics: torch.Tensor | None = None, fine_structure: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per series from token features, the same operator for the student and for teachers.

    tokens (B, C, N, F), token_mask (B, N); pooling: '+'-joined parts, per channel over its valid tokens:
    `mean`, `std` (population), `max`, `stats` (the channel's signed-log mean and std from statistics
    compensation, `statistics` (B, C, 2)), and `structure` (the mean, std and max over the channel's valid tokens
    of the student's fine-structure inputs, `fine_structure` (B, C, N, J + K)). Channels are then averaged, or, with
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
            if fine_structure is None:
                raise ValueError(f"pooling {pooling!r} needs the student's fine-structure inputs (a model with "
                                 "structure_lags, structure_bands or structure_kernel_dilations)")
            pooled += [token_moment(fine_structure.to(tokens.dtype), token_mask, m) for m in ("mean", "std", "max")]
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
