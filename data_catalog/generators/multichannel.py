"""Multichannel series whose channels are partly correlated and partly independent, so that attention across
channels has something to learn.

Of C channels (the `channels` option, 1 to 58), a random number are mixtures of a few shared latent sources
(classical shapes and KernelSynth draws) through a random mixing matrix, plus their own noise at a random
signal-to-noise ratio (an array of sensors seeing common sources); the rest are independent series. Channels come
in random order, each with its own gain (a decade around the series' amplitude) and offset; the whole series has
a random physical scale.
"""

import numpy as np

from data_catalog.generators import SCALE_OPTIONS, GeneratorSpec, kernel_synth, log_uniform, random_length
from data_catalog.generators import standardise, synthetic_shapes

DEFAULT_OPTIONS = {
    "channels": 4,
    "min_length": 64,
    "max_length": 4096,
    "max_latents": 4,  # shared sources behind the correlated channels
    "kernel_synth_probability": 0.2,
    "gp_points": 256,
    **SCALE_OPTIONS,
}


def _unit(rng, length, options):
    if rng.random() < options["kernel_synth_probability"]:
        gp_options = {**kernel_synth.DEFAULT_OPTIONS, "gp_points": options["gp_points"]}
        return kernel_synth.unit_series(rng, length, gp_options)
    return synthetic_shapes.unit_series(rng, length)


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One series (channels, length); `label` unused."""
    channels = int(options["channels"])
    if channels < 1:
        raise ValueError(f"multichannel: channels must be >= 1, got {channels}")
    length = random_length(rng, options)
    n_correlated = int(rng.integers(0, channels + 1)) if channels > 1 else 0
    out = np.empty((channels, length))
    if n_correlated:
        n_latents = int(rng.integers(1, min(int(options["max_latents"]), n_correlated) + 1))
        latents = np.stack([_unit(rng, length, options) for _ in range(n_latents)])
        mixing = rng.standard_normal((n_correlated, n_latents))
        noise_level = log_uniform(rng, 0.01, 1.0, (n_correlated, 1))
        out[:n_correlated] = standardise(mixing @ latents + noise_level * rng.standard_normal((n_correlated, length)))
    for c in range(n_correlated, channels):
        out[c] = _unit(rng, length, options)
    out = out[rng.permutation(channels)]
    amplitude = float(log_uniform(rng, *options["amplitude_range"]))
    gains = amplitude * log_uniform(rng, 0.3, 3.0, (channels, 1))
    offsets = np.where(rng.random((channels, 1)) < options["offset_probability"],
                       gains * rng.uniform(-10, 10, (channels, 1)), 0.0)
    return (out * gains + offsets).astype(np.float32)


SPEC = GeneratorSpec(
    name="multichannel",
    description="C channels (option `channels`): some mixtures of shared latent sources through a random mixing "
    "matrix, the others independent; per-channel gains and offsets, any length and physical scale, unlabelled",
    sampling_rate=None,
    channels=None,
    unit="arbitrary",
    class_names=(),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
