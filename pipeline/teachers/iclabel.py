"""ICLabel (BSD-3, the `mne-icalabel` wheel) as a brain teacher: its PSD and autocorrelation branches per window.

ICLabel classifies EEG independent components (brain, muscle, eye, heart, line noise, channel noise, other) from
three inputs: a 32 x 32 scalp topography, the component's power spectrum (100 bins, 1-100 Hz, in dB, divided by
its largest |value|) and its autocorrelation (100 lags, 10 ms to 1 s). A small CNN reads each (three convolutions
per branch), and one 4 x 4 convolution over the concatenated branch outputs gives the seven class logits.

What it gets here, per channel and per token window (the plain statement the issue asks for):
  - the window: `window_seconds` (default 4 s) at the nominal rate `native_rate` (default 256 Hz), centred on
    the token's cell, tokens every half window (default 2 s, 512 samples), the series mirrored beyond its ends,
    as the spectral teacher does. Series within a factor 4 of 256 Hz are resampled; others, and series of
    unknown rate, are taken as 256 Hz (so "Hz" become relative frequencies);
  - each channel is treated as one "component activation": centred before any resampling (crepe.centred),
    standardised over the whole series (float64; a flat channel becomes zeros) and scaled to `input_std`
    (default 10, as if microvolts: ICA activations in mne-icalabel are unmixed data in uV), which also makes the
    features the same for x, 1e-21 * x and 1e6 * x;
  - PSD: ICLabel's eeg_rpsd on the window (1-s Hamming segments at 50 % overlap, median over segments, 20 log10,
    bins 1..100 Hz, its 50/60 Hz notch repair, divided by the largest |value|), powers floored at 120 dB below
    the channel's average power so a flat window stays finite;
  - autocorrelation: ICLabel's eeg_autocorr (the whole window) for windows up to 5 s, eeg_autocorr_welch
    (3-s segments) for longer ones, as mne-icalabel picks them for a raw recording of that length; lags 0..1 s
    normalised by lag 0, resampled to 100 per second; both inputs scaled by 0.99 as ICLabel does;
  - topography: zeros. A series carries no montage; the image branch then adds a constant (computed once,
    at load).
Features per channel (207): the PSD branch output (100), the autocorrelation branch output (100) and the seven
class logits; channels reduced by mean and standard deviation across channels (414), as spectral does.

Weights: `mne_icalabel/iclabel/network/assets/ICLabelNet.pt` from the installed wheel (found without importing the
package, whose __init__ imports mne), read with torch.load(weights_only=True). The network is our module below with
upstream's parameter names (the file also stores each layer a second time under its nn.Sequential alias; those
duplicates are checked equal and dropped). Tests check it against mne-icalabel's own torch module and features.
"""

import importlib.metadata
import math

import numpy as np
import scipy.signal
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from pipeline.teachers.base import WindowedTeacher, mean_and_std_over_channels, resolve_device, sha256_of_files
from pipeline.teachers.crepe import centred, standardized_or_flat, wheel_file
from schemas.teachers import ICLabelTeacher

WEIGHTS = "iclabel/network/assets/ICLabelNet.pt"
N_BINS = 100  # PSD bins (1..100 Hz) and autocorrelation lags (10 ms..1 s)
N_CLASSES = 7  # brain, muscle, eye, heart, line noise, channel noise, other
FEATURES_PER_CHANNEL = 2 * N_BINS + N_CLASSES
POWER_FLOOR = 1e-12  # relative to the channel's average power (input_std ** 2): 120 dB below it
MAX_CONTEXT_TOKENS = 4096
TOKENS_PER_FORWARD = 4096  # (channel, token) pairs per network call


def next_power_of_2(n: int) -> int:
    return 1 if n == 0 else 2 ** (n - 1).bit_length()


def rpsd(windows: np.ndarray, rate: int, floor: float) -> np.ndarray:
    """(n, W) windows -> (n, 100) ICLabel PSD feature (mne_icalabel.iclabel.features._eeg_rpsd, one component per
    window) before its 0.99 scaling; median powers below `floor` (in the windows' units squared) are raised to it."""
    n, length = windows.shape
    nyquist = rate // 2
    n_freqs = min(nyquist, N_BINS)
    n_points = min(length, rate)  # 1-s segments
    cutoff = length // n_points * n_points
    starts = np.ceil(np.arange(0, cutoff - n_points + n_points / 2, n_points / 2)).astype(int)  # 50 % overlap
    hamming = np.hamming(n_points)
    segments = np.stack([windows[:, s : s + n_points] for s in starts], axis=1) * hamming  # (n, segs, n_points)
    power = np.abs(np.fft.fft(segments, n_points, axis=-1)) ** 2  # (n, segs, n_points)
    power = power[..., 1 : n_freqs + 1] * 2 / (rate * np.sum(hamming**2))  # (n, segs, n_freqs)
    if n_freqs == nyquist:
        power[..., -1] /= 2
    psd = 20 * np.log10(np.maximum(np.median(power, axis=1), floor))  # (n, n_freqs) in dB; floored
    if n_freqs < N_BINS:  # extrapolate with the last bin, as ICLabel does below 200 Hz
        psd = np.concatenate([psd, np.repeat(psd[:, -1:], N_BINS - n_freqs, axis=1)], axis=1)
    for line in (49, 59):  # undo a notch filter at 50 / 60 Hz (0-based bins)
        notched = np.all(psd[:, [line - 1, line + 1]] - psd[:, [line]] > 5, axis=1)
        psd[notched, line] = psd[notched][:, [line - 1, line + 1]].mean(axis=1)
    peak = np.abs(psd).max(axis=1, keepdims=True)
    return psd / np.where(peak > 0, peak, 1.0)


def resample_lags(ac: np.ndarray, rate: int) -> np.ndarray:
    """(n, rate + 1) autocorrelation at lags 0..1 s -> (n, 100) at 10 ms..1 s (ICLabel's _resample, then [1:])."""
    down = rate + 1 if ac.shape[1] * 100 / rate > 101 else rate
    return scipy.signal.resample_poly(ac, 100, down, axis=1)[:, 1 : N_BINS + 1]


def autocorr(windows: np.ndarray, rate: int) -> np.ndarray:
    """(n, W) windows -> (n, 100) ICLabel autocorrelation feature before its 0.99 scaling: eeg_autocorr (the whole
    window) up to 5 s, eeg_autocorr_welch (3-s segments, 50 % overlap) above, as mne-icalabel picks for raw data."""
    n, length = windows.shape
    if length / rate <= 5:
        nfft = next_power_of_2(2 * length - 1)
        c = np.fft.ifft(np.abs(np.fft.fft(windows, nfft, axis=1)) ** 2, axis=1).real  # (n, nfft)
        if length < rate:
            ac = np.concatenate([c[:, :length], np.zeros((n, rate - length + 1))], axis=1)
        else:
            ac = c[:, : rate + 1]
        lag0 = ac[:, :1]
    else:
        n_points = min(length, 3 * rate)
        nfft = next_power_of_2(2 * n_points - 1)
        cutoff = length // n_points * n_points
        starts = np.ceil(np.arange(0, cutoff - n_points + n_points / 2, n_points / 2)).astype(int)
        segments = np.stack([windows[:, s : s + n_points] for s in starts], axis=1)  # (n, segs, n_points)
        spectrum = (np.abs(np.fft.fft(segments, nfft, axis=-1)) ** 2).mean(axis=1)  # (n, nfft)
        ac = np.fft.ifft(spectrum, axis=1).real[:, : rate + 1]
        lags = np.append(np.arange(n_points, n_points - rate, -1), max(1, n_points - rate))  # (rate + 1,)
        lag0 = ac[:, :1] * lags / n_points  # the welch version's unbiased denominator
    ac = np.divide(ac, lag0, out=np.zeros_like(ac), where=lag0 != 0)  # a flat window: zeros
    return resample_lags(ac, rate)


class Branch(nn.Module):
    """Three width-3 convolutions with leaky relu over a 100-value row: (n, 1, 100) -> (n, 1, 100). Upstream's are
    2-D with (1, 3) kernels over a (1, 100) image; 1-D is the same arithmetic, faster on a CPU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 256, 3, padding=1)
        self.conv3 = nn.Conv1d(256, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = nn.functional.leaky_relu(conv(x), 0.2)
        return x


class ImageBranch(nn.Module):
    """Three strided (4 x 4) convolutions with leaky relu: (n, 1, 32, 32) topography -> (n, 512, 4, 4)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 128, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(128, 256, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(256, 512, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = nn.functional.leaky_relu(conv(x), 0.2)
        return x


class ICLabelNet(nn.Module):
    """mne_icalabel.iclabel.network.torch.ICLabelNet (same parameter names), for one input copy: upstream averages
    the classes over four copies (topography, its negation and their mirror images), identical for a zero image."""

    def __init__(self):
        super().__init__()
        self.img_conv = ImageBranch()
        self.psds_conv = Branch()
        self.autocorr_conv = Branch()
        self.conv = nn.Conv2d(512 + 2 * N_BINS, N_CLASSES, 4)

    def load_upstream_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load ICLabelNet.pt strictly, after checking its nn.Sequential aliases equal the named layers."""
        aliases = {"img_conv.sequential.": "img_conv.conv", "psds_conv.sequential.": "psds_conv.conv",
                   "autocorr_conv.sequential.": "autocorr_conv.conv", "seq.0.": "conv."}  # fmt: skip
        named = {}
        for key, value in state.items():
            prefix = next((p for p in aliases if key.startswith(p)), None)
            if prefix is None:
                named[key] = value
                continue
            rest = key.removeprefix(prefix)
            original = aliases[prefix] + (rest if prefix == "seq.0." else f"{int(rest[0]) // 2 + 1}{rest[1:]}")
            if not torch.equal(state[original], value):
                raise ValueError(f"ICLabelNet.pt: {key} differs from {original}")
        for key, value in named.items():  # the row branches' (out, in, 1, 3) kernels -> (out, in, 3)
            if key.startswith(("psds_conv.", "autocorr_conv.")) and value.ndim == 4:
                named[key] = value[:, :, 0]
        self.load_state_dict(named, strict=True)

    def forward(self, images: torch.Tensor, psds: torch.Tensor, autocorrs: torch.Tensor) -> torch.Tensor:
        """(n, 1, 32, 32) topographies, (n, 100) PSDs, (n, 100) autocorrelations -> (n, 207): PSD branch,
        autocorrelation branch, class logits."""
        return self.from_image_features(self.img_conv(images), psds, autocorrs)

    def from_image_features(self, image_out: torch.Tensor, psds: torch.Tensor, autocorrs: torch.Tensor) -> torch.Tensor:
        """The same with the image branch's output (n or 1, 512, 4, 4) given (a zero topography's is a constant)."""
        psd_out = self.psds_conv(psds[:, None]).flatten(1)  # (n, 100)
        autocorr_out = self.autocorr_conv(autocorrs[:, None]).flatten(1)  # (n, 100)
        tiled = torch.cat([psd_out, autocorr_out], dim=1)[:, :, None, None].expand(-1, -1, 4, 4)  # (n, 200, 4, 4)
        joined = torch.cat([image_out.expand(len(psds), -1, -1, -1), tiled], dim=1)  # (n, 712, 4, 4)
        logits = self.conv(joined).flatten(1)  # (n, 7)
        return torch.cat([psd_out, autocorr_out, logits], dim=1)


class ICLabelTeacherAdapter(WindowedTeacher):
    domain = "brain"
    feature_dim = 2 * FEATURES_PER_CHANNEL  # mean and std across channels

    def __init__(self, name: str, spec: ICLabelTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.rate = spec.native_rate
        self.native_rate = float(spec.native_rate)
        self.samples_per_token = max(1, round(spec.window_seconds * spec.native_rate / 2))  # the hop
        self.window = 2 * self.samples_per_token
        self.max_context = MAX_CONTEXT_TOKENS * self.samples_per_token
        self.weights_path = wheel_file(name, "mne_icalabel", "mne-icalabel", WEIGHTS)
        self.package_version = importlib.metadata.version("mne-icalabel")
        self.net = ICLabelNet()
        self.net.load_upstream_state(torch.load(self.weights_path, map_location="cpu", weights_only=True))
        self.net.to(self.device).eval()
        with torch.inference_mode():  # the image branch's output for the zero topography: the same for every input
            self.zero_topography_features = self.net.img_conv(torch.zeros(1, 1, 32, 32, device=self.device)).clone()

    def encode(self, values: np.ndarray, sampling_rate: float | None) -> np.ndarray:
        """Each channel centred before resampling (see crepe.centred), then the shared path (base.py)."""
        return super().encode(centred(self._checked(values)), sampling_rate)

    def normalize_series(self, values: np.ndarray) -> np.ndarray:
        """Each channel standardised and scaled to input_std, in float64 (see the module docstring)."""
        out = np.empty(values.shape, dtype=np.float32)  # (batch, channels, T)
        for item, series in enumerate(values):
            out[item] = standardized_or_flat(series) * np.float32(self.spec.input_std)
        return out

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        x = windows[:, 0].astype(np.float64)  # (items, T)
        hop, window = self.samples_per_token, self.window
        n_tokens = max(1, math.ceil(x.shape[1] / hop))
        left = (window - hop) // 2
        right = (n_tokens - 1) * hop + window - x.shape[1] - left
        padded = np.pad(x, ((0, 0), (left, right)), mode="reflect" if x.shape[1] > 1 else "edge")
        frames = sliding_window_view(padded, window, axis=-1)[:, ::hop].reshape(-1, window)  # (items * tokens, W)

        psd = rpsd(frames, self.rate, floor=POWER_FLOOR * self.spec.input_std**2)  # (items * tokens, 100)
        psds = torch.from_numpy(0.99 * psd).float()  # (items * tokens, 100)
        autocorrs = torch.from_numpy(0.99 * autocorr(frames, self.rate)).float()  # (items * tokens, 100)
        outputs = []
        for start in range(0, len(psds), TOKENS_PER_FORWARD):
            part = slice(start, start + TOKENS_PER_FORWARD)
            outputs.append(self.net.from_image_features(
                self.zero_topography_features, psds[part].to(self.device), autocorrs[part].to(self.device)))
        return torch.cat(outputs).float().view(len(x), n_tokens, FEATURES_PER_CHANNEL)

    pool_channels = staticmethod(mean_and_std_over_channels)  # (batch, channels, tokens, F) -> (batch, tokens, 2F)

    def describe(self) -> dict:
        return {
            "kind": "iclabel",
            "model_id": "mne-icalabel:ICLabelNet",
            "revision": self.package_version,
            "weights_sha256": sha256_of_files([self.weights_path]),
            "layer": "branches+logits",
            "native_rate": self.native_rate,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "window_samples": self.window,
            "input_std": self.spec.input_std,
            "topography": "zeros",
            "packages": {"mne-icalabel": self.package_version, "torch": torch.__version__},
        }
