"""Classical synthetic series: the shapes every time-series model should have seen, at any length and scale.

Families (one drawn per item, uniformly from `families`), all defined in samples, so any declared rate fits:
  arma          stable AR(p <= 3) / MA(q <= 2) noise (random poles inside the unit circle),
  random_walk   Gaussian or heavy-tailed (Student t) increments, with or without drift,
  sinusoids     1-5 sinusoids of log-uniform frequency, random phase and amplitude, in noise,
  chirp         linear, quadratic or exponential frequency sweep, up or down,
  steps         piecewise-constant levels at Poisson change points (level shifts), in noise,
  spikes        sparse spikes with exponential decay and bursts of oscillation on a noisy baseline,
  sawtooth      sawtooth, triangle or square waves with random period and duty cycle,
  trend_seasonal  linear / quadratic / exponential / logistic trend + 1-3 seasonal harmonics + AR(1) noise.
Every series is standardised and then brought to a random physical scale (`physical_scale`). Time and memory
are O(length) (IIR filters, cumulative sums), so 1e6 samples take milliseconds.
"""

import numpy as np
from scipy import signal

from data_catalog.generators import SCALE_OPTIONS, GeneratorSpec, log_uniform, physical_scale, random_length
from data_catalog.generators import standardise

FAMILIES = ("arma", "random_walk", "sinusoids", "chirp", "steps", "spikes", "sawtooth", "trend_seasonal")

DEFAULT_OPTIONS = {"min_length": 64, "max_length": 16384, "families": FAMILIES, **SCALE_OPTIONS}


def _frequency(rng, n: int, low_cycles: float = 2.0) -> float:
    """Cycles per sample, log-uniform from `low_cycles` cycles over the series up to 0.45 (below Nyquist)."""
    return float(log_uniform(rng, min(low_cycles / n, 0.2), 0.45))


def arma(rng, n):
    poles = []
    for _ in range(rng.integers(0, 2)):  # a resonance: a complex-conjugate pair of poles
        radius, angle = rng.uniform(0.3, 0.99), rng.uniform(0.05, np.pi - 0.05)
        poles += [radius * np.exp(1j * angle), radius * np.exp(-1j * angle)]
    if rng.random() < 0.7:  # a real pole: persistence (positive) or alternation (negative)
        poles.append(rng.uniform(-0.9, 0.99))
    ar = np.real(np.poly(poles)) if poles else np.ones(1)
    ma = np.concatenate([[1.0], rng.uniform(-0.9, 0.9, rng.integers(0, 3))])
    burn = 300
    return signal.lfilter(ma, ar, rng.standard_normal(n + burn))[burn:]


def random_walk(rng, n):
    steps = rng.standard_t(rng.uniform(2.5, 30), n) if rng.random() < 0.3 else rng.standard_normal(n)
    drift = rng.normal(0, 0.05) if rng.random() < 0.5 else 0.0
    return np.cumsum(steps + drift)


def sinusoids(rng, n):
    t = np.arange(n)
    out = np.zeros(n)
    for _ in range(rng.integers(1, 6)):
        out += log_uniform(rng, 0.1, 1.0) * np.sin(2 * np.pi * _frequency(rng, n) * t + rng.uniform(0, 2 * np.pi))
    return out + log_uniform(rng, 1e-3, 0.5) * rng.standard_normal(n)


def chirp(rng, n):
    t = np.arange(n) / n
    f0, f1 = _frequency(rng, n), _frequency(rng, n)
    method = ("linear", "quadratic", "logarithmic")[rng.integers(0, 3)]
    wave = signal.chirp(t, f0 * n, 1.0, f1 * n, method=method, phi=rng.uniform(0, 360))
    return wave + log_uniform(rng, 1e-3, 0.3) * rng.standard_normal(n)


def steps(rng, n):
    n_changes = rng.poisson(log_uniform(rng, 1, 20))
    levels = np.zeros(n)
    for start in np.sort(rng.integers(0, n, n_changes)):
        levels[start:] += rng.normal(0, 1)
    return levels + log_uniform(rng, 1e-3, 0.5) * rng.standard_normal(n)


def spikes(rng, n):
    out = log_uniform(rng, 1e-3, 0.2) * rng.standard_normal(n)
    n_spikes = rng.poisson(log_uniform(rng, 1, max(2.0, n / 50)))
    decay = log_uniform(rng, 0.5, 50)  # samples
    kernel = np.exp(-np.arange(int(10 * decay) + 1) / decay)
    impulses = np.zeros(n)
    impulses[rng.integers(0, n, n_spikes)] = rng.choice([-1, 1], n_spikes) * log_uniform(rng, 0.5, 5, n_spikes)
    out += signal.lfilter([1.0], [1.0, -np.exp(-1 / decay)], impulses) if len(kernel) > 1 else impulses
    for _ in range(rng.poisson(2)):  # bursts of oscillation
        width = int(min(n, log_uniform(rng, 8, max(9, n / 4))))
        start = rng.integers(0, n - width + 1)
        envelope = np.hanning(width)
        out[start : start + width] += log_uniform(rng, 0.3, 3) * envelope * np.sin(
            2 * np.pi * _frequency(rng, width) * np.arange(width))
    return out


def sawtooth(rng, n):
    t = np.arange(n)
    phase = 2 * np.pi * _frequency(rng, n, 1.5) * t + rng.uniform(0, 2 * np.pi)
    kind = rng.integers(0, 3)
    if kind == 0:
        wave = signal.sawtooth(phase, width=rng.choice([0.0, 1.0]))
    elif kind == 1:
        wave = signal.sawtooth(phase, width=0.5)  # triangle
    else:
        wave = signal.square(phase, duty=rng.uniform(0.1, 0.9))
    return wave + log_uniform(rng, 1e-3, 0.3) * rng.standard_normal(n)


def trend_seasonal(rng, n):
    t = np.linspace(0, 1, n)
    kind = rng.integers(0, 4)
    if kind == 0:
        trend = rng.normal(0, 3) * t
    elif kind == 1:
        trend = rng.normal(0, 3) * t + rng.normal(0, 3) * t**2
    elif kind == 2:
        trend = np.exp(rng.uniform(-3, 3) * t)
    else:
        trend = rng.normal(0, 3) / (1 + np.exp(-rng.uniform(5, 30) * (t - rng.uniform(0.2, 0.8))))
    season = np.zeros(n)
    for _ in range(rng.integers(1, 4)):
        period = log_uniform(rng, 4, max(5.0, n / 2))
        for harmonic in range(1, rng.integers(1, 4) + 1):
            season += rng.normal(0, 1 / harmonic) * np.sin(2 * np.pi * harmonic * np.arange(n) / period
                                                            + rng.uniform(0, 2 * np.pi))
    noise = signal.lfilter([1.0], [1.0, -rng.uniform(0, 0.95)], rng.standard_normal(n))
    return trend + season + log_uniform(rng, 0.01, 1.0) * noise


SHAPES = {name: globals()[name] for name in FAMILIES}


def unit_series(rng: np.random.Generator, length: int, families=FAMILIES) -> np.ndarray:
    """A standardised draw of `length` samples from one family drawn from `families` (float64)."""
    unknown = sorted(set(families) - set(SHAPES))
    if unknown or not families:
        raise ValueError(f"synthetic_shapes: unknown or no families {unknown} (known: {list(FAMILIES)})")
    family = families[rng.integers(0, len(families))]
    return standardise(SHAPES[family](rng, length))


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One series (1, length) at a random physical scale; `label` unused."""
    length = random_length(rng, options)
    return physical_scale(rng, unit_series(rng, length, tuple(options["families"]))[None], options)


SPEC = GeneratorSpec(
    name="synthetic_shapes",
    description="ARMA, random walks, sinusoid mixtures, chirps, level shifts, spikes and bursts, sawtooth/square "
    "waves, trends with seasonality; any length and physical scale, unlabelled",
    sampling_rate=None,
    channels=1,
    unit="arbitrary",
    class_names=(),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
