"""TSMixup: random convex mixtures of series from the other synthetic families (Chronos' augmentation).

Ansari et al. 2024 mix k ~ U{1..K} series, each scaled by its mean absolute value, with Dirichlet weights. The
parts here are KernelSynth draws and classical shapes of the same length (never probe data: the probe sets are
separate generators and seeds, so nothing of theirs can enter a mixture).
"""

import numpy as np

from data_catalog.generators import SCALE_OPTIONS, GeneratorSpec, kernel_synth, physical_scale, random_length
from data_catalog.generators import standardise, synthetic_shapes

DEFAULT_OPTIONS = {
    "min_length": 64,
    "max_length": 16384,
    "max_components": 3,  # k ~ U{1..max_components}
    "dirichlet_alpha": 1.5,
    "kernel_synth_probability": 0.3,  # a part is a KernelSynth draw with this probability, else a shape
    "gp_points": 512,
    **SCALE_OPTIONS,
}


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One mixture (1, length) at a random physical scale; `label` unused."""
    length = random_length(rng, options)
    k = rng.integers(1, int(options["max_components"]) + 1)
    weights = rng.dirichlet(np.full(k, float(options["dirichlet_alpha"])))
    gp_options = {**kernel_synth.DEFAULT_OPTIONS, "gp_points": options["gp_points"]}
    mixture = np.zeros(length)
    for weight in weights:
        if rng.random() < options["kernel_synth_probability"]:
            part = kernel_synth.unit_series(rng, length, gp_options)
        else:
            part = synthetic_shapes.unit_series(rng, length)
        part = part - part.mean()
        mixture += weight * part / max(np.abs(part).mean(), 1e-12)  # mean-absolute scaling, as Chronos
    return physical_scale(rng, standardise(mixture)[None], options)


SPEC = GeneratorSpec(
    name="tsmixup",
    description="random convex mixtures (Dirichlet weights) of 1-3 KernelSynth and classical-shape series "
    "(Chronos' TSMixup), any length and physical scale, unlabelled",
    sampling_rate=None,
    channels=1,
    unit="arbitrary",
    class_names=(),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
