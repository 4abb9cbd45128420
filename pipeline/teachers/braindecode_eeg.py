"""EEG foundation models from braindecode (BSD-3) as brain teachers: CBraMod, LaBraM, loaded with from_pretrained.

Why braindecode: it implements the brain foundation models the paper evaluates (CBraMod, LaBraM; also EEGPT, BIOT,
BENDR...) with Hugging Face Hub loading (`CBraMod.from_pretrained("braindecode/cbramod-pretrained")`). Loading goes
through a local directory (a hub id is fetched first: json + safetensors only, never pickles) and the class's own
from_pretrained; then every tensor but the task head (final_layer) must have come from the checkpoint with its
shape, so the weights hashed are the weights loaded and none is silently left random.

What the model sees: all channels of a series at once (sees_all_channels), at its native rate (the checkpoint's
sfreq, else 200 Hz for CBraMod and LaBraM; resampled or reinterpreted per rate_policy). Every channel is
standardised over the whole series (base.standardized) and scaled to `input_std` (0.2: the models were pre-trained on
EEG in units of 100 uV), so features do not depend on units. Tokens are the models' patches (200 samples = 1 s at
200 Hz); the model gives one vector per (channel, patch), pooled over channels (mean, or mean and std) so the
feature size never depends on the montage: (items, channels, T) -> (items, ceil(T / patch), D or 2D). Two token
layouts (`family`):
  - cbramod: forward(x, return_features=True)["features"] is (items, channels, patches, D) for any whole number of
    patches; a window is zero-padded to whole patches; windows of max_context_seconds (30 s), stitched.
  - labram: forward(x, return_features=True, ch_names=...)["features"] is (items, channels * patches, D), channel
    major, for exactly the checkpoint's n_times; shorter windows are zero-padded to it (padding is attended to) and
    the tokens past the window dropped. LaBraM needs channel names (its position embedding is per 10-20 electrode):
    `channel_names` gives a montage per channel count; a series without one is refused with an error naming it.
Layer: -1 (default) is what return_features gives (CBraMod: after proj_out, D = emb_dim; LaBraM: after the final
norm); i >= 0 is the output of transformer block i (CBraMod: encoder.layers[i]; LaBraM: blocks[i], CLS dropped).

torchaudio: braindecode (1.8.1) declares torchaudio and imports it when braindecode.models is imported, but no
PyPI torchaudio build loads beside torch 2.13 (2.11.1 is the newest; its library fails to load, and installed it
breaks `import transformers.audio_utils` too). When torchaudio does not import, braindecode.models is imported with
a placeholder torchaudio in sys.modules for the duration of that import only (a warning is logged): the models
that call torchaudio (e.g. EEGSimpleConv, BrainModule, filter-bank layers) raise ImportError when used; CBraMod and
LaBraM never call it. See the `braindecode` extra in pyproject.toml for installing braindecode without torchaudio.
"""

import contextlib
import importlib
import io
import logging
import math
import sys
import types

import numpy as np
import torch
from safetensors import safe_open

from pipeline.teachers.base import (
    WindowedTeacher, local_model_dir, resolve_device, safetensors_files, sha256_of_files, standardized,
)
from schemas.teachers import BraindecodeTeacher

log = logging.getLogger(__name__)

HEAD_PREFIXES = ("final_layer.",)  # braindecode's task head, not used for features
FAMILIES = {"cbramod": "cbramod", "labram": "labram"}  # lower-cased class name -> token layout
DEFAULT_NATIVE_RATE = 200.0  # CBraMod and LaBraM were pre-trained at 200 Hz
DEFAULT_MAX_CONTEXT_SECONDS = 30.0
TORCHAUDIO_MODULES = ("torchaudio", "torchaudio.functional", "torchaudio.transforms")


class _MissingTorchaudio(types.ModuleType):
    """Stands in for torchaudio while braindecode.models imports: every attribute is a class or function that
    raises ImportError when called, with the reason torchaudio did not load."""

    def __init__(self, name: str, reason: str):
        super().__init__(name)
        self.__path__ = []
        self._reason = reason

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        message = f"{self.__name__}.{attr} is unavailable: torchaudio did not load ({self._reason})"

        def unavailable(*args, **kwargs):
            raise ImportError(message)

        if attr[:1].isupper():  # classes may be subclassed at import time (braindecode subclasses Spectrogram)
            return type(attr, (torch.nn.Module,), {"__init__": unavailable})
        return unavailable


@contextlib.contextmanager
def _torchaudio_placeholder():
    """Within the block, `import torchaudio` gives placeholders if the real one does not load; restored after."""
    try:
        import torchaudio  # noqa: F401

        yield
        return
    except Exception as exc:  # ImportError when absent, OSError when its library does not match torch
        reason = f"{type(exc).__name__}: {exc}"
    log.warning("braindecode imports torchaudio, which does not load here (%s); importing braindecode.models with a "
                "placeholder: models that call torchaudio raise ImportError, CBraMod and LaBraM do not use it", reason)
    saved = {name: sys.modules.get(name) for name in TORCHAUDIO_MODULES}
    placeholders = {name: _MissingTorchaudio(name, reason) for name in TORCHAUDIO_MODULES}
    placeholders["torchaudio"].functional = placeholders["torchaudio.functional"]
    placeholders["torchaudio"].transforms = placeholders["torchaudio.transforms"]
    sys.modules.update(placeholders)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def model_class_of(teacher: str, model_class: str) -> type:
    """`Class` from braindecode.models, or `package.module:Class`."""
    if ":" in model_class:
        module_name, _, attr = model_class.partition(":")
        module = importlib.import_module(module_name)
    else:
        if "braindecode.models" not in sys.modules:
            try:
                with _torchaudio_placeholder():
                    importlib.import_module("braindecode.models")
            except ImportError as exc:
                raise ImportError(
                    f"teacher {teacher!r}: model_class {model_class!r} needs braindecode: pip install --no-deps "
                    f"braindecode==1.8.1 && pip install -e .[braindecode] ({exc})"
                ) from exc
        module, attr = sys.modules["braindecode.models"], model_class
    found = getattr(module, attr, None)
    if not isinstance(found, type) or not hasattr(found, "from_pretrained"):
        raise ValueError(f"teacher {teacher!r}: model_class {model_class!r} is not a class with from_pretrained in "
                         f"{module.__name__}")
    return found


class BraindecodeTeacherAdapter(WindowedTeacher):
    domain = "brain"
    sees_all_channels = True

    def __init__(self, name: str, spec: BraindecodeTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.family = spec.family or FAMILIES.get(spec.model_class.rpartition(":")[2].lower())
        if self.family is None:
            raise ValueError(f"teacher {name!r}: model_class {spec.model_class!r} has no known token layout; set "
                             f"family to one of {sorted(set(FAMILIES.values()))}, or write a plug-in adapter")
        cls = model_class_of(name, spec.model_class)
        self.model_dir = local_model_dir(name, spec.model_id, spec.revision, ["*.json", "*.safetensors"])
        self.weight_files = safetensors_files(name, self.model_dir)
        with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from ..."
            self.model = cls.from_pretrained(str(self.model_dir), strict=False)
        self._check_loaded()
        self.model.to(self.device).eval()

        self.native_rate = float(spec.native_rate or self._model_attr("sfreq") or DEFAULT_NATIVE_RATE)
        patch = self._model_attr("_patch_size") or self._model_attr("patch_size")
        if not patch:
            raise ValueError(f"teacher {name!r}: {cls.__name__} has no patch size (_patch_size or patch_size)")
        self.samples_per_token = int(patch)
        if self.family == "labram":
            n_times = self._model_attr("n_times")
            if not n_times:
                raise ValueError(f"teacher {name!r}: LaBraM-style models need n_times in the checkpoint's config")
            self.max_context = int(n_times) // self.samples_per_token * self.samples_per_token
            self.blocks = self.model.blocks
            self._check_montages()
        else:
            seconds = spec.max_context_seconds or DEFAULT_MAX_CONTEXT_SECONDS
            hop = self.samples_per_token
            self.max_context = max(1, int(seconds * self.native_rate) // hop) * hop
            self.blocks = self.model.encoder.layers
        if not -1 <= spec.layer < len(self.blocks):
            raise ValueError(f"teacher {name!r}: layer {spec.layer} out of range: -1 (returned features) or a block "
                             f"0..{len(self.blocks) - 1}")
        per_channel = self._per_channel_dim()
        self.feature_dim = per_channel * (2 if spec.channel_pool == "mean_std" else 1)

    def _check_loaded(self):
        """Every parameter and buffer but the task head (final_layer, which the features never use and whose shape
        depends on n_outputs/n_times) came from the checkpoint, with its shape: none is left at random init."""
        stored = {}
        for path in self.weight_files:
            with safe_open(path, "pt") as f:
                stored.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
        wrong = [key for key, value in self.model.state_dict().items()
                 if not key.startswith(HEAD_PREFIXES)
                 and not isinstance(value, torch.nn.parameter.UninitializedParameter)
                 and stored.get(key) != tuple(value.shape)]  # fmt: skip
        if wrong:
            model = type(self.model).__name__
            raise ValueError(f"teacher {self.name!r}: {self.weight_files[0]} does not hold {model}'s {len(wrong)} "
                             f"tensor(s) {wrong[:5]} (missing or of another shape)")

    def _model_attr(self, attr: str):
        """A model attribute, or None where braindecode's property raises because the value was never set."""
        try:
            return getattr(self.model, attr, None)
        except (ValueError, AttributeError):
            return None

    def _check_montages(self):
        """Every given montage has one name per channel and, for braindecode's LaBraM, only known electrodes."""
        known = getattr(sys.modules.get(type(self.model).__module__), "LABRAM_CHANNEL_ORDER", None)
        for count, names in self.spec.channel_names.items():
            if len(names) != count:
                raise ValueError(f"teacher {self.name!r}: channel_names[{count}] has {len(names)} names")
            unknown = [n for n in names if known is not None and n.upper() not in {k.upper() for k in known}]
            if unknown:
                model = type(self.model).__name__
                raise ValueError(f"teacher {self.name!r}: channel_names[{count}] has electrodes {model} does not "
                                 f"know: {unknown}")

    def _per_channel_dim(self) -> int:
        if self.family == "labram":
            return int(self.model.embed_dim)
        with torch.inference_mode():  # one patch of one channel: the size of the chosen layer's vectors
            dummy = np.zeros((1, 1, self.samples_per_token), dtype=np.float32)
            return int(self._channel_tokens(dummy).shape[-1])

    def normalize_series(self, values: np.ndarray) -> np.ndarray:
        return standardized(values) * np.float32(self.spec.input_std)

    def _channel_tokens(self, windows: np.ndarray) -> torch.Tensor:
        """(items, channels, T) -> (items, channels, patches, D) of the chosen layer, T padded to whole patches (or
        to n_times for LaBraM)."""
        items, channels, length = windows.shape
        hop = self.samples_per_token
        target = self.max_context if self.family == "labram" else -(-length // hop) * hop
        x = torch.nn.functional.pad(torch.from_numpy(windows).to(self.device), (0, target - length))
        patches = target // self.samples_per_token
        options = {"return_features": True}
        if self.family == "labram":
            names = self.spec.channel_names.get(channels)
            if names is None:
                raise ValueError(
                    f"teacher {self.name!r}: {type(self.model).__name__} needs channel names, and channel_names has no "
                    f"montage for {channels}-channel series (given for {sorted(self.spec.channel_names)}); add one, "
                    f"e.g. channel_names: {{{channels}: [C3, CZ, C4, ...]}}"
                )
            options["ch_names"] = names
        captured = []
        hook = None
        if self.spec.layer >= 0:
            hook = self.blocks[self.spec.layer].register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            features = self.model(x, **options)["features"]
        finally:
            if hook is not None:
                hook.remove()
        if self.spec.layer >= 0:
            features = captured[0]
            if self.family == "labram":
                features = features[:, 1:]  # drop CLS
        return features.reshape(items, channels, patches, -1)

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        n_tokens = math.ceil(windows.shape[-1] / self.samples_per_token)
        tokens = self._channel_tokens(windows)[:, :, :n_tokens].float()  # (items, channels, tokens, D)
        pooled = [tokens.mean(dim=1)]
        if self.spec.channel_pool == "mean_std":
            pooled.append(tokens.std(dim=1, unbiased=False))
        return torch.cat(pooled, dim=-1)  # (items, tokens, feature_dim)

    def describe(self) -> dict:
        try:
            import braindecode

            version = braindecode.__version__
        except ImportError:
            version = None
        return {
            "kind": "braindecode",
            "model_class": self.spec.model_class,
            "family": self.family,
            "model_id": self.spec.model_id,
            "revision": self.spec.revision,
            "weights_sha256": sha256_of_files(self.weight_files),
            "layer": self.spec.layer,
            "native_rate": self.native_rate,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "max_context": self.max_context,
            "channel_pool": self.spec.channel_pool,
            "input_std": self.spec.input_std,
            "packages": {"braindecode": version, "torch": torch.__version__},
        }
