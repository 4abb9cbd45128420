"""silero-vad (MIT, the `silero-vad` wheel) as an audio teacher: its encoder's 128 features per 32 ms frame.

silero-vad is a voice-activity detector trained on thousands of hours of speech and noise: a learned STFT,
four convolutions (the encoder) and an LSTM cell run frame by frame (the decoder). At 16 kHz a frame is 512 new
samples plus the 64 samples before it; the encoder turns each frame into 128 features, so the token rate is
31.25 Hz at the native rate (FINDINGS: about 17 ms of CPU per second of audio). A series of unknown rate
(sampling_rate None) is taken as 16 kHz as it is: one token per 512 samples.

Weights: the wheel ships two 16 kHz checkpoints of this network. `silero_vad.jit` (TorchScript, what
`load_silero_vad()` runs, v6) and `silero_vad_16k.safetensors` (for the wheel's tinygrad port). They are not the
same weights (upstream issue #768; their speech probabilities correlate ~0.8 on a voiced test signal). The network
is built below as plain torch modules in the tinygrad port's layout and gets either checkpoint:
  - weights="safetensors" (default): the safe format, as the project requires of weight files;
  - weights="jit": the parameters of the TorchScript model, read with torch.jit.load from the installed wheel
    (a fixed path inside a package already trusted to run code, never a user-supplied file). Tests check the
    module reproduces the TorchScript model's speech probabilities to 1e-6 with these weights.
We never import the `silero_vad` package: its import calls torch.set_num_threads(1) for the whole process.

Input normalisation: none in the network (it expects waveforms in [-1, 1]); `peak_normalize` (default) scales each
channel to peak 1 first, in float64 (base.peak_scaled), so the features do not depend on the series' units
(1e-21 strain and 1e6 counts give the features of the same waveform at peak 1; the absolute level is what the
student's statistics compensation supplies). The network itself has no floor to worry about: an all-zero input
gives sqrt(0) magnitudes and finite features. With peak_normalize off the features follow the raw amplitude.
Short inputs are padded with zeros at the end to a whole frame; the first frame sees 64 zeros of context, as in
streaming use.
"""

import importlib.metadata
import math

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from pipeline.teachers.base import WindowedTeacher, resolve_device, sha256_of_files
from schemas.teachers import SileroVADTeacher

WEIGHT_FILES = {"safetensors": "silero_vad/data/silero_vad_16k.safetensors", "jit": "silero_vad/data/silero_vad.jit"}
NATIVE_RATE = 16000
FRAME = 512  # new samples per frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame prepended to each frame
N_FFT, STFT_HOP = 256, 128


class SileroVADNet(nn.Module):
    """The 16 kHz silero-vad network, parameter names as in silero_vad_16k.safetensors."""

    def __init__(self):
        super().__init__()
        self.stft_conv = nn.Conv1d(1, N_FFT + 2, kernel_size=N_FFT, stride=STFT_HOP, bias=False)  # real | imag
        self.conv1 = nn.Conv1d(N_FFT // 2 + 1, 128, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, kernel_size=3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, kernel_size=1)

    def encoder(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, CONTEXT + FRAME) samples -> (n, 128) features, one vector per frame."""
        x = F.pad(frames, (0, CONTEXT), mode="reflect").unsqueeze(1)  # (n, 1, 640)
        x = self.stft_conv(x)  # (n, 258, 4): real and imaginary parts of 4 STFT columns
        cutoff = N_FFT // 2 + 1
        x = torch.sqrt(x[:, :cutoff] ** 2 + x[:, cutoff:] ** 2)  # (n, 129, 4) magnitudes
        x = F.relu(self.conv1(x))  # (n, 128, 4)
        x = F.relu(self.conv2(x))  # (n, 64, 2)
        x = F.relu(self.conv3(x))  # (n, 64, 1)
        x = F.relu(self.conv4(x))  # (n, 128, 1)
        return x.squeeze(-1)  # (n, 128)

    def decoder_states(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, frames, 128) encoder features -> (batch, frames, 128) LSTM hidden states, state from zero."""
        batch, n_frames, dim = features.shape
        h = features.new_zeros(batch, dim)
        c = features.new_zeros(batch, dim)
        states = []
        for t in range(n_frames):
            h, c = self.lstm_cell(features[:, t], (h, c))
            states.append(h)
        return torch.stack(states, dim=1)

    def speech_probability(self, states: torch.Tensor) -> torch.Tensor:
        """(batch, frames, 128) LSTM states -> (batch, frames) speech probabilities (the VAD's output)."""
        logits = self.final_conv(F.relu(states).transpose(1, 2))  # (batch, 1, frames)
        return torch.sigmoid(logits).squeeze(1)


def state_from_torchscript(path: str) -> dict[str, torch.Tensor]:
    """SileroVADNet parameters from the 16 kHz branch (`_model`) of the wheel's TorchScript archive."""
    scripted = torch.jit.load(path, map_location="cpu")
    source = {name.removeprefix("_model."): tensor for name, tensor in scripted.state_dict().items()}
    names = {"stft_conv.weight": "stft.forward_basis_buffer"}
    names.update({f"conv{i + 1}.{p}": f"encoder.{i}.reparam_conv.{p}" for i in range(4) for p in ("weight", "bias")})
    names.update({f"lstm_cell.{p}": f"decoder.rnn.{p}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    names.update({f"final_conv.{p}": f"decoder.decoder.2.{p}" for p in ("weight", "bias")})
    return {ours: source[theirs].clone() for ours, theirs in names.items()}


def frames_of(audio: torch.Tensor) -> torch.Tensor:
    """(batch, T) 16 kHz audio -> (batch, ceil(T / FRAME), CONTEXT + FRAME): zero-padded at the end to whole
    frames, each frame with the CONTEXT samples before it (zeros before the start)."""
    batch, length = audio.shape
    n_frames = max(1, math.ceil(length / FRAME))
    padded = F.pad(audio, (CONTEXT, n_frames * FRAME - length))  # (batch, CONTEXT + n_frames * FRAME)
    return padded.unfold(-1, CONTEXT + FRAME, FRAME)  # (batch, n_frames, CONTEXT + FRAME)


class SileroVADTeacherAdapter(WindowedTeacher):
    domain = "audio"
    native_rate = float(NATIVE_RATE)
    samples_per_token = FRAME
    feature_dim = 128

    def __init__(self, name: str, spec: SileroVADTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.input_scaling = "peak" if spec.peak_normalize else "none"
        self.max_context = max(FRAME, int(spec.max_context_seconds * NATIVE_RATE) // FRAME * FRAME)
        distribution = importlib.metadata.distribution("silero-vad")
        self.package_version = distribution.version
        self.weights_path = distribution.locate_file(WEIGHT_FILES[spec.weights])
        if spec.weights == "jit":
            state = state_from_torchscript(str(self.weights_path))
        else:
            state = load_file(str(self.weights_path))
        self.net = SileroVADNet()
        self.net.load_state_dict(state, strict=True)
        self.net.to(self.device).eval()

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        audio = torch.from_numpy(windows[:, 0]).to(self.device)  # (items, T)
        frames = frames_of(audio)  # (items, n_frames, 576)
        items, n_frames, frame_length = frames.shape
        features = self.net.encoder(frames.reshape(items * n_frames, frame_length)).view(items, n_frames, -1)
        if self.spec.layer == "lstm":
            return self.net.decoder_states(features)  # (items, n_frames, 128)
        return features  # (items, n_frames, 128)

    def describe(self) -> dict:
        return {
            "kind": "silero_vad",
            "model_id": f"silero-vad:{self.spec.weights}",
            "revision": self.package_version,
            "weights_sha256": sha256_of_files([self.weights_path]),
            "layer": self.spec.layer,
            "native_rate": self.native_rate,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "packages": {"silero-vad": self.package_version, "torch": torch.__version__},
        }
