"""Physically grounded generators of the synthetic probe tasks: analogues of the STEP paper's seven tasks.

None of the paper's data sets (GWOSC, LEAVES, STEAD, MarmAudio, Sleep-EDF, WBCIC, RadSeg) can be downloaded here,
so each task has a generator that draws one series from a small physical model of its domain: detector noise
with the right spectral shape and units, the signal classes of that domain, and the nuisances (gains, noise
levels, artefacts) that keep amplitude alone from giving the answer away.

Reproducibility: item `index` of set `seed` draws only from `np.random.default_rng([seed, index])`, so any item
can be made on its own, in any order, in parallel; pretraining sets are the same generators under other seeds.
Labels are balanced by construction: label = index % n_classes (-1 for unlabelled sets).

Each task module defines `SPEC`, a `GeneratorSpec` whose `make(rng, label, options)` expects complete options
(defaults merged); `generate` does the merging and rejects unknown keys.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class GeneratorSpec:
    """What one generator produces, and the function that draws one item."""

    name: str  # registry key, e.g. "gravitational_waves"
    description: str  # one line, physical grounding
    sampling_rate: float  # Hz
    channels: int
    unit: str  # physical unit of the values
    class_names: tuple[str, ...]  # () for unlabelled sets
    default_options: dict  # difficulty knobs and lengths
    make: Callable[[np.random.Generator, int, dict], np.ndarray]  # (rng, label, options) -> (channels, time)


# ---- helpers shared by the task modules (defined before the task modules are imported, since they use them) ----


def log_uniform(rng: np.random.Generator, low: float, high: float, size=None):
    """A draw spread evenly over orders of magnitude: scales (gains, amplitudes, masses) are positive and wide."""
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def coloured_noise(rng: np.random.Generator, asd: np.ndarray, n_samples: int, rows: int | None = None) -> np.ndarray:
    """Gaussian noise with amplitude spectral density proportional to `asd` (given on np.fft.rfftfreq(n_samples)).

    White noise of unit variance is shaped in the frequency domain, so the output's one-sided PSD is
    (2 / sampling_rate) * asd**2 in whatever units asd carries; callers normalise to their physical scale.
    `asd` may be (n_freq,) or (rows, n_freq) for several independent series at once. Output is float64.
    """
    shape = (n_samples,) if rows is None else (rows, n_samples)
    white_spectrum = np.fft.rfft(rng.standard_normal(shape), axis=-1)  # (..., n_freq)
    return np.fft.irfft(white_spectrum * asd, n=n_samples, axis=-1)  # (..., n_samples)


def gaussian_band(frequencies: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A smooth band-pass amplitude response: narrowband rhythms and bursts are white noise seen through it."""
    return np.exp(-0.5 * ((frequencies - centre) / width) ** 2)


# ---- the registry ----

from data_catalog.generators import (  # noqa: E402  (the task modules use the helpers above)
    gravitational_waves,
    light_curves,
    long_records,
    marmoset_calls,
    motor_imagery,
    radar_pulses,
    seismograms,
    sleep_eeg,
)

GENERATORS: dict[str, GeneratorSpec] = {
    module.SPEC.name: module.SPEC
    for module in (
        gravitational_waves,
        light_curves,
        seismograms,
        marmoset_calls,
        sleep_eeg,
        motor_imagery,
        radar_pulses,
        long_records,
    )
}


def resolve_options(name: str, options: dict | None = None) -> dict:
    """The generator's default options updated with `options`; an unknown generator or option key is an error."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r} (known: {sorted(GENERATORS)})")
    spec = GENERATORS[name]
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.default_options))
    if unknown:
        raise ValueError(
            f"generator {name!r}: unknown option key(s) {unknown} (known: {sorted(spec.default_options)})"
        )
    return {**spec.default_options, **options}


def generate(name: str, index: int, seed: int, options: dict | None = None) -> tuple[np.ndarray, int]:
    """Item `index` of set (name, seed): values (channels, time) float32 and its label (-1 if unlabelled).

    Each item draws from np.random.default_rng([seed, index]) so any item is reproducible on its own.
    Labels are balanced: label = index % n_classes (for unlabelled sets -1).
    """
    if index < 0 or seed < 0:
        raise ValueError(f"generator {name!r}: index and seed must be >= 0, got index={index}, seed={seed}")
    resolved = resolve_options(name, options)
    spec = GENERATORS[name]
    label = index % len(spec.class_names) if spec.class_names else -1
    rng = np.random.default_rng([seed, index])
    values = spec.make(rng, label, resolved)
    return values.astype(np.float32, copy=False), label
