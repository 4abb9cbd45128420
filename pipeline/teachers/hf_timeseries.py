"""transformers time-series encoders as teachers: PatchTST, TimesFM and Chronos-style T5 encoders.

All three are rate-agnostic (native_rate None): they see steps, and every channel on its own. Per family:
  - PatchTST (model_type patchtst): one token per patch_stride steps, num_patches tokens per context_length
    window. A window is placed where the model's first patch starts; the rest of the context is zeros marked
    unobserved (past_observed_mask), which the model's own scaler (std or mean) ignores. Random input masking
    of pre-training checkpoints is switched off. Series are packed into the model's num_input_channels slots
    (the model treats channels independently unless channel_attention, which is refused).
  - TimesFM (model_type timesfm): a causal decoder over patches of patch_length steps (32), up to
    context_length steps (512). A window is zero-padded at the end to whole patches with the padding flag set;
    being causal, earlier tokens never see that padding. The model normalises by the first patch's mean/std.
    `timesfm_freq` is its frequency-class input.
  - Chronos-style (model_type t5): the series is mean-scaled (divided by the mean absolute value) and each
    value quantised into uniform bins between the low and high limits, giving token ids (Chronos'
    MeanScaleUniformBins); an EOS token is appended and the T5 encoder gives one vector per step;
    `token_pool` steps (default 16) are averaged into one token. Bins and limits come from the checkpoint's
    `chronos_config` when it has one, else from the spec (defaults: Chronos-T5's -15..15, 2 special tokens,
    512-step context, n_tokens = vocab size). Chronos-Bolt (patch inputs, custom modules) is not this family.
Layer: index into the encoder's hidden states (0: embeddings, i: after block i; default -1, the last).
Weights: safetensors only; hub ids are fetched (json + safetensors files, plus *.py with trust_remote_code).
"""

import math

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModel, T5EncoderModel

from pipeline.teachers.base import (
    WindowedTeacher,
    hub_model_files,
    pool_steps,
    resolve_device,
    sha256_of_files,
)
from schemas.teachers import HFTimeSeriesTeacher


# Chronos-T5 defaults (amazon/chronos-t5-*), used when the checkpoint carries no chronos_config.
CHRONOS_DEFAULTS = {"low_limit": -15.0, "high_limit": 15.0, "n_special_tokens": 2, "context_length": 512,
                    "pad_token_id": 0, "eos_token_id": 1, "use_eos_token": True}  # fmt: skip
DEFAULT_CHRONOS_POOL = 16


class HFTimeSeriesTeacherAdapter(WindowedTeacher):
    domain = "timeseries"
    native_rate = None

    def __init__(self, name: str, spec: HFTimeSeriesTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.model_dir, self.weight_files = hub_model_files(name, spec)
        load = {"use_safetensors": True, "trust_remote_code": spec.trust_remote_code}
        config = AutoConfig.from_pretrained(self.model_dir, trust_remote_code=spec.trust_remote_code)
        self.family = {"patchtst": "patchtst", "timesfm": "timesfm", "t5": "chronos_t5"}.get(config.model_type)
        if self.family is None:
            raise ValueError(
                f"teacher {name!r}: model_type {config.model_type!r} of {spec.model_id!r} is not supported "
                "(patchtst, timesfm, t5 for Chronos-style); write a plug-in adapter for other architectures"
            )
        if spec.token_pool is not None and self.family != "chronos_t5":
            raise ValueError(f"teacher {name!r}: token_pool applies to Chronos-style (per-step) models only; "
                             f"{config.model_type} already gives one token per patch")

        if self.family == "patchtst":
            if config.channel_attention:
                raise ValueError(f"teacher {name!r}: PatchTST with channel_attention mixes channels; this adapter "
                                 "feeds unrelated series through the channel slots")
            self.model = AutoModel.from_pretrained(self.model_dir, do_mask_input=False, **load)
            patchify = self.model.patchifier
            self.samples_per_token = config.patch_stride
            self.max_context = patchify.num_patches * config.patch_stride
            self.first_patch_start = patchify.sequence_start
        elif self.family == "timesfm":
            self.model = AutoModel.from_pretrained(self.model_dir, **load)
            self.samples_per_token = config.patch_length
            self.max_context = config.context_length // config.patch_length * config.patch_length
        else:
            self.model = T5EncoderModel.from_pretrained(self.model_dir, **load)
            self.chronos = self._chronos_settings(config)
            pool = spec.token_pool or DEFAULT_CHRONOS_POOL
            self.samples_per_token = pool
            self.max_context = max(1, self.chronos["context_length"] // pool) * pool
            centres = torch.linspace(self.chronos["low_limit"], self.chronos["high_limit"],
                                     self.chronos["n_tokens"] - self.chronos["n_special_tokens"] - 1)
            self.bin_edges = torch.cat(
                [torch.tensor([-1e20]), (centres[1:] + centres[:-1]) / 2, torch.tensor([1e20])]
            ).to(self.device)

        self.config = config
        n_states = config.num_hidden_layers + 1
        if not -n_states <= spec.layer < n_states:
            raise ValueError(f"teacher {name!r}: layer {spec.layer} out of range for {n_states} hidden states "
                             f"(embeddings + {config.num_hidden_layers} blocks)")
        self.feature_dim = int(config.hidden_size)
        self.model.to(self.device).eval()

    def _chronos_settings(self, config) -> dict:
        """Chronos tokeniser settings: spec fields, else the checkpoint's chronos_config, else Chronos-T5's."""
        stored = getattr(config, "chronos_config", None) or {}
        settings = {key: stored.get(key, default) for key, default in CHRONOS_DEFAULTS.items()}
        settings["n_tokens"] = int(stored.get("n_tokens", config.vocab_size))
        overrides = {"low_limit": self.spec.chronos_low_limit, "high_limit": self.spec.chronos_high_limit,
                     "n_special_tokens": self.spec.chronos_special_tokens,
                     "context_length": self.spec.chronos_context_length}  # fmt: skip
        settings.update({key: value for key, value in overrides.items() if value is not None})
        if settings["n_tokens"] - settings["n_special_tokens"] - 1 < 2:
            raise ValueError(f"teacher {self.name!r}: {settings['n_tokens']} tokens leave fewer than 2 bins")
        return settings

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(windows[:, 0]).to(self.device)  # (items, T)
        if self.family == "patchtst":
            return self._patchtst_states(x)
        if self.family == "timesfm":
            return self._timesfm_states(x)
        return self._chronos_states(x)

    def _patchtst_states(self, x: torch.Tensor) -> torch.Tensor:
        items, length = x.shape
        n_tokens = math.ceil(length / self.samples_per_token)
        slots = self.config.num_input_channels
        groups = math.ceil(items / slots)
        context = torch.zeros(groups * slots, self.config.context_length, device=self.device)
        observed = torch.zeros_like(context)
        start = self.first_patch_start
        context[:items, start : start + length] = x
        observed[:items, start : start + length] = 1.0
        # (groups * slots, context) -> (groups, context, slots): unrelated series share a group's channel slots
        past_values = context.view(groups, slots, -1).transpose(1, 2)
        past_observed_mask = observed.view(groups, slots, -1).transpose(1, 2)
        out = self.model(past_values=past_values, past_observed_mask=past_observed_mask, output_hidden_states=True)
        states = [*out.hidden_states, out.last_hidden_state]  # embeddings, blocks 1..L (groups, slots, P, D)
        hidden = states[self.spec.layer]
        if self.config.use_cls_token:
            hidden = hidden[:, :, 1:]
        hidden = hidden.reshape(groups * slots, hidden.shape[2], -1)  # (groups * slots, patches, D)
        return hidden[:items, :n_tokens]

    def _timesfm_states(self, x: torch.Tensor) -> torch.Tensor:
        items, length = x.shape
        patch = self.samples_per_token
        n_tokens = math.ceil(length / patch)
        values = torch.nn.functional.pad(x, (0, n_tokens * patch - length))  # (items, n_tokens * patch)
        padding = torch.zeros_like(values)
        padding[:, length:] = 1.0
        freq = torch.full((items, 1), self.spec.timesfm_freq, dtype=torch.long, device=self.device)
        out = self.model(past_values=values, past_values_padding=padding, freq=freq, output_hidden_states=True)
        return out.hidden_states[self.spec.layer]  # (items, n_tokens, D)

    def _chronos_states(self, x: torch.Tensor) -> torch.Tensor:
        items, length = x.shape
        scale = x.abs().mean(dim=1, keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        token_ids = torch.bucketize(x / scale, self.bin_edges, right=True) + self.chronos["n_special_tokens"]
        token_ids = token_ids.clamp(0, self.chronos["n_tokens"] - 1)  # (items, T)
        if self.chronos["use_eos_token"]:
            eos = torch.full((items, 1), self.chronos["eos_token_id"], dtype=token_ids.dtype, device=self.device)
            token_ids = torch.cat([token_ids, eos], dim=1)  # (items, T + 1)
        mask = torch.ones_like(token_ids)
        out = self.model(input_ids=token_ids, attention_mask=mask, output_hidden_states=True)
        steps = out.hidden_states[self.spec.layer][:, :length]  # (items, T, D): one vector per step, EOS dropped
        return pool_steps(steps.float(), self.samples_per_token)  # (items, ceil(T / token_pool), D)

    def describe(self) -> dict:
        described = {
            "kind": "hf_timeseries",
            "model_id": self.spec.model_id,
            "revision": self.spec.revision,
            "weights_sha256": sha256_of_files(self.weight_files),
            "layer": self.spec.layer,
            "native_rate": None,
            "feature_dim": self.feature_dim,
            "family": self.family,
            "token_hop_samples": self.samples_per_token,
            "trust_remote_code": self.spec.trust_remote_code,
            "packages": {"transformers": transformers.__version__, "torch": torch.__version__},
        }
        if self.family == "chronos_t5":
            described["chronos"] = self.chronos
        return described
