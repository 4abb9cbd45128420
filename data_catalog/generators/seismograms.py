"""Earthquake detection (STEAD analogue): three-component (Z, N, E) seismograms at 100 Hz, in counts.

Ground velocity (m/s) is made, then multiplied by a per-item station gain (counts per m/s), so raw amplitude says
little about the class. Noise per component: the secondary microseism (a spectral peak at 0.12-0.3 Hz, the ocean
wave band) with a weaker primary peak at half its frequency, plus cultural/wind noise above ~1 Hz, with an
anti-alias roll-off at 40 Hz. Instrument glitches (spikes with a short ring-down) appear in either class.

Earthquake (label 1): a local event at epicentral distance d. The P wave arrives first, the S wave
d * (1/Vs - 1/Vp) later (Vp = 6.0, Vs = 3.5 km/s: ~0.12 s per km). Each phase is band-limited noise under an
envelope that rises in a fraction of a second and decays exponentially (the coda); S is lower in frequency and
1.5-5x stronger than P, and attenuation lowers both with distance. P arrives steeply from below, so it is
strongest on Z; S (SV + SH) is strongest on the horizontals. Scattered coda reaches every component.
SNR (dB) = 20 log10(event peak / noise std above 1 Hz), the band a seismologist would filter to.
"""

import numpy as np

from data_catalog.generators import GeneratorSpec, coloured_noise, gaussian_band, log_uniform

SAMPLING_RATE = 100.0
P_VELOCITY_KM_S = 6.0
S_VELOCITY_KM_S = 3.5
S_MINUS_P_PER_KM = 1 / S_VELOCITY_KM_S - 1 / P_VELOCITY_KM_S  # seconds per km

DEFAULT_OPTIONS = {
    "length": 6000,  # samples (60 s)
    "snr_db_range": (-2.0, 20.0),  # event peak over the noise std above 1 Hz
    "distance_km_range": (10.0, 200.0),  # epicentral distance, log-uniform (capped so S arrives in the window)
    "gain_range": (1e9, 1e10),  # station gain, counts per m/s
    "microseism_velocity_range": (1e-7, 1e-6),  # m/s, std of the microseism
    "cultural_ratio_range": (0.02, 0.5),  # std of the noise above 1 Hz, relative to the microseism
    "glitch_probability": 0.2,  # chance of an instrument spike in an item (either class)
}


def seismic_noise_asd(frequencies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Amplitude spectra (2, n_freq) of the two noise sources: [microseism, cultural noise above 1 Hz]."""
    secondary = rng.uniform(0.12, 0.3)
    log_f = np.log(np.maximum(frequencies, 1e-3))
    microseism = np.exp(-0.5 * ((log_f - np.log(secondary)) / 0.3) ** 2) + 0.3 * np.exp(
        -0.5 * ((log_f - np.log(secondary / 2)) / 0.3) ** 2
    )
    x = np.maximum(frequencies, 1e-3) / rng.uniform(0.7, 1.5)  # relative to the corner where it takes over
    cultural = x**1.7 / (1 + x**2) / (1 + (frequencies / 40.0) ** 8)  # high-passed, gently falling, anti-aliased
    return np.stack([microseism, cultural])


def normalised_bursts(rng: np.random.Generator, n_samples: int, centres_hz, widths_hz) -> np.ndarray:
    """Band-limited Gaussian noise, one row per (centre, width), each with unit standard deviation."""
    frequencies = np.fft.rfftfreq(n_samples, 1 / SAMPLING_RATE)
    asd = gaussian_band(frequencies[None, :], np.asarray(centres_hz)[:, None], np.asarray(widths_hz)[:, None])
    bursts = coloured_noise(rng, asd, n_samples, rows=len(centres_hz))  # (rows, n_samples)
    return bursts / bursts.std(axis=1, keepdims=True)


def envelope(t: np.ndarray, onset: float, rise_s: float, decay_s: float) -> np.ndarray:
    """Zero before onset, then a quick rise and an exponential coda decay."""
    after = np.maximum(t - onset, 0.0)
    return np.where(t > onset, (1 - np.exp(-after / rise_s)) * np.exp(-after / decay_s), 0.0)


def earthquake(rng: np.random.Generator, n_samples: int, p_onset_s: float, distance_km: float) -> np.ndarray:
    """Ground velocity (3, n_samples) [Z, N, E] of a local earthquake, scaled to a peak |value| of 1."""
    t = np.arange(n_samples) / SAMPLING_RATE
    s_onset_s = p_onset_s + distance_km * S_MINUS_P_PER_KM
    attenuation = 1 - 0.5 * min(distance_km, 300.0) / 300.0  # distant events have lost their high frequencies
    p_centre = rng.uniform(4.0, 10.0) * attenuation
    s_centre = p_centre * rng.uniform(0.4, 0.7)
    p_coda_s, s_coda_s = rng.uniform(0.5, 3.0), rng.uniform(2.0, 10.0) * (1 + distance_km / 100)
    # rows: P, SV, SH along the ray, then scattered P coda and S coda on Z, N, E
    centres = [p_centre, s_centre, s_centre] + [p_centre] * 3 + [s_centre] * 3
    bursts = normalised_bursts(rng, n_samples, centres, [0.5 * c for c in centres])  # (9, n)
    p_env = envelope(t, p_onset_s, 0.05, p_coda_s)
    s_env = envelope(t, s_onset_s, 0.2, s_coda_s) * rng.uniform(1.5, 5.0)  # S is stronger than P
    p_wave, sv_wave, sh_wave = bursts[0] * p_env, bursts[1] * s_env, bursts[2] * s_env
    incidence = np.deg2rad(rng.uniform(10.0, 35.0))  # steep: velocity increases with depth
    back_azimuth = rng.uniform(0, 2 * np.pi)
    radial = p_wave * np.sin(incidence) + sv_wave * np.cos(incidence)
    vertical = p_wave * np.cos(incidence) - sv_wave * np.sin(incidence)
    north = radial * np.cos(back_azimuth) - sh_wave * np.sin(back_azimuth)
    east = radial * np.sin(back_azimuth) + sh_wave * np.cos(back_azimuth)
    scattered = rng.uniform(0.2, 0.5)
    coda = scattered * (bursts[3:6] * envelope(t, p_onset_s, 0.5, 2 * p_coda_s) + bursts[6:9] * s_env)  # (3, n)
    velocity = np.stack([vertical, north, east]) + coda  # (3, n)
    return velocity / np.abs(velocity).max()


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One record (3, length) [Z, N, E] in counts: noise, plus an earthquake if label == 1."""
    n_samples = int(options["length"])
    duration_s = n_samples / SAMPLING_RATE
    frequencies = np.fft.rfftfreq(n_samples, 1 / SAMPLING_RATE)
    microseism_asd, cultural_asd = seismic_noise_asd(frequencies, rng)
    microseism = coloured_noise(rng, microseism_asd, n_samples, rows=3)  # (3, n), Z N E
    cultural = coloured_noise(rng, cultural_asd, n_samples, rows=3)  # (3, n)
    microseism_std = log_uniform(rng, *options["microseism_velocity_range"])  # m/s
    band_noise_std = microseism_std * log_uniform(rng, *options["cultural_ratio_range"])  # m/s above 1 Hz
    velocity = microseism * microseism_std / microseism.std() + cultural * band_noise_std / cultural.std()
    if label == 1:
        p_onset_s = rng.uniform(0.08, 0.5) * duration_s
        max_distance = (0.92 * duration_s - p_onset_s) / S_MINUS_P_PER_KM  # S must arrive inside the window
        low, high = options["distance_km_range"]
        distance_km = log_uniform(rng, min(low, max_distance), min(high, max_distance))
        peak = band_noise_std * 10 ** (rng.uniform(*options["snr_db_range"]) / 20)
        velocity += peak * earthquake(rng, n_samples, p_onset_s, distance_km)
    if rng.uniform() < options["glitch_probability"]:  # a spike ringing down at ~20 Hz on one component
        at = rng.integers(n_samples)
        after_s = np.arange(n_samples - at) / SAMPLING_RATE
        ring = np.exp(-after_s / rng.uniform(0.01, 0.2)) * np.cos(2 * np.pi * 20.0 * after_s)
        velocity[rng.integers(3), at:] += band_noise_std * log_uniform(rng, 5.0, 100.0) * ring
    gain = log_uniform(rng, *options["gain_range"])
    offset = rng.normal(0.0, 1.0, (3, 1)) * microseism_std * gain  # digitiser DC offset
    return velocity * gain + offset  # (3, n) counts


SPEC = GeneratorSpec(
    name="seismograms",
    description="3-component 100 Hz seismograms in counts (microseism + cultural noise, varied station gain); "
    "local earthquakes with P then S arrivals and exponential codas",
    sampling_rate=SAMPLING_RATE,
    channels=3,
    unit="counts",
    class_names=("noise", "earthquake"),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
