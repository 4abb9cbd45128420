"""Marmoset vocalisation types (MarmAudio analogue): 1 s of 16 kHz sound pressure with one call in background noise.

Background: pink (1/f) room/forest noise plus wind, i.e. low-passed noise below ~400 Hz whose level gusts
slowly, at a random overall level. One call per item, synthesised from an instantaneous-frequency track
f(t) and an amplitude envelope (phase = 2 pi * integral of f), with ~1 % slow pitch jitter. Marmoset calls have
harmonics, but with fundamentals at 4-8 kHz every harmonic lies above the 8 kHz Nyquist frequency of a 16 kHz
recording, so (as in real 16 kHz recordings) only the fundamental is present:
  0 phee: long (0.4-0.9 s) tonal call, 6.3-7.6 kHz, slow upward drift and a slow attack,
  1 trill: 0.2-0.6 s tone near 6-7 kHz, sinusoidally frequency-modulated at 25-30 Hz,
  2 twitter: 4-9 short (20-40 ms) upward sweeps repeated every 80-130 ms,
  3 tsik/chirp: 1-3 short (30-80 ms) up-then-down sweeps, spaced 150-300 ms.
SNR (dB) = call power while it sounds over the background power in the 4-8 kHz call band, drawn from
`snr_db_range` (distance to the microphone) plus a per-type loudness: the phee is the loud long-distance contact
call, the trill a soft close-contact call, twitters and tsiks are in between.
"""

import numpy as np

from data_catalog.generators import GeneratorSpec, coloured_noise, log_uniform

SAMPLING_RATE = 16000.0
NYQUIST = SAMPLING_RATE / 2
CALL_LOUDNESS_DB = {0: 6.0, 1: -6.0, 2: 0.0, 3: 3.0}  # typical level of each call type, relative

DEFAULT_OPTIONS = {
    "length": 16000,  # samples (1 s)
    "snr_db_range": (-9.0, 3.0),  # call power over the background power in the 4-8 kHz band
    "noise_pressure_range": (2e-3, 2e-2),  # Pa, background std (40-60 dB SPL)
    "wind_ratio_range": (0.1, 3.0),  # wind std relative to the pink noise
}


def sweep_syllables(t, starts, durations, f_low, f_high, up_then_down):
    """Frequency track and envelope of a train of sweep syllables (each a Hann-windowed sweep)."""
    frequency = np.full_like(t, f_low)
    amplitude = np.zeros_like(t)
    for start, duration in zip(starts, durations):
        inside = (t >= start) & (t < start + duration)
        x = (t[inside] - start) / duration  # 0..1 through the syllable
        shape = np.sin(np.pi * x) if up_then_down else x  # inverted V, or a plain rise
        frequency[inside] = f_low + (f_high - f_low) * shape
        amplitude[inside] = np.sin(np.pi * x) ** 2
    return frequency, amplitude


def call_tracks(rng: np.random.Generator, label: int, t: np.ndarray):
    """Instantaneous frequency (Hz) and amplitude envelope of one call, both shaped like t."""
    duration_s = t[-1]
    if label == 0:  # phee: long tonal call with a slow rise in pitch and a slow attack
        length = rng.uniform(0.4, 0.9)
        start = rng.uniform(0, duration_s - length)
        x = np.clip((t - start) / length, 0, 1)
        f_start = rng.uniform(6.3e3, 7.0e3)
        frequency = f_start + rng.uniform(0.2e3, 0.6e3) * x
        attack, release = rng.uniform(0.1, 0.3), 0.1  # fractions of the call (zero before and after it)
        amplitude = np.clip(x / attack, 0, 1) * np.clip((1 - x) / release, 0, 1)
        return frequency, amplitude
    if label == 1:  # trill: sinusoidal frequency modulation at 25-30 Hz
        length = rng.uniform(0.2, 0.6)
        start = rng.uniform(0, duration_s - length)
        rate = rng.uniform(25, 30)
        carrier = rng.uniform(6.0e3, 7.0e3)
        frequency = carrier + rng.uniform(0.2e3, 0.6e3) * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
        x = np.clip((t - start) / length, 0, 1)
        amplitude = np.sin(np.pi * x) ** 0.5 * (1 + 0.3 * np.sin(2 * np.pi * rate * t))
        return frequency, amplitude
    if label == 2:  # twitter: a train of short upward sweeps
        n_syllables = int(rng.integers(4, 10))
        interval = rng.uniform(0.08, 0.13)
        first = rng.uniform(0, max(duration_s - n_syllables * interval, 0.01))
        starts = first + interval * np.arange(n_syllables) + rng.normal(0, 0.005, n_syllables)
        durations = rng.uniform(0.02, 0.04, n_syllables)
        return sweep_syllables(t, starts, durations, rng.uniform(4.5e3, 5.5e3), rng.uniform(6.5e3, 7.5e3), False)
    # tsik/chirp: a few longer up-then-down sweeps
    n_syllables = int(rng.integers(1, 4))
    interval = rng.uniform(0.15, 0.3)
    first = rng.uniform(0, duration_s - n_syllables * interval)
    starts = first + interval * np.arange(n_syllables)
    durations = rng.uniform(0.03, 0.08, n_syllables)
    return sweep_syllables(t, starts, durations, rng.uniform(4.0e3, 5.0e3), rng.uniform(6.8e3, 7.6e3), True)


def background(rng: np.random.Generator, n_samples: int, options: dict) -> np.ndarray:
    """Pink noise plus gusting wind, scaled to a random sound pressure std (Pa)."""
    frequencies = np.fft.rfftfreq(n_samples, 1 / SAMPLING_RATE)
    pink_asd = 1 / np.sqrt(np.maximum(frequencies, 20.0))
    wind_asd = 1 / (1 + (frequencies / rng.uniform(100, 400)) ** 4)
    pink, wind = coloured_noise(rng, np.stack([pink_asd, wind_asd]), n_samples, rows=2)
    t = np.arange(n_samples) / SAMPLING_RATE
    gusts = 1 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 2 * np.pi))
    wind = wind * gusts * log_uniform(rng, *options["wind_ratio_range"]) * pink.std() / wind.std()
    noise = pink + wind
    return noise * log_uniform(rng, *options["noise_pressure_range"]) / noise.std()


def band_power(series: np.ndarray, low_hz: float, high_hz: float) -> float:
    """Mean power of `series` in [low_hz, high_hz] (Parseval, one-sided)."""
    spectrum = np.fft.rfft(series)
    frequencies = np.fft.rfftfreq(series.size, 1 / SAMPLING_RATE)
    in_band = (frequencies >= low_hz) & (frequencies <= high_hz)
    return 2 * np.sum(np.abs(spectrum[in_band]) ** 2) / series.size**2


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One clip (1, length) of sound pressure (Pa): background plus one call of type `label`."""
    n_samples = int(options["length"])
    t = np.arange(n_samples) / SAMPLING_RATE
    noise = background(rng, n_samples, options)  # (n,) Pa
    frequency, amplitude = call_tracks(rng, label, t)  # (n,) Hz, (n,)
    slow = (np.fft.rfftfreq(n_samples, 1 / SAMPLING_RATE) < 30.0).astype(float)  # jitter slower than 30 Hz
    jitter = coloured_noise(rng, slow, n_samples)
    frequency = np.minimum(frequency * (1 + 0.01 * jitter / jitter.std()), 0.98 * NYQUIST)
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLING_RATE + rng.uniform(0, 2 * np.pi)
    call = amplitude * np.sin(phase)
    sounding = amplitude > 0.05
    call_power = np.mean(call[sounding] ** 2)
    snr_db = rng.uniform(*options["snr_db_range"]) + CALL_LOUDNESS_DB[label]
    target_power = band_power(noise, 4e3, 8e3) * 10 ** (snr_db / 10)
    return (noise + call * np.sqrt(target_power / call_power))[None, :]  # (1, n) Pa


SPEC = GeneratorSpec(
    name="marmoset_calls",
    description="1 s of 16 kHz sound pressure: marmoset phee, trill, twitter or tsik call in pink noise and wind",
    sampling_rate=SAMPLING_RATE,
    channels=1,
    unit="Pa",
    class_names=("phee", "trill", "twitter", "tsik"),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
