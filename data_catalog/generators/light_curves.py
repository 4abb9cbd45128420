"""Light-curve classification (LEAVES analogue): stellar flux at a 30-minute cadence, five variability classes.

Flux is in e-/s (a Kepler/TESS-like photometer): a star of ~1e4 e-/s times a relative variability model, with
  - photon noise: the counts collected in one 1800 s cadence are Poisson, so the flux noise is sqrt(F / 1800),
  - extra white jitter (background, pointing) and red noise (granulation, instrument drifts) of random level,
  - a slow instrumental trend.
Classes, with relative amplitudes drawn log-uniformly from `amplitude_range` (shared, so at the low end every
class fades into the noise and into each other):
  0 constant, 1 eclipsing binary (primary and secondary eclipses, ellipsoidal variation),
  2 pulsator (RR Lyrae-like sawtooth: fast rise, slow decline), 3 planetary transit (short, flat-bottomed,
  limb-darkened dips; at least one in the window), 4 rotational spots (quasi-periodic, evolving spot modulation).
Lengths vary per item (`length_range`), as real light curves do.
"""

import numpy as np

from data_catalog.generators import GeneratorSpec, coloured_noise, log_uniform

CADENCE_S = 1800.0
SAMPLING_RATE = 1.0 / CADENCE_S

DEFAULT_OPTIONS = {
    "length_range": (400, 2000),  # samples (8 to 42 days)
    "flux_range": (5e3, 2e4),  # e-/s, mean stellar flux
    "amplitude_range": (2e-4, 2e-2),  # relative amplitude/depth of the variability, all classes
    "jitter_range": (2e-4, 2e-3),  # relative white noise on top of photon noise
    "red_noise_range": (1e-4, 1e-3),  # relative standard deviation of the red noise
}


def eclipsing_binary(rng, time_days, amplitude):
    """Two eclipses per orbit (circular orbit: secondary at phase 0.5) plus ellipsoidal variation."""
    period = log_uniform(rng, 0.5, 10.0)
    phase = (time_days / period + rng.uniform()) % 1.0
    half_width = rng.uniform(0.02, 0.08)  # eclipse half duration, phase units
    secondary_ratio = rng.uniform(0.0, 0.9)
    flux = np.zeros_like(phase)
    for centre, depth in ((0.0, amplitude), (0.5, amplitude * secondary_ratio)):
        distance = np.abs((phase - centre + 0.5) % 1.0 - 0.5) / half_width
        flux -= depth * np.sqrt(np.clip(1 - distance**2, 0, None))
    flux -= amplitude * rng.uniform(0.0, 0.3) * 0.5 * (1 - np.cos(4 * np.pi * phase))
    return flux


def pulsator(rng, time_days, amplitude):
    """RR Lyrae-like pulsation: a sawtooth that rises in 10-30 % of the period, smoothed to 8 harmonics."""
    period = rng.uniform(0.25, 0.9)
    rise = rng.uniform(0.1, 0.3)
    grid = np.arange(256) / 256  # one cycle
    sawtooth = np.where(grid < rise, grid / rise, (1 - grid) / (1 - rise)) - 0.5  # (256,) in [-0.5, 0.5]
    harmonics = np.fft.rfft(sawtooth)
    harmonics[9:] = 0  # a real pulsator's light curve is smooth: keep the fundamental and 7 overtones
    shape = np.fft.irfft(harmonics, n=grid.size)
    phase = (time_days / period + rng.uniform()) % 1.0
    return amplitude * np.interp(phase, grid, shape, period=1.0)


def planetary_transit(rng, time_days, amplitude):
    """Periodic flat-bottomed dips; duration from Kepler's law, 13 h * (P / 1 yr)^(1/3) times a random factor."""
    duration_days = time_days[-1] - time_days[0]
    period = log_uniform(rng, 0.8, 15.0)
    transit_days = 13 / 24 * (period / 365.25) ** (1 / 3) * rng.uniform(0.5, 1.5)
    first_transit = rng.uniform(0.05, 0.95) * min(period, duration_days)  # at least one transit in the window
    ingress = rng.uniform(0.1, 0.3)  # fraction of the duration spent in ingress (and again in egress)
    # evaluate on 3 sub-samples per cadence and average: a transit can be shorter than two cadences
    offsets = (np.arange(3) - 1) / 3 * CADENCE_S / 86400
    sub_time = time_days[:, None] + offsets[None, :]  # (n, 3)
    x = np.abs((sub_time - first_transit + 0.5 * period) % period - 0.5 * period) / (0.5 * transit_days)
    trapezoid = np.clip((1 - x) / ingress, 0, 1)  # 1 in the flat bottom, 0 outside
    limb_darkening = 1 + 0.3 * (1 - np.clip(x, 0, 1) ** 2)  # deeper at the centre
    return -amplitude * (trapezoid * limb_darkening / 1.3).mean(axis=1)


def rotational_spots(rng, time_days, amplitude):
    """Starspots rotating in and out of view: two spots with slightly different periods and evolving sizes."""
    period = log_uniform(rng, 0.5, 30.0)
    n = time_days.size
    # spots grow and decay over ~3 rotations: their sizes are log-normal noise low-passed to that time scale
    cycles_per_sample = np.fft.rfftfreq(n)
    evolution_band = (cycles_per_sample <= max(1 / (3 * period * 86400 / CADENCE_S), 1.5 / n)).astype(float)
    flux = np.zeros(n)
    for spot in range(2):
        spot_period = period * (1 + rng.uniform(-0.05, 0.05))  # differential rotation
        growth = np.exp(0.5 * coloured_noise(rng, evolution_band, n) / np.sqrt(evolution_band.mean()))
        growth /= growth.max()
        size = amplitude * (1.0 if spot == 0 else rng.uniform(0.2, 0.8))
        angle = 2 * np.pi * time_days / spot_period + rng.uniform(0, 2 * np.pi)
        flux -= size * growth * (0.5 * (1 + np.cos(angle)) + 0.2 * np.cos(2 * angle))
    return flux - flux.mean()


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One light curve (1, n) in e-/s of class `label`, n drawn from length_range."""
    n = int(rng.integers(options["length_range"][0], options["length_range"][1] + 1))
    time_days = np.arange(n) * CADENCE_S / 86400
    amplitude = log_uniform(rng, *options["amplitude_range"])
    relative = np.ones(n)
    if label == 1:
        relative += eclipsing_binary(rng, time_days, amplitude)
    elif label == 2:
        relative += pulsator(rng, time_days, amplitude)
    elif label == 3:
        relative += planetary_transit(rng, time_days, amplitude)
    elif label == 4:
        relative += rotational_spots(rng, time_days, amplitude)
    # red noise (1/f) and a slow quadratic instrumental trend, then white jitter
    frequencies = np.fft.rfftfreq(n)
    red = coloured_noise(rng, 1 / np.maximum(frequencies, 1.0 / n), n)
    relative += log_uniform(rng, *options["red_noise_range"]) * red / red.std()
    trend = np.polynomial.polynomial.polyval(np.linspace(-1, 1, n), rng.normal(0, 5e-4, 3))
    relative += trend + log_uniform(rng, *options["jitter_range"]) * rng.standard_normal(n)
    expected_flux = log_uniform(rng, *options["flux_range"]) * np.clip(relative, 0, None)  # e-/s
    flux = rng.poisson(expected_flux * CADENCE_S) / CADENCE_S  # photon noise: Poisson counts per cadence
    return flux[None, :]  # (1, n)


SPEC = GeneratorSpec(
    name="light_curves",
    description="30-min cadence stellar photometry (~1e4 e-/s, Poisson + red noise): constant, eclipsing binary, "
    "RR Lyrae-like pulsator, planetary transit, rotational spots",
    sampling_rate=SAMPLING_RATE,
    channels=1,
    unit="e-/s",
    class_names=("constant", "eclipsing_binary", "pulsator", "transit", "rotation"),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
