"""Radar pulse classification (RadSeg analogue): complex baseband I/Q at 2 MHz, 1024 samples, five modulations.

One pulse per item, at a random position and width, random carrier offset (the emitter is not exactly at the
receiver's centre frequency), random initial phase and amplitude, in complex white Gaussian receiver noise:
  0 rectangular: unmodulated carrier,
  1 linear FM: frequency swept linearly over a bandwidth of 100-600 kHz, up or down,
  2 Barker-13: binary phase code +++++--++-+-+ (phases 0 / pi), 13 equal chips,
  3 Frank: polyphase code of M^2 chips (M = 3..6), phase of chip (i, j) = 2 pi i j / M,
  4 Costas: frequency hopping over a Welch-Costas sequence (p = 5, 7 or 11), hop spacing = 1 / hop duration.
Phase is integrated from the instantaneous frequency so hops and sweeps are continuous; the envelope rises
and falls over a few samples (transmitter and receiver bandwidth). SNR (dB) is the pulse power over the noise
power per complex sample. Channels: 0 = I (real part), 1 = Q (imaginary part), in volts at the ADC.
"""

import numpy as np

from data_catalog.generators import GeneratorSpec

SAMPLING_RATE = 2e6
BARKER_13 = np.array([1, 1, 1, 1, 1, -1, -1, 1, 1, -1, 1, -1, 1])
WELCH_COSTAS_PRIMES = {5: 2, 7: 3, 11: 2}  # prime p and a primitive root of it: a_i = g^i mod p, i = 1..p-1

DEFAULT_OPTIONS = {
    "length": 1024,  # samples (512 us)
    "snr_db_range": (-3.0, 15.0),  # pulse power over noise power per complex sample
    "pulse_width_us_range": (40.0, 300.0),
    "carrier_offset_hz_range": (-300e3, 300e3),
    "noise_std_v": 0.01,  # per I/Q component
}


def modulation(rng: np.random.Generator, label: int, n_pulse: int) -> tuple[np.ndarray, np.ndarray]:
    """Instantaneous frequency offset (Hz) and phase code (rad) along a pulse of n_pulse samples."""
    x = np.arange(n_pulse) / n_pulse  # 0..1 through the pulse
    width_s = n_pulse / SAMPLING_RATE
    no_frequency, no_phase = np.zeros(n_pulse), np.zeros(n_pulse)
    if label == 0:  # rectangular
        return no_frequency, no_phase
    if label == 1:  # linear FM
        bandwidth = rng.uniform(100e3, 600e3) * rng.choice([-1, 1])
        return bandwidth * (x - 0.5), no_phase
    if label == 2:  # Barker-13
        chip = np.minimum((x * 13).astype(int), 12)
        return no_frequency, np.pi * (BARKER_13[chip] < 0)
    if label == 3:  # Frank code
        m = int(rng.integers(3, 7))
        chip = np.minimum((x * m * m).astype(int), m * m - 1)
        return no_frequency, 2 * np.pi * (chip // m) * (chip % m) / m
    # Costas: hop through a Welch-Costas sequence, cyclically shifted; p such that the hops span <= 800 kHz
    fitting = [p for p in WELCH_COSTAS_PRIMES if (p - 1) ** 2 / width_s <= 800e3] or [min(WELCH_COSTAS_PRIMES)]
    p = int(rng.choice(fitting))
    sequence = np.array([pow(WELCH_COSTAS_PRIMES[p], i, p) for i in range(1, p)])
    sequence = np.roll(sequence, rng.integers(p - 1))
    n_hops = p - 1
    hop = np.minimum((x * n_hops).astype(int), n_hops - 1)
    spacing = n_hops / width_s  # 1 / hop duration: the hops are orthogonal
    return (sequence[hop] - sequence.mean()) * spacing, no_phase


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One capture (2, length) [I, Q] in volts with one pulse of modulation `label`."""
    n_samples = int(options["length"])
    width_range = np.array(options["pulse_width_us_range"]) * 1e-6 * SAMPLING_RATE
    n_pulse = int(min(rng.uniform(*width_range), n_samples - 2))
    start = int(rng.integers(0, n_samples - n_pulse))
    frequency, code = modulation(rng, label, n_pulse)
    frequency = frequency + rng.uniform(*options["carrier_offset_hz_range"])
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLING_RATE + code + rng.uniform(0, 2 * np.pi)
    # envelope: rectangular, its edges smoothed over 2-8 samples (finite bandwidth)
    smoothing = np.hanning(int(rng.integers(2, 9)) + 2)[1:-1]
    envelope = np.convolve(np.ones(n_pulse), smoothing / smoothing.sum(), "same")  # (n_pulse,)
    noise_std = options["noise_std_v"]
    amplitude = noise_std * np.sqrt(2) * 10 ** (rng.uniform(*options["snr_db_range"]) / 20)  # noise power 2 std^2
    baseband = np.zeros(n_samples, dtype=complex)
    baseband[start : start + n_pulse] = amplitude * envelope * np.exp(1j * phase)
    baseband += noise_std * (rng.standard_normal(n_samples) + 1j * rng.standard_normal(n_samples))
    return np.stack([baseband.real, baseband.imag])  # (2, n) volts


SPEC = GeneratorSpec(
    name="radar_pulses",
    description="2 MHz complex baseband (I, Q) radar pulses in AWGN: rectangular, linear FM, Barker-13, Frank, Costas",
    sampling_rate=SAMPLING_RATE,
    channels=2,
    unit="V",
    class_names=("rectangular", "linear_fm", "barker_13", "frank", "costas"),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
