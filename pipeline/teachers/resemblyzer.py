"""Resemblyzer (Apache-2.0, the `Resemblyzer` wheel) as an audio teacher: its GE2E speaker LSTM's per-frame states.

Resemblyzer's voice encoder is a GE2E speaker-verification network: a 3-layer LSTM (40 -> 256) over mel frames,
then a linear layer with relu on the last frame's state, L2-normalised, as the utterance embedding. Its input is
the power mel spectrogram (not log) of 16 kHz audio: 25 ms Hann windows (400 samples), 10 ms hop (160 samples),
40 Slaney mel bands (resemblyzer/audio.py's librosa call, librosa's defaults). The tokens here are the last LSTM
layer's hidden state after every frame (256 features), averaged over `token_pool` frames (default 4: 40 ms).

Weights: `resemblyzer/pretrained.pt` from the installed wheel (found without importing the package, whose modules
import librosa and webrtcvad), read with torch.load(weights_only=True); its `model_state` holds the LSTM and linear
weights (and the GE2E similarity scale, unused). The mel spectrogram is computed here with torch (rfft of Hann
frames, our Slaney filterbank, built as librosa.filters.mel builds it), so librosa is not needed.

Grid: frame j is the 400 samples centred on the 160-sample cell j (zeros beyond the ends, as librosa's
center=True with its constant padding), so a series of T model samples gives ceil(T / 160) frames and
ceil(T / (160 * token_pool)) tokens; token i covers its cell of 160 * token_pool samples. Resemblyzer's voice
trimming (webrtcvad) is left out: it removes samples, and the grid must keep them. Short series are stretched to
`stretch_to` samples (default 16000: ~100 frames) by an integer factor s and every s tokens averaged, exactly as
for CREPE (crepe.py explains the grid), so the LSTM reads a 150-sample series over ~100 steps, not one. Windows of `max_context_seconds` (default 10 s) are run
from a zero LSTM state and stitched (base.py).

Scale: Resemblyzer normalises each utterance's volume to -30 dBFS (RMS 0.0316 of full scale); here each channel is
centred and scaled to that RMS over the whole series, in float64 (crepe.standardized_or_flat: a flat channel
becomes zeros, times TARGET_RMS), so x,
1e-21 * x and 1e6 * x give the same features and an offset (a light curve at 1e4) does not swamp the signal.
"""

import importlib.metadata
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.teachers.base import WindowedTeacher, pool_steps, resolve_device, sha256_of_files
from pipeline.teachers.crepe import ShortSeriesStretch, standardized_or_flat, wheel_file
from schemas.teachers import ResemblyzerTeacher

NATIVE_RATE = 16000
N_FFT = 400  # 25 ms window at 16 kHz
MEL_HOP = 160  # 10 ms
N_MELS = 40
HIDDEN = 256
TARGET_RMS = 10 ** (-30 / 20)  # Resemblyzer's audio_norm_target_dBFS = -30, as a fraction of full scale


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's htk=False): linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_region = hz >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * (200.0 / 3)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), hz)


def slaney_mel_filterbank(rate: int = NATIVE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters from 0 Hz to Nyquist, each scaled to unit area in Hz
    (norm="slaney"): librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels), float32."""
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / rate)  # (bins,)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(rate / 2), n_mels + 2))  # (n_mels + 2,)
    widths = np.diff(edges_hz)  # (n_mels + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, bins)
    rising = -ramps[:-2] / widths[:-1, None]  # (n_mels, bins)
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # unit area: 2 / (upper - lower edge)
    return weights.astype(np.float32)


class GE2EEncoder(nn.Module):
    """resemblyzer.VoiceEncoder's network (same parameter names), with the mel front end it expects."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, num_layers=3, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)  # librosa's "hann"
        self.register_buffer("mel_filters", torch.from_numpy(slaney_mel_filterbank()), persistent=False)

    def mel_frames(self, audio: torch.Tensor) -> torch.Tensor:
        """(items, T) 16 kHz audio -> (items, ceil(T / 160), 40) power mel frames, frame j centred on the cell
        [160 j, 160 (j + 1)), zeros beyond the ends."""
        length = audio.shape[-1]
        n_frames = max(1, math.ceil(length / MEL_HOP))
        left = (N_FFT - MEL_HOP) // 2
        right = (n_frames - 1) * MEL_HOP + N_FFT - length - left
        frames = F.pad(audio, (left, right)).unfold(-1, N_FFT, MEL_HOP)  # (items, n_frames, 400)
        power = torch.fft.rfft(frames * self.window, dim=-1).abs() ** 2  # (items, n_frames, 201)
        return power @ self.mel_filters.T  # (items, n_frames, 40)

    def frame_states(self, mels: torch.Tensor) -> torch.Tensor:
        """(items, frames, 40) -> (items, frames, 256): the last LSTM layer's hidden state after each frame."""
        states, _ = self.lstm(mels)
        return states

    def embedding(self, mels: torch.Tensor) -> torch.Tensor:
        """(items, frames, 40) -> (items, 256): VoiceEncoder.forward (used to check the module)."""
        raw = F.relu(self.linear(self.frame_states(mels)[:, -1]))
        return raw / raw.norm(dim=1, keepdim=True)


class ResemblyzerTeacherAdapter(ShortSeriesStretch, WindowedTeacher):
    domain = "audio"
    native_rate = float(NATIVE_RATE)
    feature_dim = HIDDEN

    def __init__(self, name: str, spec: ResemblyzerTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.samples_per_token = MEL_HOP * spec.token_pool
        hop = self.samples_per_token
        self.max_context = max(hop, int(spec.max_context_seconds * NATIVE_RATE) // hop * hop)
        self.weights_path = wheel_file(name, "resemblyzer", "Resemblyzer", "pretrained.pt")
        self.package_version = importlib.metadata.version("Resemblyzer")
        checkpoint = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        state = {key: value for key, value in checkpoint["model_state"].items() if not key.startswith("similarity_")}
        self.net = GE2EEncoder()
        self.net.load_state_dict(state, strict=True)
        self.net.to(self.device).eval()

    def normalize_series(self, values: np.ndarray) -> np.ndarray:
        """Each channel centred and scaled to Resemblyzer's -30 dBFS RMS, in float64 (see the module docstring)."""
        out = np.empty(values.shape, dtype=np.float32)  # (batch, channels, T)
        for item, series in enumerate(values):
            out[item] = standardized_or_flat(series) * np.float32(TARGET_RMS)
        return out

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        audio = torch.from_numpy(windows[:, 0]).to(self.device)  # (items, T)
        mels = self.net.mel_frames(audio.float())  # (items, ceil(T / 160), 40)
        states = self.net.frame_states(mels).float()  # (items, frames, 256)
        return pool_steps(states, self.spec.token_pool)  # (items, ceil(T / (160 * token_pool)), 256)

    def describe(self) -> dict:
        return {
            "kind": "resemblyzer",
            "model_id": "resemblyzer:pretrained",
            "revision": self.package_version,
            "weights_sha256": sha256_of_files([self.weights_path]),
            "layer": "lstm.2",
            "native_rate": self.native_rate,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "mel": {"n_fft": N_FFT, "hop": MEL_HOP, "n_mels": N_MELS, "scale": "slaney", "power": 2},
            "stretch_to": self.spec.stretch_to,
            "packages": {"Resemblyzer": self.package_version, "torch": torch.__version__},
        }
