"""DVC stage `evaluate`: linear probes of the distilled student, baselines and teachers on every probe task."""

from pipeline.evaluate import evaluate
from schemas.params import load_params


def run(params_path: str = "params.yaml") -> dict:
    return evaluate(load_params(params_path))
