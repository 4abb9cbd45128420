"""Motor imagery (WBCIC analogue): 4 s trials of 16-channel EEG over sensorimotor cortex, 250 Hz, in volts.

Sources, not electrodes, carry the rhythms: a cortical patch under each electrode, plus four distant sources
(occipital alpha, frontal eye activity, left/right temporal muscle). Each patch has a 1/f background, a mu
rhythm (8-12 Hz) and a beta rhythm (18-26 Hz) at subject-specific frequencies and random per-patch strengths.
Imagining a movement desynchronises mu and beta over the cortex that controls the body part (event-related
desynchronisation, ERD; Pfurtscheller & Lopes da Silva 1999): left hand -> right hemisphere (around C4),
right hand -> left hemisphere (around C3), feet -> the vertex (Cz), with surrounding hand areas showing a
weaker synchronisation (focal ERD / surround ERS). ERD starts 0.3-0.8 s after the cue, ramps up over
0.5-1 s, and its depth (fraction of amplitude lost) varies per trial in `erd_depth_range`, as in real data.
Volume conduction: every electrode sees every source through a smooth, heavy-tailed spatial kernel
1 / (1 + (d / sigma)^2)^1.5 with sigma (cm) varying per item; sensors add white noise and 50 Hz mains.
"""

import numpy as np

from data_catalog.generators import GeneratorSpec, coloured_noise, gaussian_band, log_uniform

SAMPLING_RATE = 250.0
CLASS_NAMES = ("left_hand", "right_hand", "feet")
# 10-10 positions on a flattened scalp, cm: x to the right ear, y to the nose; neighbours ~3.5 cm apart.
CHANNEL_POSITIONS = {
    "Fz": (0.0, 7.0), "FC3": (-7.0, 3.5), "FC1": (-3.5, 3.5), "FCz": (0.0, 3.5), "FC2": (3.5, 3.5),
    "FC4": (7.0, 3.5), "C5": (-10.5, 0.0), "C3": (-7.0, 0.0), "C1": (-3.5, 0.0), "Cz": (0.0, 0.0),
    "C2": (3.5, 0.0), "C4": (7.0, 0.0), "C6": (10.5, 0.0), "CP3": (-7.0, -3.5), "CPz": (0.0, -3.5),
    "CP4": (7.0, -3.5),
}
CHANNEL_NAMES = tuple(CHANNEL_POSITIONS)
DISTANT_SOURCES = {"occipital": (0.0, -12.0), "frontal": (0.0, 12.0), "left_temporal": (-14.0, 0.0),
                   "right_temporal": (14.0, 0.0)}
ERD_FOCUS = {0: (7.0, 0.0), 1: (-7.0, 0.0), 2: (0.0, 0.0)}  # cortex controlling left hand, right hand, feet
HAND_AREAS = ((-7.0, 0.0), (7.0, 0.0))

DEFAULT_OPTIONS = {
    "length": 1000,  # samples (4 s)
    "erd_depth_range": (0.2, 0.8),  # fraction of mu/beta amplitude lost at the focus (power: 36-96 %)
    "mu_amplitude_range": (2.0, 10.0),  # uV rms of the mu rhythm, per trial (patches vary around it)
    "volume_conduction_cm_range": (2.5, 4.5),  # sigma of the spatial kernel
    "sensor_noise_uv": 1.0,  # white noise rms at each electrode
}


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One trial (16, length) in volts, channels as CHANNEL_NAMES, imagery class `label`."""
    n_samples = int(options["length"])
    t = np.arange(n_samples) / SAMPLING_RATE
    frequencies = np.fft.rfftfreq(n_samples, 1 / SAMPLING_RATE)
    patches = np.array(list(CHANNEL_POSITIONS.values()))  # (16, 2) cortical patches under the electrodes
    n_patches = len(patches)

    # per-patch rhythms, each row normalised to unit std
    mu_hz, beta_hz = rng.uniform(9.0, 12.0), rng.uniform(18.0, 26.0)  # subject-specific peaks
    asd = np.concatenate([
        np.tile(np.maximum(frequencies, 1.0) ** -0.5, (n_patches, 1)),  # 1/f background
        gaussian_band(frequencies[None, :], mu_hz + rng.normal(0, 0.3, (n_patches, 1)), 1.0),
        gaussian_band(frequencies[None, :], beta_hz + rng.normal(0, 1.0, (n_patches, 1)), 2.5),
    ])
    rhythms = coloured_noise(rng, asd, n_samples, rows=3 * n_patches)
    rhythms /= rhythms.std(axis=1, keepdims=True)
    background, mu, beta = np.split(rhythms, 3)  # each (16, n)
    # mu strength: a level for this subject/trial, varying from patch to patch by a factor ~1.35 (log-normal)
    mu_uv = log_uniform(rng, *options["mu_amplitude_range"]) * np.exp(rng.normal(0, 0.3, (n_patches, 1)))
    beta_uv = mu_uv * rng.uniform(0.2, 0.6, (n_patches, 1))

    # ERD: amplitude of mu and beta scaled by 1 - depth * focus weight * time course (negative weight: ERS)
    def focus_weight(centre):  # (16, 1) how much a patch belongs to the area around `centre`
        return np.exp(-np.sum((patches - centre) ** 2, axis=1, keepdims=True) / (2 * 3.0**2))

    weight = focus_weight(ERD_FOCUS[label])
    if label in (0, 1):  # a weaker ERD over the ipsilateral hand area
        weight = weight + 0.3 * focus_weight(ERD_FOCUS[1 - label])
    else:  # feet: surround ERS over both hand areas
        weight = weight - 0.3 * sum(focus_weight(area) for area in HAND_AREAS)
    onset, ramp = rng.uniform(0.3, 0.8), rng.uniform(0.5, 1.0)
    time_course = np.clip((t - onset) / ramp, 0, 1)[None, :]  # (1, n)
    modulation = 1 - rng.uniform(*options["erd_depth_range"]) * weight * time_course  # (16, n)
    cortex_uv = rng.uniform(5, 10) * background + modulation * (mu_uv * mu + beta_uv * beta)  # (16, n)

    # distant sources: posterior alpha, frontal blinks, temporal muscle
    alpha = coloured_noise(rng, gaussian_band(frequencies, rng.uniform(9, 11.5), 0.8), n_samples)
    blink_times = rng.uniform(0, t[-1], (rng.poisson(0.7), 1))  # (n_blinks, 1)
    blinks = np.sum(rng.uniform(50, 150, blink_times.shape) * np.exp(-0.5 * ((t - blink_times) / 0.1) ** 2), axis=0)
    muscle = coloured_noise(rng, (frequencies > 20).astype(float), n_samples, rows=2)
    distant_uv = np.stack([
        rng.uniform(5, 30) * alpha / alpha.std(),
        blinks,
        rng.uniform(1, 10) * muscle[0] / muscle[0].std(),
        rng.uniform(1, 10) * muscle[1] / muscle[1].std(),
    ])  # (4, n)

    # volume conduction: electrodes (16) see all sources (16 + 4) through a smooth spatial kernel
    sources = np.concatenate([patches, np.array(list(DISTANT_SOURCES.values()))])  # (20, 2)
    distances = np.linalg.norm(patches[:, None, :] - sources[None, :, :], axis=2)  # (16, 20)
    sigma = rng.uniform(*options["volume_conduction_cm_range"])
    kernel = (1 + (distances / sigma) ** 2) ** -1.5  # 1 for the patch under the electrode, decaying with distance
    eeg_uv = kernel @ np.concatenate([cortex_uv, distant_uv])  # (16, n)

    line = rng.uniform(0, 3, (n_patches, 1)) * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 2 * np.pi, (n_patches, 1)))
    eeg_uv += line + options["sensor_noise_uv"] * rng.standard_normal((n_patches, n_samples))
    return eeg_uv * 1e-6  # (16, n) volts


SPEC = GeneratorSpec(
    name="motor_imagery",
    description="4 s, 16-channel 250 Hz EEG (V) over sensorimotor cortex (" + ", ".join(CHANNEL_NAMES) + "); "
    "mu/beta ERD contralateral to the imagined hand, central for feet, volume-conducted",
    sampling_rate=SAMPLING_RATE,
    channels=len(CHANNEL_NAMES),
    unit="V",
    class_names=CLASS_NAMES,
    default_options=DEFAULT_OPTIONS,
    make=make,
)
