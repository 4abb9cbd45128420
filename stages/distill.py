"""DVC stage `distill`: train the STEP student from the teachers' feature stores alone."""

from pipeline.distill.train import distill
from schemas.params import load_params


def run(params_path: str = "params.yaml", resume: bool = False, device: str | None = None,
        max_steps: int | None = None) -> dict:
    return distill(load_params(params_path), resume=resume, device=device, max_steps=max_steps)
