"""transformers time-series encoders as teachers: PatchTST, TimesFM and Chronos-style T5 encoders.

All three are rate-agnostic (native_rate None): they see steps (an unknown rate changes nothing), and every
channel on its own. Padding never changes a valid token: `encode_window` also takes per-item valid lengths
(windows zero-padded beyond them, as in a batch of unequal series) and gives each item's valid tokens as if it
were encoded alone. Per family:
  - PatchTST (model_type patchtst): one token per patch_stride steps, num_patches tokens per context_length
    window. A window is placed where the model's first patch starts. The model has no attention mask, and its
    scaler maps zero padding to (0 - loc) / scale (about -100 for a light curve at 1e4 e-/s), which every patch
    attended to. So: the rest of the context repeats the window's last value (edge padding, marked unobserved
    in past_observed_mask, which the scaler respects), so a partly filled last patch depends on the series
    alone; and patches past the window are masked as attention keys (a pre-hook on each self-attention passes
    the mask the model's attention accepts but its encoder never sends). Random input masking of pre-training
    checkpoints is switched off. Series are packed into the model's num_input_channels slots (the model treats
    channels independently unless channel_attention, which is refused).
  - TimesFM (model_type timesfm): a causal decoder over patches of patch_length steps (32), up to
    context_length steps (512). A window is zero-padded at the end to whole patches with the padding flag set;
    the model zeroes flagged values and masks padded patches as keys, and being causal, earlier tokens never see
    that padding. The model normalises by the mean/std of the first patch with at least 3 valid values (of the
    last patch when none has: so a series of 1 or 2 steps padded beside a longer one would take padding's
    statistics; this adapter only ever batches equal lengths). `timesfm_freq` is its frequency-class input.
  - Chronos-style (model_type t5): the series is mean-scaled (divided by the mean absolute value of its valid
    steps) and each value quantised into uniform bins between the low and high limits, giving token ids
    (Chronos' MeanScaleUniformBins); an EOS token follows the last valid step (then pad tokens, masked) and
    the T5 encoder gives one vector per step; `token_pool` steps (default 16) are averaged into one token.
    Bins and limits come from the checkpoint's `chronos_config` when it has one, else from the spec (defaults:
    Chronos-T5's -15..15, 2 special tokens, 512-step context, n_tokens = vocab size). Chronos-Bolt (patch
    inputs, custom modules) is not this family.
Scale: the models' own normalisations have absolute floors (PatchTST's std scaler adds 1e-5 to the variance,
its mean scaler clamps at 1e-10, TimesFM clamps sigma at 1e-6), which flatten series in small units (1e-21
strain). So every channel is rescaled over the whole series first, in float64 (base.py): standardised for models
that centre and scale themselves (PatchTST with std or no scaling, TimesFM: their floors then sit at a fixed
fraction of the series' own scale), peak-scaled for PatchTST's mean scaling (it must not be centred). Chronos'
mean scaling has no floor but zero (an all-zero series stays zero) and is computed here in float64. Features are
the same for x, 1e-21 * x and 1e6 * x; the absolute level is what the student's statistics compensation supplies.
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
            self.input_scaling = "peak" if config.scaling in ("mean", True) else "standard"
            patchify = self.model.patchifier
            self.samples_per_token = config.patch_stride
            self.max_context = patchify.num_patches * config.patch_stride
            self.first_patch_start = patchify.sequence_start
        elif self.family == "timesfm":
            self.model = AutoModel.from_pretrained(self.model_dir, **load)
            self.input_scaling = "standard"
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

    def encode_window(self, windows: np.ndarray, lengths: np.ndarray | None = None) -> torch.Tensor:
        """(items, 1, T) -> (items, ceil(T / samples_per_token), D). lengths: (items,) valid steps of each item
        (default T); what lies beyond them never changes a token within them (tokens past them are padding)."""
        x = windows[:, 0]  # (items, T)
        items, width = x.shape
        lengths = np.full(items, width) if lengths is None else np.asarray(lengths)
        if lengths.shape != (items,) or lengths.min() < 1 or lengths.max() > width:
            raise ValueError(f"teacher {self.name!r}: lengths must be {items} values in 1..{width}, got {lengths}")
        if self.family == "patchtst":
            return self._patchtst_states(x, lengths)
        if self.family == "timesfm":
            return self._timesfm_states(x, lengths)
        return self._chronos_states(x, lengths)

    def _patchtst_states(self, x: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        items, width = x.shape
        stride, slots, context = self.samples_per_token, self.config.num_input_channels, self.config.context_length
        groups = math.ceil(items / slots)
        # Each series starts where the first patch starts; every other position repeats its nearest valid value
        # (edge padding, unobserved), so a partly filled patch depends on the series alone.
        positions = np.arange(context) - self.first_patch_start  # (context,) step of the series at each slot
        source = np.clip(positions, 0, lengths[:, None] - 1)  # (items, context)
        filled = np.zeros((groups * slots, context), dtype=np.float32)
        filled[:items] = np.take_along_axis(x, source, axis=1)
        observed = np.zeros_like(filled)
        observed[:items] = (positions >= 0) & (positions < lengths[:, None])
        # (groups * slots, context) -> (groups, context, slots): unrelated series share a group's channel slots
        past_values = torch.from_numpy(filled).to(self.device).view(groups, slots, -1).transpose(1, 2)
        past_observed_mask = torch.from_numpy(observed).to(self.device).view(groups, slots, -1).transpose(1, 2)

        # Attention keys: [CLS], then the patches holding valid steps; unused slots keep all keys.
        n_patches = self.model.patchifier.num_patches
        valid_patches = np.full(groups * slots, n_patches)
        valid_patches[:items] = -(-lengths // stride)
        keep = torch.from_numpy(np.arange(n_patches)[None] < valid_patches[:, None]).to(self.device)
        if self.config.use_cls_token:
            keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
        keep = keep[:, None, None, :]  # (groups * slots, 1, 1, keys): one row per series, as the encoder flattens
        if self.model.config._attn_implementation == "eager":  # eager adds the mask; sdpa/flex take a boolean one
            mask = torch.zeros(keep.shape, device=self.device).masked_fill(~keep, torch.finfo(torch.float32).min)
        else:
            mask = keep

        def with_key_mask(module, args, kwargs):
            kwargs["attention_mask"] = mask
            return args, kwargs

        hooks = [layer.self_attn.register_forward_pre_hook(with_key_mask, with_kwargs=True)
                 for layer in self.model.encoder.layers]  # fmt: skip
        try:
            out = self.model(past_values=past_values, past_observed_mask=past_observed_mask,
                             output_hidden_states=True)  # fmt: skip
        finally:
            for hook in hooks:
                hook.remove()
        states = [*out.hidden_states, out.last_hidden_state]  # embeddings, blocks 1..L (groups, slots, P, D)
        hidden = states[self.spec.layer]
        if self.config.use_cls_token:
            hidden = hidden[:, :, 1:]
        hidden = hidden.reshape(groups * slots, hidden.shape[2], -1)  # (groups * slots, patches, D)
        return hidden[:items, : math.ceil(width / stride)]

    def _timesfm_states(self, x: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        items, width = x.shape
        patch = self.samples_per_token
        n_tokens = math.ceil(width / patch)
        values = np.zeros((items, n_tokens * patch), dtype=np.float32)
        values[:, :width] = x
        padding = (np.arange(n_tokens * patch)[None] >= lengths[:, None]).astype(np.float32)  # (items, steps)
        freq = torch.full((items, 1), self.spec.timesfm_freq, dtype=torch.long, device=self.device)
        out = self.model(past_values=torch.from_numpy(values).to(self.device),
                         past_values_padding=torch.from_numpy(padding).to(self.device), freq=freq,
                         output_hidden_states=True)  # fmt: skip
        return out.hidden_states[self.spec.layer]  # (items, n_tokens, D)

    def _chronos_states(self, x: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        items, width = x.shape
        valid = np.arange(width)[None] < lengths[:, None]  # (items, T)
        # Chronos' mean scaling over the valid steps, in float64 (no absolute floor; all zeros stay zeros)
        scale = np.where(valid, np.abs(x.astype(np.float64)), 0.0).sum(axis=1, keepdims=True) / lengths[:, None]
        scaled = torch.from_numpy((x / np.where(scale > 0, scale, 1.0)).astype(np.float32)).to(self.device)
        token_ids = torch.bucketize(scaled, self.bin_edges, right=True) + self.chronos["n_special_tokens"]
        token_ids = token_ids.clamp(0, self.chronos["n_tokens"] - 1)  # (items, T)
        positions = torch.arange(width + 1, device=self.device)[None]  # (1, T + 1): room for the EOS token
        ends = torch.from_numpy(lengths).to(self.device)[:, None]  # (items, 1)
        token_ids = torch.nn.functional.pad(token_ids, (0, 1))  # (items, T + 1)
        token_ids = torch.where(positions < ends, token_ids, self.chronos["pad_token_id"])
        mask = positions < ends
        if self.chronos["use_eos_token"]:  # right after each item's last valid step
            token_ids = torch.where(positions == ends, self.chronos["eos_token_id"], token_ids)
            mask = positions <= ends
        else:
            token_ids, mask = token_ids[:, :width], mask[:, :width]
        out = self.model(input_ids=token_ids, attention_mask=mask.long(), output_hidden_states=True)
        steps = out.hidden_states[self.spec.layer][:, :width]  # (items, T, D): one vector per step, EOS dropped
        valid_steps = torch.from_numpy(valid).to(self.device)
        return pool_steps(steps.float(), self.samples_per_token, valid_steps)  # (items, ceil(T / token_pool), D)

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
