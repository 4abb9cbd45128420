"""DVC stage `finetune`: the distilled student and a random-weight one fine-tuned end to end on every probe task."""

from pipeline.finetune import run_finetune
from schemas.params import load_params


def run(params_path: str = "params.yaml") -> dict:
    return run_finetune(load_params(params_path))
