"""Long unlabelled records: continuous vertical-component seismic data at 100 Hz, in counts, with sparse quakes.

Made to exercise streaming and adaptive patching at lengths up to 1e7 samples (~28 h). The record is built
block by block with IIR filters whose state carries over from block to block, so it is one continuous series
and memory stays at the output array plus a few blocks (no whole-record FFT):
  - microseism: white noise band-passed to 0.1-0.35 Hz (ocean-wave band),
  - cultural noise: white noise band-passed to 1-20 Hz, louder by day than by night (24 h cycle),
  - earthquakes: a Poisson process (`events_per_hour`); each is the Z component of `seismograms.earthquake`,
    sized by the Gutenberg-Richter law (b = 1: P(peak > a) ~ 1/a), so most are small and a rare large one
    clips at the 24-bit digitiser's full scale, as in real continuous data.
"""

import numpy as np
from scipy import signal

from data_catalog.generators import GeneratorSpec, log_uniform
from data_catalog.generators.seismograms import SAMPLING_RATE, earthquake

BLOCK_SAMPLES = 1 << 16  # noise is made this many samples at a time
EVENT_SAMPLES = 9000  # 90 s of waveform per earthquake
FULL_SCALE_COUNTS = 2**23 - 1  # 24-bit digitiser

DEFAULT_OPTIONS = {
    "length": 2_000_000,  # samples (5.6 h at 100 Hz)
    "events_per_hour": 2.0,
    "gain_range": (1e9, 1e10),  # counts per m/s
    "microseism_velocity_range": (1e-7, 1e-6),  # m/s
    "cultural_ratio_range": (0.02, 0.5),  # daytime std of the 1-20 Hz noise, relative to the microseism
    "min_event_snr": 2.0,  # smallest earthquake peak, in units of the cultural noise std
}


def unit_noise_filter(low_hz: float, high_hz: float) -> np.ndarray:
    """Band-pass SOS filter scaled so that white noise of unit variance comes out with unit variance."""
    sos = signal.butter(2, [low_hz, high_hz], btype="bandpass", fs=SAMPLING_RATE, output="sos")
    impulse = np.zeros(int(200 * SAMPLING_RATE))
    impulse[0] = 1.0
    sos[0, :3] /= np.sqrt(np.sum(signal.sosfilt(sos, impulse) ** 2))  # noise gain = energy of the impulse response
    return sos


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One record (1, length) in counts (float32 from the start, to stay within memory); `label` unused."""
    n_samples = int(options["length"])
    gain = log_uniform(rng, *options["gain_range"])
    microseism_counts = log_uniform(rng, *options["microseism_velocity_range"]) * gain
    cultural_counts = microseism_counts * log_uniform(rng, *options["cultural_ratio_range"])
    microseism_filter, cultural_filter = unit_noise_filter(0.1, 0.35), unit_noise_filter(1.0, 20.0)
    # filter states after 200 s of pre-roll noise, so the record starts in steady state
    pre_roll = rng.standard_normal((2, int(200 * SAMPLING_RATE)))
    microseism_state = signal.sosfilt(microseism_filter, pre_roll[0], zi=np.zeros((len(microseism_filter), 2)))[1]
    cultural_state = signal.sosfilt(cultural_filter, pre_roll[1], zi=np.zeros((len(cultural_filter), 2)))[1]
    day_phase = rng.uniform(0, 2 * np.pi)

    record = np.empty((1, n_samples), dtype=np.float32)
    for start in range(0, n_samples, BLOCK_SAMPLES):
        stop = min(start + BLOCK_SAMPLES, n_samples)
        white = rng.standard_normal((2, stop - start))
        microseism, microseism_state = signal.sosfilt(microseism_filter, white[0], zi=microseism_state)
        cultural, cultural_state = signal.sosfilt(cultural_filter, white[1], zi=cultural_state)
        hours = np.arange(start, stop) / SAMPLING_RATE / 3600
        daytime = 0.6 + 0.4 * np.sin(2 * np.pi * hours / 24 + day_phase)  # cultural noise follows the day
        record[0, start:stop] = microseism_counts * microseism + cultural_counts * daytime * cultural

    n_events = rng.poisson(options["events_per_hour"] * n_samples / SAMPLING_RATE / 3600)
    for onset in np.sort(rng.integers(0, n_samples, n_events)):
        stop = min(onset + EVENT_SAMPLES, n_samples)
        waveform = earthquake(rng, EVENT_SAMPLES, p_onset_s=5.0, distance_km=log_uniform(rng, 10.0, 300.0))[0]
        peak = cultural_counts * options["min_event_snr"] / rng.uniform(1e-4, 1.0)  # Gutenberg-Richter, b = 1
        record[0, onset:stop] += peak * waveform[: stop - onset]
    return np.clip(record, -FULL_SCALE_COUNTS, FULL_SCALE_COUNTS, out=record)  # (1, n) counts


SPEC = GeneratorSpec(
    name="long_records",
    description="continuous 100 Hz vertical seismic record in counts (microseism, day/night cultural noise, "
    "Poisson earthquakes with Gutenberg-Richter sizes), unlabelled, long",
    sampling_rate=SAMPLING_RATE,
    channels=1,
    unit="counts",
    class_names=(),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
