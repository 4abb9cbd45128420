"""fracast (Apache-2.0, the `fracast` wheel) as a general time-series teacher: its core's per-step features.

Fracast-0 is a small (85k parameters) forecasting foundation model: a causal, dilated depthwise-convolution core
(one shared block applied at dilations 1, 2, ..., 512) over a 2048-step context, plus periodogram phase
features, then a quantile head we do not use. Its core maps (items, 1, 2048) values to (items, 2048, 64)
features, one vector per step; `token_pool` consecutive steps are averaged into one token (default 16 steps).

Rate: none. Like every general time-series model it sees steps, not seconds (native_rate None), so an unknown
rate (None) changes nothing but the token_rate's unit (tokens per sample).
Input normalisation: the model's own, min-max scaling of each window to [0, 1] (as its forecasting path does;
FINDINGS: its features were clearly more informative with that than with z-scoring), computed in float64. Its
forecasting path floors the span at an absolute 1e-5, which flattens 1e-21 strain to a constant; here the floor
is relative, RELATIVE_FLOOR times the window's largest |value| (base.py), so the features are the same for x,
1e-21 * x and 1e6 * x, and a constant or all-zero window still maps to zeros. The absolute level is what the
student's statistics compensation supplies.
Short inputs: the window sits at the end of the 2048-step context with the steps before it marked invalid
(the model's own padding mechanism, as in its forecasting path); the final, partial token averages the steps it
has. Long inputs: decimated by ceil(length / max_steps) to fit one context (default; the paper cuts Time-MoE's
input to 2048 steps, we keep the whole series at a coarser step), or with max_steps None, windows of 2048 steps
stitched (see base.py).
Layer: -1 is the core's final RMS-normalised output; i >= 0 the output of dilation stage i (read by a forward
hook on the shared block, which runs once per stage).
Weights: safetensors only (`model.int8.safetensors` + manifest for "w8", `model.safetensors` for "fp32").
"""

import importlib.metadata
import importlib.resources
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.teachers.base import (
    RELATIVE_FLOOR,
    RatePlan,
    WindowedTeacher,
    local_model_dir,
    pool_steps,
    resample,
    resolve_device,
    sha256_of_files,
)
from schemas.teachers import FracastTeacher

RELEASE_FILES = {"w8": ["model.int8.safetensors", "w8_manifest.json"], "fp32": ["model.safetensors"]}


def min_max_scaled(x: np.ndarray) -> np.ndarray:
    """(items, T) -> (items, T) float32 in [0, 1], fracast's scaling with a span floor relative to the window's
    largest |value| (float64): the same output for any positive rescaling; a flat window gives zeros."""
    x = x.astype(np.float64)
    low, high = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)  # (items, 1)
    span = np.maximum(high - low, RELATIVE_FLOOR * np.maximum(np.abs(low), np.abs(high)))
    return ((x - low) / np.where(span > 0, span, 1.0)).astype(np.float32)


class FracastTeacherAdapter(WindowedTeacher):
    domain = "timeseries"
    native_rate = None

    def __init__(self, name: str, spec: FracastTeacher):
        super().__init__(name, spec)
        from fracast.inference import load_fracast

        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        if spec.model_id is None:
            self.model_dir = Path(str(importlib.resources.files("fracast") / "weights"))
        else:
            patterns = ["config.json", *RELEASE_FILES[spec.weights]]
            self.model_dir = local_model_dir(name, spec.model_id, spec.revision, patterns)
        self.core, _ = load_fracast(self.model_dir, weights=spec.weights, device=self.device)
        self.context = int(self.core.W)
        self.feature_dim = int(self.core.d)
        if spec.token_pool > self.context:
            raise ValueError(f"teacher {name!r}: token_pool {spec.token_pool} exceeds the context {self.context}")
        self.samples_per_token = spec.token_pool
        self.max_context = self.context // spec.token_pool * spec.token_pool
        self.n_stages = len(self.core.dilations())
        if spec.layer >= self.n_stages:
            raise ValueError(f"teacher {name!r}: layer {spec.layer} out of range; the core has "
                             f"{self.n_stages} stages (0..{self.n_stages - 1}) and -1 for its final output")

    def decimation(self, length: int) -> int:
        """Integer factor that brings `length` steps within max_steps (1: no decimation)."""
        if self.spec.max_steps is None:
            return 1
        return max(1, -(-length // self.spec.max_steps))

    def num_tokens(self, length: int, sampling_rate: float | None) -> int:
        return super().num_tokens(-(-length // self.decimation(length)), sampling_rate)

    def token_rate(self, sampling_rate: float | None, length: int | None = None) -> float:
        return super().token_rate(sampling_rate) / (1 if length is None else self.decimation(length))

    def encode(self, values: np.ndarray, sampling_rate: float | None) -> np.ndarray:
        factor = self.decimation(np.shape(values)[-1])
        if factor > 1:  # anti-aliased polyphase decimation, ceil(length / factor) steps
            values = resample(self._checked(values), RatePlan("resample", 1, factor))
        return super().encode(values, sampling_rate)

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(min_max_scaled(windows[:, 0])).to(self.device)  # (items, T) in [0, 1]
        items, length = x.shape
        values = torch.zeros(items, 1, self.context, device=self.device)  # (items, 1, 2048)
        values[:, 0, self.context - length :] = x  # the window ends where the context ends
        valid = torch.zeros(items, 1, self.context, dtype=torch.bool, device=self.device)
        valid[:, 0, self.context - length :] = True

        steps = self._core_features(values, valid)[:, self.context - length :]  # (items, T, 64)
        return pool_steps(steps.float(), self.spec.token_pool)  # (items, ceil(T / token_pool), 64)

    def _core_features(self, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(items, 1, 2048) scaled values and validity -> (items, 2048, 64) features of the chosen layer."""
        coverage = valid.float()
        if self.spec.layer == -1:
            return self.core(values, valid, coverage)
        stage_outputs = []
        blocks = [self.core.block] if self.core.share_stages else list(self.core.blocks)
        hooks = [b.register_forward_hook(lambda module, args, out: stage_outputs.append(out)) for b in blocks]
        try:
            self.core(values, valid, coverage)
        finally:
            for hook in hooks:
                hook.remove()
        return stage_outputs[self.spec.layer]

    def describe(self) -> dict:
        files = [self.model_dir / f for f in RELEASE_FILES[self.spec.weights]]
        config = json.loads((self.model_dir / "config.json").read_text())
        version = importlib.metadata.version("fracast")
        return {
            "kind": "fracast",
            "model_id": self.spec.model_id or "fracast:bundled",
            "revision": self.spec.revision or version,
            "weights_sha256": sha256_of_files(files),
            "layer": self.spec.layer,
            "native_rate": None,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "context": self.context,
            "weights": self.spec.weights,
            "model_family": config["model"].get("family"),
            "packages": {"fracast": version, "torch": torch.__version__},
        }
