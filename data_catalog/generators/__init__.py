"""Physically grounded generators of the synthetic probe tasks: analogues of the STEP paper's seven tasks.

None of the paper's data sets (GWOSC, LEAVES, STEAD, MarmAudio, Sleep-EDF, WBCIC, RadSeg) can be downloaded here,
so each task has a generator that draws one series from a small physical model of its domain: detector noise
with the right spectral shape and units, the signal classes of that domain, and the nuisances (gains, noise
levels, artefacts) that keep amplitude alone from giving the answer away.

Reproducibility: item `index` of set `seed` draws only from `np.random.default_rng([seed, index])`, so any item
can be made on its own, in any order, in parallel; pretraining sets are the same generators under other seeds.
Labels are balanced by construction: label = index % n_classes (-1 for unlabelled sets).

Each task module defines `SPEC` (or `SPECS`, several), a `GeneratorSpec` whose `make(rng, label, options)` expects
complete options (defaults merged); `generate` does the merging and rejects unknown keys.

Besides the task analogues, the broad pretraining corpus has its own families (`CORPUS_GENERATORS`): Gaussian
processes from random kernel compositions (kernel_synth), classical shapes (ARMA, random walks, sinusoids, chirps,
steps, spikes, sawtooth/square, trend + seasonality: synthetic_shapes), their random mixtures (tsmixup),
physiological signals at their native rates (physiological), multichannel series with correlated and independent
channels (multichannel) and segments of the real seismograms obspy ships as test data (real_seismograms). They draw
a log-uniform length from `min_length`..`max_length` per item, and the generic ones a log-uniform physical scale.
A generic family has no rate of its own (`sampling_rate=None`: the catalog entry declares one, or `unknown`), and
the multichannel one takes its channel count from its `channels` option (`channels=None`).
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class GeneratorSpec:
    """What one generator produces, and the function that draws one item."""

    name: str  # registry key, e.g. "gravitational_waves"
    description: str  # one line, physical grounding
    sampling_rate: float | None  # Hz; None: any rate the catalog entry declares (shapes defined in samples)
    channels: int | None  # None: the `channels` option
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


LENGTHS_PER_OCTAVE = 2  # distinct lengths per doubling in a corpus set (0: every length)


def random_length(rng: np.random.Generator, options: dict) -> int:
    """A length drawn log-uniformly from options min_length..max_length (samples): every scale is as likely.

    With options lengths_per_octave = k > 0 (default LENGTHS_PER_OCTAVE), the draw snaps to the nearest of the
    lengths round(2 ** (j / k)) (clipped to the range), so a set holds a few distinct lengths: extraction batches
    the segments of one length together, and a set of all-different lengths would cost one teacher call each."""
    low, high = int(options["min_length"]), int(options["max_length"])
    if not 2 <= low <= high:
        raise ValueError(f"need 2 <= min_length <= max_length, got min_length={low}, max_length={high}")
    steps = options.get("lengths_per_octave", LENGTHS_PER_OCTAVE)
    if steps:
        octave = rng.uniform(np.log2(low), np.log2(high + 1))
        return int(min(high, max(low, round(2 ** (round(octave * steps) / steps)))))
    return int(min(high, np.floor(log_uniform(rng, low, high + 1))))


def standardise(values: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation along time (float64); a constant series stays zero."""
    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean(axis=-1, keepdims=True)
    std = centred.std(axis=-1, keepdims=True)
    return centred / np.where(std > 0, std, 1.0)


def physical_scale(rng: np.random.Generator, unit_values: np.ndarray, options: dict) -> np.ndarray:
    """Unit-scale values brought to a random physical scale: a log-uniform amplitude from options
    amplitude_range (1e-21 strain to 1e6 counts), and with probability offset_probability an offset of up to
    +-10 amplitudes (a DC level, as raw sensors have). Returns float32."""
    amplitude = float(log_uniform(rng, *options["amplitude_range"]))
    offset = amplitude * rng.uniform(-10, 10) if rng.random() < options["offset_probability"] else 0.0
    return (unit_values * amplitude + offset).astype(np.float32)


# options every generic corpus family shares: the physical scale of its values, and how lengths snap to a grid
SCALE_OPTIONS = {"amplitude_range": (1e-21, 1e6), "offset_probability": 0.3, "lengths_per_octave": 2}

# ---- the registry ----

from data_catalog.generators import (  # noqa: E402  (the task modules use the helpers above)
    gravitational_waves,
    kernel_synth,
    light_curves,
    long_records,
    marmoset_calls,
    mixup,
    motor_imagery,
    multichannel,
    physiological,
    radar_pulses,
    real_seismograms,
    seismograms,
    sleep_eeg,
    synthetic_shapes,
)

TASK_MODULES = (gravitational_waves, light_curves, seismograms, marmoset_calls, sleep_eeg, motor_imagery,
                radar_pulses, long_records)
CORPUS_MODULES = (kernel_synth, synthetic_shapes, mixup, physiological, multichannel, real_seismograms)


def _specs(modules) -> list[GeneratorSpec]:
    return [spec for module in modules for spec in getattr(module, "SPECS", (getattr(module, "SPEC", None),))]


GENERATORS: dict[str, GeneratorSpec] = {spec.name: spec for spec in _specs(TASK_MODULES + CORPUS_MODULES)}
# the broad pretraining corpus's families (never used by a probe task)
CORPUS_GENERATORS: tuple[str, ...] = tuple(spec.name for spec in _specs(CORPUS_MODULES))


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
