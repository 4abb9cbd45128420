"""Hub models that ship their own modeling code (Time-MoE and the like) as general time-series teachers.

Why a kind of its own: Time-MoE (Maple728/TimeMoE-50M, -200M; Apache-2.0) is not a transformers architecture. Its
repository carries configuration_time_moe.py and modeling_time_moe.py, and config.json's `auto_map` points the Auto
classes at them, so loading runs that code: only with `trust_remote_code: true` (off by default, refused with an
error naming the field when the checkpoint needs it, a warning logged when on; pin `revision` too). The code files
are fetched with the weights and hashed into the manifest, since they change the features as much as the weights.

What the model sees: rate-agnostic steps (native_rate None), every channel on its own. Each channel is standardised
over the whole series (base.standardized): Time-MoE's own recipe z-normalises the context, and units must not matter.
Inputs longer than `max_context` steps (2048, the paper's cut for Time-MoE) are cut into overlapping windows and
stitched. The model is causal-LM style: `forward(input_ids=(items, T) floats, output_hidden_states=True)` gives one
hidden state per step; `layer` indexes hidden_states (0: embeddings, i: after block i, -1: last) and `token_pool`
steps are averaged into one token: (items, T) -> (items, ceil(T / token_pool), hidden_size). Windows of a batch
always have equal lengths, so nothing is padded. Weights: safetensors only.

transformers 5: Time-MoE's code (written for transformers 4.40) imports
`transformers.modeling_attn_mask_utils._prepare_4d_causal_attention_mask`, a module transformers 5.0 to 5.24 lack
(5.25 brought it back, deprecated, with 4.x's function), so there it fails to import. With `transformers4_compat:
true`, where transformers lacks the module, it is provided (a re-implementation of the function's 4.x behaviour:
additive causal masks, optionally combined with a 2-D padding mask; no mask for a single step) in sys.modules while
the code loads, and removed after; where transformers has it, its own is used. Attention is then eager (Time-MoE has
only eager and flash-attention classes). Without the flag, the import error is reported naming the field. The code
paths this adapter runs (use_cache off, hidden states out) need nothing else from 4.x as far as Time-MoE's published
code shows; the real checkpoint is not tested here.
"""

import contextlib
import importlib.util
import inspect
import json
import logging
import sys
import types

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from pipeline.teachers.base import (
    WindowedTeacher, hub_model_files, pool_steps, resolve_device, sha256_of_files, standardized,
)
from schemas.teachers import HFRemoteCodeTeacher

log = logging.getLogger(__name__)

AUTO_CLASSES = {"causal_lm": (AutoModelForCausalLM, "AutoModelForCausalLM"), "model": (AutoModel, "AutoModel")}
MASK_UTILS = "transformers.modeling_attn_mask_utils"  # not in transformers 5.0 to 5.24


def _causal_4d_mask(batch: int, query: int, past: int, dtype, device, sliding_window: int | None) -> torch.Tensor:
    """(batch, 1, query, past + query) additive mask: 0 where a step may attend, dtype's min elsewhere (the future,
    and with sliding_window the keys more than sliding_window steps back), as transformers 4.x's to_causal_4d."""
    minimum = torch.finfo(dtype).min
    mask = torch.full((query, query), minimum, device=device)
    steps = torch.arange(query, device=device)
    mask.masked_fill_(steps < (steps + 1).view(query, 1), 0)
    mask = torch.cat([torch.zeros(query, past, device=device), mask], dim=-1).to(dtype)
    if sliding_window is not None:
        old = torch.tril(torch.ones_like(mask, dtype=torch.bool), diagonal=past - sliding_window - 1)
        mask.masked_fill_(old, minimum)
    return mask[None, None].expand(batch, 1, query, past + query)


def _prepare_4d_causal_attention_mask(attention_mask, input_shape, inputs_embeds, past_key_values_length,
                                      sliding_window=None):
    """transformers 4.x's function of that name: a 2-D padding mask (batch, keys) or None -> an additive causal
    (batch, 1, query, keys) mask; a 4-D 0/1 mask is inverted into an additive one. As in 4.x, no padding mask, one
    query step and no sliding window give None (that step may see every key), which code written for 4.x handles."""
    batch, query = input_shape[0], input_shape[-1]
    dtype, device = inputs_embeds.dtype, inputs_embeds.device
    minimum = torch.finfo(dtype).min
    if attention_mask is None and query == 1 and sliding_window is None:
        return None
    if attention_mask is not None and attention_mask.dim() == 4:
        inverted = 1.0 - attention_mask.to(dtype)
        return inverted.masked_fill(inverted.to(torch.bool), minimum)
    causal = _causal_4d_mask(batch, query, past_key_values_length, dtype, device, sliding_window)
    if attention_mask is None:
        return causal
    padding = attention_mask[:, None, None, :].expand(batch, 1, query, attention_mask.shape[-1]) == 0
    return causal.masked_fill(padding, minimum)


def _importable(name: str) -> bool:
    """None in sys.modules makes importing the name fail, as if it were not installed (how tests hide a module)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


@contextlib.contextmanager
def _transformers4_modules(enabled: bool):
    """While loading remote code: `transformers.modeling_attn_mask_utils` exists (if enabled and transformers lacks
    it); sys.modules as it was after (the loaded code keeps its reference to the function). Where transformers has
    the module (4.x, 5.25+), the code imports transformers' own, 4.x's function."""
    if not enabled or _importable(MASK_UTILS):
        yield
        return
    hidden = MASK_UTILS in sys.modules  # there as None (not importable): put None back after
    module = types.ModuleType(MASK_UTILS)
    module._prepare_4d_causal_attention_mask = _prepare_4d_causal_attention_mask
    sys.modules[MASK_UTILS] = module
    try:
        yield
    finally:
        if hidden:
            sys.modules[MASK_UTILS] = None
        else:
            sys.modules.pop(MASK_UTILS, None)


class HFRemoteCodeTeacherAdapter(WindowedTeacher):
    domain = "timeseries"
    native_rate = None

    def __init__(self, name: str, spec: HFRemoteCodeTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.model_dir, self.weight_files = hub_model_files(name, spec)  # *.py only with trust_remote_code
        stored = json.loads((self.model_dir / "config.json").read_text())
        auto_class, auto_name = AUTO_CLASSES[spec.auto_class]
        auto_map = stored.get("auto_map") or {}
        if auto_map and not spec.trust_remote_code:
            raise ValueError(
                f"teacher {name!r}: {spec.model_id!r} ships its own modeling code (config.json auto_map: "
                f"{sorted(auto_map)}); set trust_remote_code: true to run it (only for a checkpoint you trust, "
                "ideally with revision pinned)"
            )
        if auto_map and auto_name not in auto_map:
            raise ValueError(f"teacher {name!r}: auto_class {spec.auto_class!r} needs {auto_name} in config.json "
                             f"auto_map, which has {sorted(auto_map)}")
        self.code_files = sorted(self.model_dir.glob("*.py")) if spec.trust_remote_code else []

        load = {"trust_remote_code": spec.trust_remote_code}
        extra = {"attn_implementation": "eager"} if spec.transformers4_compat else {}
        try:
            with _transformers4_modules(spec.transformers4_compat):
                self.config = AutoConfig.from_pretrained(self.model_dir, **load)
                # float32 whatever the checkpoint's dtype (transformers 5 loads bf16 checkpoints as bf16 by
                # default, which float32 input cannot go through); bf16 is the autocast option's business.
                self.model = auto_class.from_pretrained(self.model_dir, config=self.config, use_safetensors=True,
                                                        dtype=torch.float32, **load, **extra)
        except ModuleNotFoundError as exc:
            if exc.name != MASK_UTILS:
                raise
            raise ImportError(f"teacher {name!r}: the code of {spec.model_id!r} was written for transformers 4 (it "
                              f"imports {MASK_UTILS}, which transformers {transformers.__version__} lacks); set "
                              "transformers4_compat: true") from exc
        self.model.to(self.device).eval()

        n_blocks = getattr(self.config, "num_hidden_layers", None)
        if n_blocks is not None and not -(n_blocks + 1) <= spec.layer < n_blocks + 1:
            raise ValueError(f"teacher {name!r}: layer {spec.layer} out of range for {n_blocks + 1} hidden states "
                             f"(embeddings + {n_blocks} blocks)")
        self.feature_dim = int(self.config.hidden_size)
        self.samples_per_token = spec.token_pool
        self.max_context = max(1, spec.max_context // spec.token_pool) * spec.token_pool
        # Ask for hidden states and switch off the KV cache where the forward takes those arguments.
        accepted = inspect.signature(self.model.forward).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        wanted = {"output_hidden_states": True, "use_cache": False, "return_dict": True}
        self.forward_options = {k: v for k, v in wanted.items() if takes_any or k in accepted}
        if spec.input_name not in accepted and not takes_any:
            raise ValueError(f"teacher {name!r}: input_name {spec.input_name!r} is not an argument of "
                             f"{type(self.model).__name__}.forward ({', '.join(accepted)})")

    def normalize_series(self, values: np.ndarray) -> np.ndarray:
        return standardized(values)

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(windows[:, 0]).to(self.device)  # (items, T)
        if self.spec.feature_axis:
            x = x[..., None]  # (items, T, 1)
        out = self.model(**{self.spec.input_name: x}, **self.forward_options)
        hidden_states = out.hidden_states if hasattr(out, "hidden_states") else out["hidden_states"]
        if hidden_states is None:
            raise RuntimeError(f"teacher {self.name!r}: {type(self.model).__name__} returned no hidden_states")
        steps = hidden_states[self.spec.layer]  # (items, T, D)
        if steps.shape[1] != x.shape[1]:
            raise RuntimeError(f"teacher {self.name!r}: layer {self.spec.layer} has {steps.shape[1]} positions for "
                               f"{x.shape[1]} steps; this kind needs one hidden state per step")
        return pool_steps(steps.float(), self.samples_per_token)  # (items, ceil(T / token_pool), D)

    def describe(self) -> dict:
        return {
            "kind": "hf_remote_code",
            "model_id": self.spec.model_id,
            "revision": self.spec.revision,
            "weights_sha256": sha256_of_files(self.weight_files),
            "code_sha256": sha256_of_files(self.code_files) if self.code_files else None,
            "model_class": type(self.model).__name__,
            "layer": self.spec.layer,
            "native_rate": None,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "max_context": self.max_context,
            "trust_remote_code": self.spec.trust_remote_code,
            "packages": {"transformers": transformers.__version__, "torch": torch.__version__},
        }
