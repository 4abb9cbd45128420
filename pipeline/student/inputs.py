"""What the STEP encoder accepts: forward()'s tensors checked, each user series of embed() checked (errors name it)
and series batched by length."""

import numpy as np
import torch


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


def check_inputs(
    values: torch.Tensor, lengths: torch.Tensor | None, num_tokens: torch.Tensor | None
) -> tuple[int, int, int]:
    """Shapes and ranges of forward()'s arguments, with errors that say which argument is wrong."""
    if values.ndim != 3:
        raise ValueError(f"values must be (batch, channels, time), got shape {tuple(values.shape)}")
    batch, channels, time = values.shape
    if channels < 1 or time < 1:
        raise ValueError(f"values must have at least one channel and one sample, got shape {tuple(values.shape)}")
    if lengths is not None:
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must be ({batch},), got shape {tuple(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > time:
            raise ValueError(f"lengths must lie in [1, {time}], got {lengths.tolist()}")
    if num_tokens is not None:
        if num_tokens.shape != (batch,):
            raise ValueError(f"num_tokens must be ({batch},), got shape {tuple(num_tokens.shape)}")
        if int(num_tokens.min()) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens.tolist()}")
    return batch, channels, time
