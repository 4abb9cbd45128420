"""Per-channel standardisation shared by the paper's teachers (hf_remote_code, moment, mantis, braindecode).

Why: a teacher's features must not depend on the series' units (1e-21 strain and 1e6 counts alike): the absolute
level is what the student's statistics compensation supplies. Each channel is centred and divided by its standard
deviation over the whole series, in float64 (a light curve at 1e4 +- 1e-2 keeps its detail), with the deviation
floored at a fraction of the channel's own magnitude, never an absolute number, so a constant channel becomes zeros
and float32 rounding noise on a flat one is not blown up to unit variance.
"""

import numpy as np

# Spreads below this fraction of a channel's largest |value| count as flat (float32 resolves ~1.2e-7 of a value).
RELATIVE_FLOOR = 1e-6


def standardize_channels(values: np.ndarray) -> np.ndarray:
    """(batch, channels, T) -> (batch, channels, T) float32, each channel zero-mean and unit-variance (float64 maths).

    One series at a time, so the float64 working copy stays one series' size."""
    out = np.empty(values.shape, dtype=np.float32)
    for item, series in enumerate(values):
        x = np.asarray(series, dtype=np.float64)  # (channels, T)
        centred = x - x.mean(axis=-1, keepdims=True)
        scale = np.maximum(centred.std(axis=-1, keepdims=True), RELATIVE_FLOOR * np.abs(x).max(axis=-1, keepdims=True))
        out[item] = centred / np.where(scale > 0, scale, 1.0)
    return out
