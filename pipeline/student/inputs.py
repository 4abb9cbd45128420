"""What `STEPEncoder.embed()` accepts: each user series checked (errors name it) and series batched by length."""

import numpy as np


def validate_series(name: int | str, series: np.ndarray) -> np.ndarray:
    """One input of embed() as a float32 (channels, time) array; errors name the series (its index or id)."""
    array = np.asarray(series)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"series {name}: expected shape (time,) or (channels, time), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"series {name}: empty, shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"series {name}: expected real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported just below
        array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        channel, sample = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(
            f"series {name}: non-finite value {array[channel, sample]} at channel {channel}, sample {sample} "
            "(NaN, inf, or beyond float32's range)"
        )
    return array


def length_batches(shapes: list[tuple[int, int]], batch_size: int, max_batch_samples: int) -> list[list[int]]:
    """Indices grouped into batches of equal channel count and lengths within a factor 2, shortest first."""
    order = sorted(range(len(shapes)), key=lambda i: shapes[i])
    batches: list[list[int]] = []
    for i in order:
        channels, length = shapes[i]
        if batches:
            current = batches[-1]
            first_channels, first_length = shapes[current[0]]
            fits = (
                channels == first_channels
                and length <= 2 * first_length
                and len(current) < batch_size
                and (len(current) + 1) * channels * length <= max_batch_samples
            )
            if fits:
                current.append(i)
                continue
        batches.append([i])
    return batches
