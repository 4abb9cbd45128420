"""MOMENT (Goswami et al. 2024, AutonLab/MOMENT-1-small/-base/-large, MIT) as a general time-series teacher.

Why our own code: the momentfm package pins numpy==1.25.2 and transformers==4.33.3, which conflict with this
project (numpy 2, transformers 5). MOMENT's encoder is small enough to rebuild from its published files: config.json
(seq_len 512, patch_len 8, patch_stride_len 8, t5_config, ...) and model.safetensors, whose keys are those of
momentfm's MOMENT module: patch_embedding.* (a bias-free Linear from 8 steps to d_model, a learned mask embedding,
fixed sinusoidal positions), encoder.* (a transformers T5Stack: the T5 encoder of flan-t5), head.* (the
reconstruction head, not used). This module keeps those names, so the checkpoint loads strictly (only the head,
the unused token embedding and the stored positions are skipped).

The path is momentfm's `embed` without its final mean over patches: per window, RevIN-style standardisation over
the observed steps (eps 1e-5 on the std), patches of 8 steps, patch embedding, T5 encoder with patches past the
window masked as attention keys; one token per patch: (items, T) -> (items, ceil(T / 8), d_model). A window shorter
than seq_len (512) sits at the start of the context; its last partial patch is completed by repeating its last
value, the rest is masked (mask embedding, no attention to it), so tokens of a short series never see padding.
Longer series: overlapping 512-step windows, stitched. Every channel on its own, rate-agnostic. Each channel is first
standardised over the whole series in float64 (base.standardized), so features do not depend on units.
Layer: index into the T5 hidden states (0: patch embeddings, i: after block i, -1: after the final layer norm).
"""

import json
import math

import numpy as np
import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import T5Config, T5EncoderModel

from pipeline.teachers.base import (
    WindowedTeacher, local_model_dir, resolve_device, safetensors_files, sha256_of_files, standardized,
)
from schemas.teachers import MomentTeacher

REVIN_EPS = 1e-5  # momentfm's RevIN: std + eps
# Checkpoint entries this encoder-only path does not use: the reconstruction head, T5's token embedding (inputs are
# patch embeddings) and the stored sinusoidal table (recomputed, identical).
UNUSED_PREFIXES = ("head.", "encoder.embed_tokens.", "patch_embedding.position_embedding.")


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sine/cosine table, as momentfm's PositionalEmbedding builds it."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


class PatchEmbedding(nn.Module):
    """Patches (batch, patches, patch_len) -> (batch, patches, d_model); masked patches become the mask embedding."""

    def __init__(self, patch_len: int, d_model: int, bias: bool, positions: bool, max_patches: int):
        super().__init__()
        self.value_embedding = nn.Linear(patch_len, d_model, bias=bias)
        self.mask_embedding = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("positions", sinusoidal_positions(max_patches, d_model) if positions else None,
                             persistent=False)

    def forward(self, patches: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        keep = observed[..., None].to(patches.dtype)  # (batch, patches, 1)
        x = keep * self.value_embedding(patches) + (1 - keep) * self.mask_embedding
        if self.positions is not None:
            x = x + self.positions[: x.shape[1]]
        return x


class MomentEncoder(nn.Module):
    """momentfm's MOMENT minus its head, with the checkpoint's module names (patch_embedding, encoder, normalizer)."""

    def __init__(self, config: dict):
        super().__init__()
        t5_config = T5Config.from_dict(config["t5_config"])
        self.seq_len = int(config.get("seq_len", 512))
        self.patch_len = int(config.get("patch_len", 8))
        self.d_model = int(config.get("d_model") or t5_config.d_model)
        self.patch_embedding = PatchEmbedding(
            self.patch_len, self.d_model, bool(config.get("value_embedding_bias", False)),
            bool(config.get("add_positional_embedding", True)), self.seq_len // self.patch_len,
        )  # fmt: skip
        self.encoder = T5EncoderModel(t5_config).encoder  # T5Stack, keys encoder.block.*, encoder.final_layer_norm
        self.revin_affine = bool(config.get("revin_affine", False))
        if self.revin_affine:
            self.normalizer = nn.Module()
            self.normalizer.affine_weight = nn.Parameter(torch.ones(1, 1, 1))
            self.normalizer.affine_bias = nn.Parameter(torch.zeros(1, 1, 1))

    def forward(self, x: torch.Tensor, length: int) -> tuple[torch.Tensor, ...]:
        """x (batch, seq_len) with the window in its first `length` steps -> hidden states, each (batch, patches, D)."""
        batch = x.shape[0]
        n_patches = self.seq_len // self.patch_len
        valid = x[:, :length]
        mean = valid.mean(dim=1, keepdim=True)
        std = valid.var(dim=1, unbiased=False, keepdim=True).sqrt() + REVIN_EPS  # RevIN: no Bessel correction
        x = (x - mean) / std
        if self.revin_affine:
            x = x * self.normalizer.affine_weight[0, 0] + self.normalizer.affine_bias[0, 0]
        used = math.ceil(length / self.patch_len)
        x = x.clone()
        x[:, length : used * self.patch_len] = x[:, length - 1 : length]  # complete the last partial patch
        x[:, used * self.patch_len :] = 0
        observed = torch.zeros(batch, n_patches, dtype=torch.long, device=x.device)
        observed[:, :used] = 1
        embedded = self.patch_embedding(x.view(batch, n_patches, self.patch_len), observed)  # (batch, P, D)
        out = self.encoder(inputs_embeds=embedded, attention_mask=observed, output_hidden_states=True)
        return out.hidden_states  # embeddings, after block 1 .. L (the last after the final layer norm)


def moment_config(teacher: str, model_dir) -> dict:
    """MOMENT's config.json (flat, or nested under "config" as some hub mixin versions save it), checked."""
    path = model_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"teacher {teacher!r}: no config.json in {model_dir} (MOMENT's carries t5_config)")
    config = json.loads(path.read_text())
    config = config.get("config", config) if "t5_config" not in config else config
    if not isinstance(config.get("t5_config"), dict):
        raise ValueError(f"teacher {teacher!r}: {path} has no t5_config; is this a MOMENT checkpoint "
                         "(AutonLab/MOMENT-1-*)?")
    if config.get("transformer_type", "encoder_only") != "encoder_only":
        raise ValueError(f"teacher {teacher!r}: transformer_type {config['transformer_type']!r}; only MOMENT's "
                         "encoder_only checkpoints are supported")
    if config.get("patch_stride_len", config.get("patch_len", 8)) != config.get("patch_len", 8):
        raise ValueError(f"teacher {teacher!r}: patch_stride_len differs from patch_len (overlapping patches)")
    return config


class MomentTeacherAdapter(WindowedTeacher):
    domain = "timeseries"
    native_rate = None

    def __init__(self, name: str, spec: MomentTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.model_dir = local_model_dir(name, spec.model_id, spec.revision, ["*.json", "*.safetensors"])
        self.weight_files = safetensors_files(name, self.model_dir)
        self.config = moment_config(name, self.model_dir)
        self.model = MomentEncoder(self.config)
        state = {}
        for path in self.weight_files:
            state.update(load_file(path))
        state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes differ from what t5_config says
            missing, unexpected = [str(exc).splitlines()[1].strip()], []
        missing = [key for key in missing if not key.startswith(UNUSED_PREFIXES)]
        if missing or unexpected:
            raise ValueError(f"teacher {name!r}: {self.weight_files[0]} does not match MOMENT's encoder "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        self.model.to(self.device).eval()

        n_states = len(self.model.encoder.block) + 1
        if not -n_states <= spec.layer < n_states:
            raise ValueError(f"teacher {name!r}: layer {spec.layer} out of range for {n_states} hidden states "
                             f"(patch embeddings + {n_states - 1} blocks)")
        self.feature_dim = self.model.d_model
        self.samples_per_token = self.model.patch_len
        self.max_context = self.model.seq_len // self.model.patch_len * self.model.patch_len

    def normalize_series(self, values: np.ndarray) -> np.ndarray:
        return standardized(values)

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(windows[:, 0]).to(self.device)  # (items, T), T <= seq_len
        items, length = x.shape
        context = torch.zeros(items, self.model.seq_len, device=self.device)
        context[:, :length] = x
        states = self.model(context, length)
        return states[self.spec.layer][:, : math.ceil(length / self.samples_per_token)]  # (items, tokens, D)

    def describe(self) -> dict:
        return {
            "kind": "moment",
            "model_id": self.spec.model_id,
            "revision": self.spec.revision,
            "weights_sha256": sha256_of_files(self.weight_files),
            "layer": self.spec.layer,
            "native_rate": None,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "max_context": self.max_context,
            "packages": {"transformers": transformers.__version__, "torch": torch.__version__},
        }
