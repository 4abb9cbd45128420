"""One chunk's content before it is written: padded, checked, and summarised as (count, mean, M2) per feature.

The per-chunk summaries are what finalize merges into the store's statistics (merge_moments), so they need no
second pass over the features and survive a resume unchanged.
"""

import numpy as np

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def merge_moments(counts, means, m2s) -> tuple[int, np.ndarray, np.ndarray]:
    """Merge per-part (count, mean, sum of squared deviations) into the whole's (count, mean, variance).

    Chan, Golub & LeVeque's parallel update, in float64: exact up to rounding, and stable where the naive
    sum-of-squares formula cancels catastrophically. The variance is the population one (ddof=0).
    counts: (P,), means: (P, F), m2s: (P, F). Parts with count 0 are skipped; an empty whole gives NaN.
    """
    count, mean, m2 = merge_m2(counts, means, m2s)
    variance = m2 / count if count > 0 else np.full_like(mean, np.nan)
    return count, mean, variance


def merge_m2(counts, means, m2s) -> tuple[int, np.ndarray, np.ndarray]:
    """merge_moments, but returning the merged sum of squared deviations (what the store keeps per chunk)."""
    means = np.asarray(means, dtype=np.float64)
    m2s = np.asarray(m2s, dtype=np.float64)
    count, mean, m2 = 0, np.zeros(means.shape[1:]), np.zeros(means.shape[1:])
    for part_count, part_mean, part_m2 in zip(np.asarray(counts, dtype=np.int64), means, m2s, strict=True):
        if part_count == 0:
            continue
        total = count + int(part_count)
        delta = part_mean - mean
        mean = mean + delta * (part_count / total)
        m2 = m2 + part_m2 + delta**2 * (count * part_count / total)
        count = total
    if count == 0:
        mean = np.full(means.shape[1:], np.nan)
    return count, mean, m2


def checked_chunk(features: np.ndarray, chunk_ids: np.ndarray, chunk_n_tokens: np.ndarray, max_tokens: int,
                  feature_dim: int, dtype: str, where: str) -> tuple[np.ndarray, tuple[int, np.ndarray, np.ndarray]]:
    """(padded (k, max_tokens, F) float32 NaN beyond each segment's tokens, (count, mean (F,), m2 (F,))).

    Raises ValueError for a wrong shape, non-finite tokens, or values beyond float16 in a float16 store:
    everything is checked before the store writes anything.
    """
    features = np.asarray(features)
    expected = f"({len(chunk_ids)}, {int(chunk_n_tokens.max())}..{max_tokens}, {feature_dim})"
    if (
        features.ndim != 3
        or features.shape[0] != len(chunk_ids)
        or features.shape[2] != feature_dim
        or not chunk_n_tokens.max() <= features.shape[1] <= max_tokens
    ):
        raise ValueError(f"{where}: features have shape {features.shape}, expected {expected}")

    # (k, max_tokens, F) float32, NaN beyond each segment's tokens
    padded = np.full((len(chunk_ids), max_tokens, feature_dim), np.nan, dtype=np.float32)
    for row, n in enumerate(chunk_n_tokens):
        padded[row, :n] = features[row, :n]
    counts, means, m2s = [], [], []  # per segment: (), (F,), (F,)
    for row, n in enumerate(chunk_n_tokens):
        tokens = padded[row, :n].astype(np.float64)  # (n, F)
        if not np.isfinite(tokens).all():
            raise ValueError(f"{where}: segment {str(chunk_ids[row])!r} has non-finite features (NaN or inf)")
        if dtype == "float16" and n and np.abs(tokens).max() > FLOAT16_MAX:
            raise ValueError(
                f"{where}: segment {str(chunk_ids[row])!r} has features beyond float16's range "
                f"(|x| up to {np.abs(tokens).max():.3g} > {FLOAT16_MAX}); store them as float32"
            )
        if n:
            counts.append(n)
            means.append(tokens.mean(axis=0))
            m2s.append(((tokens - means[-1]) ** 2).sum(axis=0))
    return padded, merge_m2(counts, np.reshape(means, (-1, feature_dim)), np.reshape(m2s, (-1, feature_dim)))
