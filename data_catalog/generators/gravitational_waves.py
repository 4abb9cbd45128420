"""Gravitational-wave event detection (GWOSC analogue): inspiral chirps in coloured detector noise.

Noise: stationary Gaussian strain with the Advanced-LIGO design PSD shape (Ajith 2011 analytic fit: a seismic
wall below ~20 Hz, a bucket near 100-300 Hz, shot noise rising above), made by shaping white noise in the
frequency domain. Below `min_frequency` the PSD is held flat (real strain is high-passed before analysis), which
puts the time-domain standard deviation at ~1e-21. Per item the wall, the shot-noise level, the overall level and
the power-line (60 Hz + harmonics) and violin-mode lines vary, as they do between real data segments.

Signal (label 1): a leading-order (Newtonian) compact-binary inspiral. With tau = t_c - t the time to
coalescence and Mc the chirp mass in seconds (G Mc / c^3),
    f(tau) = (1 / pi) * (5 / (256 tau))^(3/8) * Mc^(-5/8),   amplitude ~ f^(2/3),
from `low_frequency` (20 Hz, or the segment start) up to the innermost stable orbit f_isco = 4400 Hz * Msun / M,
with a cosine taper at both ends. It is scaled to an optimal matched-filter SNR drawn from `snr_range`,
computed against the very PSD the noise was drawn from: SNR^2 = sum over samples of the whitened template^2.
"""

import numpy as np

from data_catalog.generators import GeneratorSpec, coloured_noise, log_uniform

SAMPLING_RATE = 4096.0
SOLAR_MASS_SECONDS = 4.925491e-6  # G * Msun / c^3

DEFAULT_OPTIONS = {
    "length": 16384,  # samples (4 s at 4096 Hz)
    "snr_range": (10.0, 25.0),  # optimal matched-filter SNR of the injected chirp (GW150914: ~24)
    "chirp_mass_range": (4.0, 35.0),  # solar masses, drawn log-uniformly
    "coalescence_range": (0.55, 0.95),  # where t_c falls, as a fraction of the segment
    "low_frequency": 20.0,  # Hz, where the chirp starts (detector band edge)
    "min_frequency": 8.0,  # Hz, PSD held flat below this
    "psd_variability": 0.5,  # spread (natural log) of the per-item seismic, shot and overall PSD factors
}


def detector_psd(frequencies: np.ndarray, rng: np.random.Generator, options: dict) -> np.ndarray:
    """One-sided strain PSD (1/Hz) of one data segment: aLIGO fit, per-item factors and spectral lines."""
    spread = options["psd_variability"]
    seismic_factor, shot_factor, level = np.exp(rng.normal(0.0, spread, 3))
    x = np.maximum(frequencies, options["min_frequency"]) / 215.0
    psd = 1e-49 * (
        seismic_factor * (x**-4.14 - 5 * x**-2)
        + 111 * (1 - x**2 + 0.5 * x**4) / (1 + 0.5 * x**2) * (1 + (shot_factor - 1) * x**2 / (1 + x**2))
    )
    # narrow lines: 60 Hz mains and harmonics, violin modes of the test-mass suspensions near 500 Hz
    line_frequencies = np.array([60.0, 120.0, 180.0, rng.uniform(495, 510), rng.uniform(990, 1010)])
    line_heights = log_uniform(rng, 2.0, 50.0, line_frequencies.size)
    for centre, height in zip(line_frequencies, line_heights):
        psd = psd * (1 + height * np.exp(-0.5 * ((frequencies - centre) / 0.3) ** 2))
    return level * np.maximum(psd, 1e-50)


def inspiral_chirp(rng: np.random.Generator, n_samples: int, options: dict) -> np.ndarray:
    """Unit-amplitude Newtonian inspiral (float64, (n_samples,)), tapered on and off, zero after coalescence."""
    chirp_mass = log_uniform(rng, *options["chirp_mass_range"]) * SOLAR_MASS_SECONDS  # seconds
    total_mass = chirp_mass * 2 ** 1.2 * rng.uniform(1.0, 1.3)  # equal masses give 2^(6/5) Mc; unequal a bit more
    f_isco = 1.0 / (6**1.5 * np.pi * total_mass)
    t = np.arange(n_samples) / SAMPLING_RATE
    t_coalescence = rng.uniform(*options["coalescence_range"]) * n_samples / SAMPLING_RATE
    tau = np.maximum(t_coalescence - t, 1e-6)
    frequency = (1 / np.pi) * (5 / (256 * tau)) ** 0.375 * chirp_mass**-0.625  # Hz, rising as tau^(-3/8)
    in_band = (frequency >= options["low_frequency"]) & (frequency <= min(f_isco, 0.45 * SAMPLING_RATE))
    phase = 2 * np.pi * np.cumsum(np.where(in_band, frequency, 0.0)) / SAMPLING_RATE + rng.uniform(0, 2 * np.pi)
    strain = np.where(in_band, frequency ** (2 / 3) * np.cos(phase), 0.0)
    if in_band.sum() < 8:
        raise ValueError(f"gravitational_waves: no chirp between low_frequency={options['low_frequency']} Hz and "
                         f"f_isco={f_isco:.0f} Hz; check chirp_mass_range={options['chirp_mass_range']}")
    # taper: 0.1 s (or fewer samples) at the start of the band, two cycles at the end
    first, last = np.flatnonzero(in_band)[[0, -1]]
    n_on = max(2, min(int(0.1 * SAMPLING_RATE), (last - first) // 2))
    n_off = max(2, min(int(2 * SAMPLING_RATE / frequency[last]), (last - first) // 2))
    strain[first : first + n_on] *= 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n_on))
    strain[last - n_off + 1 : last + 1] *= 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, n_off))
    return strain


def whiten(series: np.ndarray, psd: np.ndarray) -> np.ndarray:
    """Series divided by the noise ASD, scaled so that noise drawn from `psd` comes out white with unit variance."""
    return np.fft.irfft(np.fft.rfft(series) / np.sqrt(psd * SAMPLING_RATE / 2), n=series.size)


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One segment (1, length) of strain: noise, plus a chirp if label == 1."""
    n_samples = int(options["length"])
    frequencies = np.fft.rfftfreq(n_samples, 1 / SAMPLING_RATE)
    psd = detector_psd(frequencies, rng, options)  # (n_freq,) 1/Hz
    strain = coloured_noise(rng, np.sqrt(psd * SAMPLING_RATE / 2), n_samples)  # (n_samples,), PSD = psd
    if label == 1:
        chirp = inspiral_chirp(rng, n_samples, options)
        optimal_snr = np.sqrt(np.sum(whiten(chirp, psd) ** 2))
        strain += chirp * rng.uniform(*options["snr_range"]) / optimal_snr
    return strain[None, :]  # (1, n_samples)


SPEC = GeneratorSpec(
    name="gravitational_waves",
    description="LIGO-like coloured strain noise (~1e-21) with Newtonian inspiral chirps at matched-filter SNR 10-25",
    sampling_rate=SAMPLING_RATE,
    channels=1,
    unit="strain",
    class_names=("noise", "event"),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
