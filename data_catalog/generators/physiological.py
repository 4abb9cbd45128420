"""Physiological signals at their native rates and units: ECG, PPG, respiration, EMG and EDA.

Our own small models of each shape (neurokit2 would fit the pins but adds a dependency whose ECG simulator,
ECGSYN, integrates an ODE and is slow; these are O(length) and take milliseconds):
  ecg          250 Hz, mV. Beats at 40-170 bpm with heart-rate variability (respiratory sinus arrhythmia plus
               random jitter); each beat the P, Q, R, S and T waves as Gaussians whose widths and delays follow the
               RR interval (McSharry et al. 2003's morphology, summed instead of integrated); baseline wander,
               mains hum and muscle noise; ectopic (premature) beats now and then.
  ppg          100 Hz, arbitrary units (photodiode counts). Per beat a systolic and a smaller, later diastolic
               Gaussian wave on a large DC level; respiratory modulation of baseline and amplitude; motion
               artefacts (bursts of low-frequency noise).
  respiration  25 Hz, arbitrary units (belt). 6-30 breaths/min with breath-to-breath variation of period and
               depth, inspiration shorter than expiration; occasional sighs and apnoeas.
  emg          1000 Hz, mV. Bursts of 20-450 Hz band-limited noise under smooth activation envelopes on a
               baseline of amplifier noise and mains hum.
  eda          4 Hz, microsiemens. A slowly drifting tonic level (1-20 uS) plus skin-conductance responses at
               Poisson onsets, each a bi-exponential (rise 0.5-2 s, recovery 2-8 s).
"""

import numpy as np
from scipy import signal

from data_catalog.generators import GeneratorSpec, log_uniform, random_length


def beat_times(rng: np.random.Generator, duration_s: float, bpm_range=(40.0, 170.0)) -> np.ndarray:
    """Beat onsets (s) over `duration_s` with heart-rate variability: RSA at the breathing rate plus jitter."""
    mean_rr = 60.0 / rng.uniform(*bpm_range)
    resp_hz, rsa = rng.uniform(0.12, 0.4), rng.uniform(0.0, 0.08)
    jitter = rng.uniform(0.005, 0.05)
    times, t = [], -rng.uniform(0, mean_rr)
    while t < duration_s + 2 * mean_rr:
        times.append(t)
        t += mean_rr * (1 + rsa * np.sin(2 * np.pi * resp_hz * t) + jitter * rng.standard_normal())
    return np.array(times)


def _add_gaussian(out: np.ndarray, rate: float, centre_s: float, width_s: float, amplitude: float) -> None:
    """Add a Gaussian wave in place, evaluated within +-4 widths only (O(width) per wave)."""
    lo, hi = int((centre_s - 4 * width_s) * rate), int((centre_s + 4 * width_s) * rate) + 1
    lo, hi = max(lo, 0), min(hi, len(out))
    if lo < hi:
        t = np.arange(lo, hi) / rate
        out[lo:hi] += amplitude * np.exp(-0.5 * ((t - centre_s) / width_s) ** 2)


def _band_noise(rng, n, rate, low, high, order=2):
    sos = signal.butter(order, [low, min(high, 0.45 * rate)], btype="bandpass", fs=rate, output="sos")
    noise = signal.sosfilt(sos, rng.standard_normal(n))
    return noise / max(noise.std(), 1e-12)


def _lowpass_walk(rng, n, rate, cutoff):
    sos = signal.butter(2, cutoff, fs=rate, output="sos")
    walk = signal.sosfilt(sos, rng.standard_normal(n))
    return walk / max(walk.std(), 1e-12)


ECG_RATE, PPG_RATE, RESP_RATE, EMG_RATE, EDA_RATE = 250.0, 100.0, 25.0, 1000.0, 4.0


def ecg(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    n = random_length(rng, options)
    rate = ECG_RATE
    out = np.zeros(n)
    # (delay as a fraction of sqrt(RR) around the R peak, width s, amplitude mV) for P, Q, R, S, T
    gain = log_uniform(rng, 0.5, 2.0)
    waves = [(-0.2, 0.025, rng.uniform(0.08, 0.25)), (-0.035, 0.01, -rng.uniform(0.03, 0.2)),
             (0.0, rng.uniform(0.008, 0.014), rng.uniform(0.6, 2.0)), (0.035, 0.012, -rng.uniform(0.1, 0.5)),
             (0.3, rng.uniform(0.04, 0.07), rng.uniform(0.1, 0.5) * rng.choice([1, 1, 1, -1]))]
    beats = beat_times(rng, n / rate)
    for k, r_time in enumerate(beats):
        if k and rng.random() < 0.02:  # a premature beat: earlier, wider, no P wave
            r_time = beats[k - 1] + 0.6 * (r_time - beats[k - 1])
            _add_gaussian(out, rate, r_time, 0.04, gain * rng.uniform(0.8, 2.0))
            continue
        rr = np.sqrt(max(0.3, (beats[k + 1] - r_time) if k + 1 < len(beats) else 0.8))
        for delay, width, amplitude in waves:
            _add_gaussian(out, rate, r_time + delay * rr, width * rr, gain * amplitude)
    t = np.arange(n) / rate
    out += rng.uniform(0.02, 0.3) * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.3))  # wander
    out += rng.uniform(0, 0.05) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t)  # mains
    out += log_uniform(rng, 0.002, 0.05) * rng.standard_normal(n)  # muscle and amplifier noise
    return out[None].astype(np.float32)


def ppg(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    n = random_length(rng, options)
    rate = PPG_RATE
    out = np.zeros(n)
    amplitude = log_uniform(rng, 50, 5000)
    diastolic, notch_delay = rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.35)
    for r_time in beat_times(rng, n / rate, (45.0, 150.0)):
        foot = r_time + 0.15  # pulse transit time after the R wave
        _add_gaussian(out, rate, foot + 0.12, rng.uniform(0.06, 0.1), amplitude)
        _add_gaussian(out, rate, foot + 0.12 + notch_delay, 0.1, amplitude * diastolic)
    t = np.arange(n) / rate
    breathing = np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.3))
    out *= 1 + rng.uniform(0, 0.2) * breathing
    out += amplitude * rng.uniform(0, 0.3) * breathing + amplitude * 0.01 * rng.standard_normal(n)
    for _ in range(rng.poisson(n / rate / 60)):  # motion artefacts, ~1 a minute
        width = int(min(n, rng.uniform(1, 8) * rate))
        start = rng.integers(0, n - width + 1)
        out[start : start + width] += amplitude * rng.uniform(0.5, 3) * np.hanning(width) * _lowpass_walk(
            rng, width, rate, 2.0)
    return (out + log_uniform(rng, 1e3, 1e5))[None].astype(np.float32)  # photodiode DC level


def respiration(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    n = random_length(rng, options)
    rate = RESP_RATE
    out = np.zeros(n)
    amplitude, period = log_uniform(rng, 10, 1000), 60.0 / rng.uniform(6, 30)
    t0 = -rng.uniform(0, period)
    while t0 < n / rate:
        breath = period * np.exp(0.15 * rng.standard_normal())
        depth = amplitude * np.exp(0.2 * rng.standard_normal()) * (2.5 if rng.random() < 0.03 else 1.0)  # sigh
        if rng.random() < 0.02:  # apnoea: no breath for a while
            t0 += rng.uniform(5, 20)
            continue
        inspiration = breath * rng.uniform(0.3, 0.45)
        lo, hi = max(int(t0 * rate), 0), min(int((t0 + breath) * rate), n)
        if lo < hi:
            s = np.arange(lo, hi) / rate - t0
            shape = np.where(s < inspiration, 0.5 - 0.5 * np.cos(np.pi * s / inspiration),
                             0.5 + 0.5 * np.cos(np.pi * (s - inspiration) / (breath - inspiration)))
            out[lo:hi] += depth * shape
        t0 += breath
    out += amplitude * (rng.uniform(0, 0.3) * _lowpass_walk(rng, n, rate, 0.02) + 0.02 * rng.standard_normal(n))
    return (out + rng.uniform(-1, 1) * amplitude * 5)[None].astype(np.float32)


def emg(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    n = random_length(rng, options)
    rate = EMG_RATE
    activity = np.zeros(n)
    for _ in range(rng.poisson(max(0.5, n / rate / 2))):  # contractions, ~1 every 2 s
        width = int(min(n, rng.uniform(0.1, 2.0) * rate))
        start = rng.integers(0, n - width + 1)
        activity[start : start + width] += log_uniform(rng, 0.05, 2.0) * np.hanning(width)
    out = activity * _band_noise(rng, n, rate, 20.0, 450.0, order=4)
    t = np.arange(n) / rate
    out += log_uniform(rng, 0.002, 0.02) * rng.standard_normal(n)
    out += rng.uniform(0, 0.02) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t + rng.uniform(0, 6.3))
    return out[None].astype(np.float32)


def eda(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    n = random_length(rng, options)
    rate = EDA_RATE
    tonic = log_uniform(rng, 1.0, 20.0)
    out = tonic * (1 + rng.uniform(0, 0.2) * _lowpass_walk(rng, n + 64, rate, 0.01)[64:])
    impulses = np.zeros(n)
    onsets = rng.integers(0, n, rng.poisson(rng.uniform(1, 6) * n / rate / 60))
    impulses[onsets] = log_uniform(rng, 0.02, 1.0, len(onsets))
    rise, recovery = rng.uniform(0.5, 2.0), rng.uniform(2.0, 8.0)
    t = np.arange(int(10 * recovery * rate)) / rate
    scr = np.exp(-t / recovery) - np.exp(-t / rise)
    out += np.convolve(impulses, scr / scr.max())[:n]
    out += 0.005 * rng.standard_normal(n)  # sensor noise, uS
    return np.clip(out, 0.01, None)[None].astype(np.float32)


def _spec(name, make, rate, unit, what, max_length):
    return GeneratorSpec(name=name, description=f"{what} at {rate:g} Hz in {unit}, unlabelled", sampling_rate=rate,
                         channels=1, unit=unit, class_names=(),
                         default_options={"min_length": 64, "max_length": max_length, "lengths_per_octave": 2},
                         make=make)


SPECS = (
    _spec("ecg", ecg, ECG_RATE, "mV", "ECG (P-QRS-T beats with HRV, wander, mains, ectopics)", 16384),
    _spec("ppg", ppg, PPG_RATE, "arbitrary", "PPG (systolic and diastolic waves, motion artefacts)", 16384),
    _spec("respiration", respiration, RESP_RATE, "arbitrary", "respiration belt (sighs, apnoeas)", 8192),
    _spec("emg", emg, EMG_RATE, "mV", "surface EMG (band-limited bursts, mains)", 16384),
    _spec("eda", eda, EDA_RATE, "uS", "EDA (tonic level and phasic skin-conductance responses)", 4096),
)
