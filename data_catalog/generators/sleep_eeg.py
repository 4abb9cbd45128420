"""Sleep staging (Sleep-EDF analogue): one 30 s epoch of Fpz-Cz-like EEG at 100 Hz, in volts, five stages.

Every epoch is an aperiodic 1/f^chi background (steeper in deeper sleep) plus narrowband rhythms (white noise
through a Gaussian band, slowly waxing and waning) plus the transient graphoelements that define the stages in
the AASM manual. The frontal derivation also picks up eye movements and some muscle activity:
  W   alpha 8-12 Hz (strong with eyes closed, weak with eyes open), beta, blinks, muscle (EMG) bursts;
  N1  low-amplitude theta 4-7 Hz, residual alpha, vertex sharp waves, slow rolling eye movements;
  N2  theta, sleep spindles (11-16 Hz, 0.5-2 s, waxing-waning) and K-complexes (large biphasic waves);
  N3  high-amplitude delta 0.5-2 Hz, occasional spindles;
  REM low-amplitude mixed theta, sawtooth waves (2-6 Hz) and rapid eye movements in phasic REM, atonia (little EMG).
Rhythm amplitudes are drawn per epoch from overlapping ranges, a per-subject gain scales everything, and with
probability `transition_probability` an epoch is a transition: its rhythms are mixed with those of a
neighbouring stage and it may carry that stage's graphoelements. Tonic REM without sawtooth waves or eye
movements looks like N1, which is what makes N1 vs REM hard, as in real scoring.
"""

import numpy as np

from data_catalog.generators import GeneratorSpec, coloured_noise, gaussian_band, log_uniform

SAMPLING_RATE = 100.0
STAGES = ("W", "N1", "N2", "N3", "REM")
NEIGHBOURS = {0: (1, 4), 1: (0, 2, 4), 2: (1, 3), 3: (2,), 4: (0, 1)}  # stages an epoch can be in transition with

# Per stage: ranges of the aperiodic exponent chi and of the rms amplitude (uV) of each rhythm; all drawn
# log-uniformly per epoch.
RHYTHMS = ("background", "delta", "theta", "alpha", "beta", "emg")
STAGE_PROFILES = {
    0: {"chi": (0.8, 1.3), "background": (6, 14), "delta": (1, 4), "theta": (1, 4), "alpha": (2, 25),
        "beta": (2, 6), "emg": (2, 10)},
    1: {"chi": (1.2, 1.7), "background": (6, 12), "delta": (2, 8), "theta": (4, 12), "alpha": (1, 6),
        "beta": (1, 3), "emg": (1, 4)},
    2: {"chi": (1.5, 2.1), "background": (8, 16), "delta": (5, 15), "theta": (5, 12), "alpha": (0.5, 3),
        "beta": (1, 2), "emg": (0.5, 2)},
    3: {"chi": (1.8, 2.5), "background": (10, 20), "delta": (20, 60), "theta": (4, 10), "alpha": (0.5, 2),
        "beta": (0.5, 1.5), "emg": (0.5, 2)},
    4: {"chi": (1.2, 1.8), "background": (6, 12), "delta": (2, 8), "theta": (4, 12), "alpha": (1, 4),
        "beta": (1, 4), "emg": (0.2, 1)},
}
# Mean counts per epoch of each graphoelement (Poisson). The PHASIC ones come and go in episodes: an epoch
# shows them at all only with probability `phasic_probability`.
GRAPHOELEMENTS = {
    0: {"blink": 3.0, "emg_burst": 1.5},
    1: {"vertex_wave": 1.0, "slow_eye_movement": 0.7},
    2: {"spindle": 2.5, "k_complex": 1.2},
    3: {"spindle": 0.5},
    4: {"sawtooth": 0.8, "rapid_eye_movement": 2.5},
}
PHASIC = ("blink", "slow_eye_movement", "rapid_eye_movement", "sawtooth")

DEFAULT_OPTIONS = {
    "length": 3000,  # samples (30 s)
    "transition_probability": 0.3,  # chance an epoch mixes in a neighbouring stage
    "subject_gain_range": (0.6, 1.6),  # per-subject scale of every amplitude (skull, electrodes)
    "phasic_probability": 0.6,  # chance an epoch shows its PHASIC graphoelements (eye movements, sawtooth) at all
}


def gauss(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


def graphoelement(rng: np.random.Generator, kind: str, t: np.ndarray) -> np.ndarray:
    """One transient waveform (uV) at a random time in the epoch."""
    at = rng.uniform(1.0, t[-1] - 1.0)
    if kind == "spindle":  # waxing-waning 11-16 Hz burst
        duration = rng.uniform(0.5, 2.0)
        window = np.clip(1 - np.abs(t - at) / (duration / 2), 0, None) ** 1.5
        return rng.uniform(10, 40) * window * np.sin(2 * np.pi * rng.uniform(11, 16) * t)
    if kind == "k_complex":  # sharp negative wave, then a slower positive one
        height = rng.uniform(50, 150)
        return -height * gauss(t, at, 0.12) + 0.5 * height * gauss(t, at + 0.4, 0.2)
    if kind == "vertex_wave":
        return -rng.uniform(30, 80) * gauss(t, at, 0.06)
    if kind == "blink":  # corneo-retinal dipole seen at Fpz
        return rng.uniform(50, 150) * gauss(t, at, rng.uniform(0.08, 0.15))
    if kind == "emg_burst":  # movement: broadband high-frequency burst
        return rng.uniform(10, 40) * gauss(t, at, rng.uniform(0.2, 1.0)) * rng.standard_normal(t.size)
    if kind == "slow_eye_movement":  # rolling, 0.2-0.5 Hz, over several seconds
        return rng.uniform(20, 60) * gauss(t, at, rng.uniform(2, 5)) * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t)
    if kind == "rapid_eye_movement":  # a sharp step, then an exponential return
        after = np.maximum(t - at, 0)
        height = rng.choice([-1, 1]) * rng.uniform(30, 100)
        return height * (1 - np.exp(-after / 0.03)) * np.exp(-after / rng.uniform(0.3, 1.0))
    if kind == "sawtooth":  # train of triangular 2-6 Hz waves lasting 1-4 s
        frequency = rng.uniform(2, 6)
        cycle = (frequency * t) % 1.0
        wave = 2 * np.where(cycle < 0.7, cycle / 0.7, (1 - cycle) / 0.3) - 1  # slow rise, sharp fall, in [-1, 1]
        return rng.uniform(20, 50) * wave * (np.abs(t - at) < rng.uniform(0.5, 2.0))
    raise ValueError(f"sleep_eeg: unknown graphoelement {kind!r}")


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One epoch (1, length) in volts of sleep stage `label`."""
    n_samples = int(options["length"])
    t = np.arange(n_samples) / SAMPLING_RATE
    frequencies = np.fft.rfftfreq(n_samples, 1 / SAMPLING_RATE)

    # which stages' profiles this epoch mixes: itself, and in a transition a neighbour with weight < 0.5
    neighbour, neighbour_weight = label, 0.0
    if rng.uniform() < options["transition_probability"]:
        neighbour, neighbour_weight = int(rng.choice(NEIGHBOURS[label])), rng.uniform(0.1, 0.5)

    def mixed(key):  # a draw from this stage's range, blended with a draw from the neighbour's
        own, other = (log_uniform(rng, *STAGE_PROFILES[stage][key]) for stage in (label, neighbour))
        return (1 - neighbour_weight) * own + neighbour_weight * other

    chi = mixed("chi")
    # amplitude spectra of the six components (rows as RHYTHMS), each later normalised to unit std
    asd = np.stack([
        np.maximum(frequencies, 0.3) ** (-chi / 2),
        (frequencies > 0.4) * gaussian_band(frequencies, rng.uniform(0.8, 1.5), 0.6),
        gaussian_band(frequencies, rng.uniform(4.5, 6.5), 1.0),
        gaussian_band(frequencies, rng.uniform(8.5, 11.5), 0.8),
        gaussian_band(frequencies, rng.uniform(16, 24), 4.0),
        (frequencies > 20) * gaussian_band(frequencies, 40.0, 12.0),
    ])
    components = coloured_noise(rng, asd, n_samples, rows=len(RHYTHMS))  # (6, n)
    components /= components.std(axis=1, keepdims=True)
    # rhythms wax and wane over seconds: a positive slow modulation per component
    slow = coloured_noise(rng, (frequencies < 0.3).astype(float), n_samples, rows=len(RHYTHMS))
    waxing = np.exp(0.5 * slow / slow.std(axis=1, keepdims=True))
    amplitudes = np.array([mixed(rhythm) for rhythm in RHYTHMS])  # (6,) uV rms
    eeg_uv = np.sum(amplitudes[:, None] * components * waxing / waxing.mean(axis=1, keepdims=True), axis=0)

    stages_present = [(label, 1.0)] + ([(neighbour, neighbour_weight)] if neighbour_weight > 0 else [])
    for stage, weight in stages_present:
        for kind, mean_count in GRAPHOELEMENTS[stage].items():
            if kind in PHASIC and rng.uniform() > options["phasic_probability"]:
                continue
            for _ in range(rng.poisson(mean_count * weight)):
                eeg_uv += graphoelement(rng, kind, t)

    gain = rng.uniform(*options["subject_gain_range"])
    return (eeg_uv * gain * 1e-6)[None, :]  # (1, n) volts


SPEC = GeneratorSpec(
    name="sleep_eeg",
    description="30 s epochs of single-channel 100 Hz EEG (V): 1/f background, alpha/theta/delta rhythms, "
    "spindles, K-complexes, eye movements and sawtooth waves by sleep stage",
    sampling_rate=SAMPLING_RATE,
    channels=1,
    unit="V",
    class_names=STAGES,
    default_options=DEFAULT_OPTIONS,
    make=make,
)
