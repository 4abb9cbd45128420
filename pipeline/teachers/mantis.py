"""Mantis (Feofanov et al. 2025, paris-noah/Mantis-8M, MIT) as a general time-series teacher.

Why our own code: the mantis-tsfm package (1.1.0) pins pandas < 3 (this project has pandas 3) and pulls datasets;
its network is small (8M parameters), so it is rebuilt here with the module names of mantis-tsfm's MantisV1
(tokgen_unit.*, transf_unit.* or the legacy vit_unit.*), and the published model.safetensors loads strictly.
config.json, when present, gives MantisV1's constructor arguments; the defaults are Mantis-8M's (seq_len 512, 32
patches, hidden 256, 6 blocks). MantisV2 (RoPE, RMSNorm) is not implemented.

The network: a token generator makes one token per patch of 16 steps from convolutions of the window and of its
first difference (each standardised over the window inside the model) plus multi-scale encodings of each patch's
mean and std; a pre-norm ViT with a CLS token and sinusoidal positions follows. Its own output is the CLS token;
this adapter takes the patch tokens of `layer` instead: (items, T) -> (items, ceil(T / 16), 256). Mantis needs
exactly seq_len steps: a shorter window is completed by repeating its last value (the model has no attention mask,
so those steps are seen; tokens past the window are dropped); longer series are cut into overlapping 512-step
windows and stitched. Every channel on its own, rate-agnostic. Each channel is standardised over the whole series
in float64 first (base.standardized): the patch statistics Mantis encodes are then relative to the series' own scale,
so features do not depend on units.
"""

import json
import math

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.teachers.base import (
    WindowedTeacher, local_model_dir, resolve_device, safetensors_files, sha256_of_files, standardized,
)
from schemas.teachers import MantisTeacher

# MantisV1's constructor defaults: the architecture of paris-noah/Mantis-8M.
MANTIS_DEFAULTS = {"seq_len": 512, "hidden_dim": 256, "num_patches": 32, "scalar_scales": None,
                   "hidden_dim_scalar_enc": 32, "epsilon_scalar_enc": 1.1, "transf_depth": 6, "transf_num_heads": 8,
                   "transf_mlp_dim": 512, "transf_dim_head": 128}  # fmt: skip
DEFAULT_SCALES = [1e-4, 1e-3, 1e-2, 1e-1, 1, 1e1, 1e2, 1e3, 1e4]


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sine/cosine table (stored in checkpoints too; this only sizes the buffer before loading)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


def _window_standardized(x: torch.Tensor) -> torch.Tensor:
    """(batch, 1, T) centred and divided by its (Bessel) std + 1e-5, as Mantis' ts_scaler."""
    return (x - x.mean(dim=2, keepdim=True)) / (x.std(dim=2, keepdim=True) + 1e-5)


class Convolution(nn.Module):
    def __init__(self, kernel_size: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv1d(1, out_channels, kernel_size=kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).transpose(1, 2)  # (batch, T, out_channels)


class LinearEncoder(nn.Module):
    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim)
        self.layer_norm = nn.LayerNorm(output_dim, eps=1e-15)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.linear(x))


class ScalarEncoder(nn.Module):
    def __init__(self, k: float, hidden_dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, hidden_dim))
        self.b = nn.Parameter(torch.zeros(1, hidden_dim))
        self.k = k
        self.layer_norm = nn.LayerNorm(hidden_dim, eps=1e-15)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x * self.w + self.k * self.b)


class MultiScaledScalarEncoder(nn.Module):
    """A scalar (batch, patches, 1) -> (batch, patches, hidden): encoders at scales 1e-4..1e4, weighted by how close
    the value's magnitude is to each scale."""

    def __init__(self, scales: list[float], hidden_dim: int, epsilon: float):
        super().__init__()
        self.register_buffer("scales", torch.tensor(scales))
        self.epsilon = epsilon
        self.encoders = nn.ModuleList(ScalarEncoder(k, hidden_dim) for k in scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = abs(1 / torch.log(torch.matmul(abs(x), 1 / self.scales.reshape(1, -1)) + self.epsilon))
        alpha = (alpha / alpha.sum(dim=-1, keepdim=True))[..., None]  # (batch, patches, scales, 1)
        encoded = torch.stack([encoder(x) for encoder in self.encoders], dim=-2)  # (batch, patches, scales, hidden)
        return (encoded * alpha).sum(dim=-2)


class TokenGeneratorUnit(nn.Module):
    """(batch, 1, seq_len) -> (batch, num_patches, hidden_dim)."""

    def __init__(self, hidden_dim, num_patches, patch_window_size, scalar_scales, hidden_dim_scalar_enc, epsilon):
        super().__init__()
        self.num_patches = num_patches
        kernel_size = patch_window_size + 1 if patch_window_size % 2 == 0 else patch_window_size
        self.convs = nn.ModuleList(Convolution(kernel_size, hidden_dim) for _ in range(2))  # diff, series
        self.layer_norms = nn.ModuleList(nn.LayerNorm(hidden_dim, eps=1e-5) for _ in range(2))
        scales = scalar_scales or DEFAULT_SCALES
        self.scalar_encoders = nn.ModuleList(
            MultiScaledScalarEncoder(scales, hidden_dim_scalar_enc, epsilon) for _ in range(2)  # mean, std
        )
        self.linear_encoder = LinearEncoder(2 * hidden_dim_scalar_enc + 2 * hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        patched = x.reshape(batch, self.num_patches, -1)  # (batch, patches, patch_window)
        statistics = [patched.mean(dim=-1, keepdim=True), patched.std(dim=-1, keepdim=True)]
        scalars = [encoder(stat) for encoder, stat in zip(self.scalar_encoders, statistics)]
        diff = nn.functional.pad(torch.diff(x, n=1, dim=2), (0, 1))
        pooled = []
        for conv, norm, series in zip(self.convs, self.layer_norms, (diff, x)):
            embedded = norm(conv(_window_standardized(series)))  # (batch, seq_len, hidden)
            pooled.append(embedded.reshape(batch, self.num_patches, -1, embedded.shape[-1]).mean(dim=2))
        return self.linear_encoder(torch.cat([*pooled, *scalars], dim=-1))


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden_dim, dim),
                                 nn.Dropout(0.0))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        projects = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0)) if projects else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = (t.view(batch, tokens, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        attention = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)  # (batch, heads, tokens, tokens)
        return self.to_out((attention @ v).transpose(1, 2).reshape(batch, tokens, -1))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head)), PreNorm(dim, FeedForward(dim, mlp_dim))])
            for _ in range(depth)
        )


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_positions(max_len, dim)[:, None])  # (max_len, 1, dim)


class TransformerUnit(nn.Module):
    """(batch, patches, dim) -> hidden states [(batch, 1 + patches, dim)] * (depth + 1), CLS first."""

    def __init__(self, dim: int, num_patches: int, depth: int, heads: int, mlp_dim: int, dim_head: int):
        super().__init__()
        self.pos_encoder = PositionalEncoding(dim, num_patches + 1)
        self.cls_token = nn.Parameter(torch.zeros(dim))
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        cls = self.cls_token.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.pos_encoder.pe[: x.shape[1], 0]
        states = [x]
        for attention, feed_forward in self.transformer.layers:
            x = attention(x) + x
            x = feed_forward(x) + x
            states.append(x)
        return states


class MantisV1(nn.Module):
    """mantis-tsfm's MantisV1 network (without its pre-training projector), same parameter names."""

    def __init__(self, config: dict):
        super().__init__()
        c = {**MANTIS_DEFAULTS, **{k: v for k, v in config.items() if k in MANTIS_DEFAULTS}}
        if c["seq_len"] % c["num_patches"]:
            raise ValueError(f"Mantis seq_len {c['seq_len']} is not a multiple of num_patches {c['num_patches']}")
        self.seq_len, self.num_patches, self.hidden_dim = c["seq_len"], c["num_patches"], c["hidden_dim"]
        self.tokgen_unit = TokenGeneratorUnit(c["hidden_dim"], c["num_patches"], c["seq_len"] // c["num_patches"],
                                              c["scalar_scales"], c["hidden_dim_scalar_enc"], c["epsilon_scalar_enc"])
        self.transf_unit = TransformerUnit(c["hidden_dim"], c["num_patches"], c["transf_depth"], c["transf_num_heads"],
                                           c["transf_mlp_dim"], c["transf_dim_head"])  # fmt: skip

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.transf_unit(self.tokgen_unit(x))  # hidden states, each (batch, 1 + patches, hidden)


class MantisTeacherAdapter(WindowedTeacher):
    domain = "timeseries"
    native_rate = None

    def __init__(self, name: str, spec: MantisTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.model_dir = local_model_dir(name, spec.model_id, spec.revision, ["*.json", "*.safetensors"])
        self.weight_files = safetensors_files(name, self.model_dir)
        config_path = self.model_dir / "config.json"
        self.config = json.loads(config_path.read_text()) if config_path.exists() else {}
        self.model = MantisV1(self.config)
        state = {}
        for path in self.weight_files:
            state.update(load_file(path))
        # Legacy checkpoints (Mantis8M) call the transformer vit_unit; the pre-training projector prj is not used.
        state = {("transf_unit." + k[len("vit_unit."):] if k.startswith("vit_unit.") else k): v
                 for k, v in state.items() if not k.startswith("prj.")}  # fmt: skip
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes differ: another architecture than the config says
            missing, unexpected = [str(exc).splitlines()[1].strip()], []
        if missing or unexpected:
            raise ValueError(f"teacher {name!r}: {self.weight_files[0]} does not match the Mantis architecture of "
                             f"{config_path if config_path.exists() else 'Mantis-8M defaults'} "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        self.model.to(self.device).eval()

        n_states = len(self.model.transf_unit.transformer.layers) + 1
        if not -n_states <= spec.layer < n_states:
            raise ValueError(f"teacher {name!r}: layer {spec.layer} out of range for {n_states} hidden states "
                             f"(token generator + {n_states - 1} blocks)")
        self.feature_dim = self.model.hidden_dim
        self.samples_per_token = self.model.seq_len // self.model.num_patches
        self.max_context = self.model.seq_len

    def normalize_series(self, values: np.ndarray) -> np.ndarray:
        return standardized(values)

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(windows).to(self.device)  # (items, 1, T), T <= seq_len
        length = x.shape[-1]
        x = torch.cat([x, x[..., -1:].expand(-1, -1, self.max_context - length)], dim=-1)  # edge-padded
        states = self.model(x)
        return states[self.spec.layer][:, 1 : 1 + math.ceil(length / self.samples_per_token)]  # patch tokens

    def describe(self) -> dict:
        return {
            "kind": "mantis",
            "model_id": self.spec.model_id,
            "revision": self.spec.revision,
            "weights_sha256": sha256_of_files(self.weight_files),
            "layer": self.spec.layer,
            "native_rate": None,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "max_context": self.max_context,
            "packages": {"torch": torch.__version__},
        }
