"""Any transformers audio encoder as a teacher, loaded with AutoFeatureExtractor + AutoModel.

Rate: the feature extractor's sampling_rate (16 kHz for these); a series of unknown rate (None) is taken at it.
Three families, told apart by the model's config; each has its own token grid and padding:
  - wav2vec2 family (wav2vec2, HuBERT, WavLM, data2vec-audio... any config with conv_stride/conv_kernel): a
    strided convolutional front end, one token per prod(conv_stride) samples (320 = 20 ms at 16 kHz). The
    feature extractor normalises each window (zero mean, unit variance, if its config says so); the window is
    then zero-padded at the end so the front end yields exactly ceil(T / hop) frames (frame i covers samples
    [i * hop, i * hop + receptive_field)). No fixed length: windows of `max_context_seconds`.
  - Whisper: the encoder only. Its feature extractor makes log-mel frames every hop_length samples and pads
    every input to its fixed 30 s; the encoder's stride-2 convolution gives one token per 2 * hop_length
    samples (20 ms); the first ceil(T / hop) tokens are kept.
  - AST (Audio Spectrogram Transformer): 16x16 patches of a 10 ms-hop fbank, strided in frequency and time;
    patch tokens are averaged over frequency to one token per time_stride frames (100 ms by default). Its
    extractor pads or cuts to max_length frames (10.24 s); inputs shorter than one 25 ms frame are zero-padded.
Scale: each family's own preprocessing has absolute floors that erase series in small units (1e-21 strain):
wav2vec2's extractor divides by sqrt(var + 1e-7), Whisper clamps mel power at 1e-10 (then keeps 80 dB below the
maximum), AST's fbank floors mel power at 1.19e-7 and subtracts a fixed AudioSet mean. So every channel is
rescaled over the whole series first, in float64 (base.py): standardised for extractors that z-score anyway
(wav2vec2 family with do_normalize; their 1e-7 floor then sits at 1e-7 of the series' variance), peak-scaled
to [-1, 1] for models fed raw waveforms (wav2vec2 family without do_normalize, Whisper, AST). Features are then
the same for x, 1e-21 * x and 1e6 * x; the absolute level is what the student's statistics compensation supplies.
Layer: an index into `hidden_states` as transformers returns them with output_hidden_states=True
(0: embeddings, i: after block i; default -1, the last).
Weights: safetensors only (use_safetensors=True); hub ids are fetched (json + safetensors files, plus *.py when
trust_remote_code is on) and loaded from the local snapshot, so the files hashed are the files loaded.
"""

import math

import numpy as np
import torch
import transformers
from transformers import AutoFeatureExtractor, AutoModel

from pipeline.teachers.base import (
    WindowedTeacher,
    hub_model_files,
    resolve_device,
    sha256_of_files,
)
from schemas.teachers import HFAudioTeacher


KALDI_FRAME_SECONDS, KALDI_SHIFT_SECONDS = 0.025, 0.010  # AST's fbank frames


def receptive_field(kernels: list[int], strides: list[int]) -> int:
    """Input samples seen by one output frame of a stack of 1-D convolutions."""
    field = 1
    for kernel, stride in zip(reversed(kernels), reversed(strides)):
        field = (field - 1) * stride + kernel
    return field


class HFAudioTeacherAdapter(WindowedTeacher):
    domain = "audio"

    def __init__(self, name: str, spec: HFAudioTeacher):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.bf16 = spec.bf16
        self.model_dir, self.weight_files = hub_model_files(name, spec)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(
            self.model_dir, trust_remote_code=spec.trust_remote_code
        )
        model = AutoModel.from_pretrained(
            self.model_dir, use_safetensors=True, trust_remote_code=spec.trust_remote_code
        )
        config = model.config
        self.native_rate = float(self.feature_extractor.sampling_rate)
        context = int(spec.max_context_seconds * self.native_rate)

        # Raw waveforms are expected in [-1, 1]; extractors that z-score get a standardised series (see above).
        self.input_scaling = "peak"
        if config.model_type == "whisper":
            self.family = "whisper"
            model = model.get_encoder()
            self.samples_per_token = self.feature_extractor.hop_length * model.conv1.stride[0] * model.conv2.stride[0]
            context = min(context, self.feature_extractor.n_samples)
        elif config.model_type == "audio-spectrogram-transformer":
            self.family = "ast"
            self.frame_samples = round(KALDI_FRAME_SECONDS * self.native_rate)
            self.samples_per_token = config.time_stride * round(KALDI_SHIFT_SECONDS * self.native_rate)
            self.frequency_patches, time_patches = model.embeddings.get_shape(config)
            context = min(context, time_patches * self.samples_per_token)
        elif hasattr(config, "conv_stride") and hasattr(config, "conv_kernel"):
            self.family = "wav2vec2"
            if getattr(self.feature_extractor, "do_normalize", False):
                self.input_scaling = "standard"
            self.samples_per_token = math.prod(config.conv_stride)
            self.receptive_field = receptive_field(list(config.conv_kernel), list(config.conv_stride))
        else:
            raise ValueError(
                f"teacher {name!r}: model_type {config.model_type!r} of {spec.model_id!r} is not a supported "
                "audio encoder (wav2vec2-family models with conv_stride/conv_kernel, whisper, "
                "audio-spectrogram-transformer); write a plug-in adapter for other architectures"
            )
        n_states = config.num_hidden_layers + 1
        if not -n_states <= spec.layer < n_states:
            raise ValueError(f"teacher {name!r}: layer {spec.layer} out of range for {n_states} hidden states "
                             f"(embeddings + {config.num_hidden_layers} blocks)")
        self.feature_dim = int(config.hidden_size)
        self.max_context = max(1, context // self.samples_per_token) * self.samples_per_token
        self.model = model.to(self.device).eval()

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        audio = windows[:, 0]  # (items, T) at the native rate
        n_tokens = math.ceil(audio.shape[1] / self.samples_per_token)
        if self.family == "wav2vec2":
            hidden = self._wav2vec2_states(audio)
        elif self.family == "whisper":
            features = self._extract(audio, "input_features")  # (items, mel bins, frames of 30 s)
            hidden = self.model(features, output_hidden_states=True).hidden_states[self.spec.layer]
        else:
            hidden = self._ast_states(audio)
        return hidden[:, :n_tokens]  # (items, n_tokens, hidden)

    def _extract(self, audio: np.ndarray, key: str) -> torch.Tensor:
        """The feature extractor's own preprocessing (normalisation, log-mel...), one window per item."""
        out = self.feature_extractor(list(audio), sampling_rate=int(self.native_rate), return_tensors="np")
        return torch.from_numpy(np.asarray(out[key], dtype=np.float32)).to(self.device)

    def _wav2vec2_states(self, audio: np.ndarray) -> torch.Tensor:
        items, length = audio.shape
        n_tokens = math.ceil(length / self.samples_per_token)
        normalized = self._extract(audio, "input_values")  # (items, T)
        padded_length = (n_tokens - 1) * self.samples_per_token + self.receptive_field
        values = torch.nn.functional.pad(normalized, (0, padded_length - length))  # (items, padded_length)
        kwargs = {}
        if getattr(self.feature_extractor, "return_attention_mask", False):
            # Models trained with attention masks (layer-norm front ends) are told which samples are padding.
            mask = torch.zeros(items, padded_length, dtype=torch.long, device=self.device)
            mask[:, :length] = 1
            kwargs["attention_mask"] = mask
        out = self.model(values, output_hidden_states=True, **kwargs)
        return out.hidden_states[self.spec.layer]  # (items, n_tokens, hidden)

    def _ast_states(self, audio: np.ndarray) -> torch.Tensor:
        items, length = audio.shape
        if length < self.frame_samples:
            audio = np.pad(audio, ((0, 0), (0, self.frame_samples - length)))
        fbank = self._extract(audio, "input_values")  # (items, max_length frames, mel bins)
        hidden = self.model(fbank, output_hidden_states=True).hidden_states[self.spec.layer]
        patches = hidden[:, 2:]  # drop the [CLS] and distillation tokens: (items, freq * time patches, hidden)
        patches = patches.reshape(items, self.frequency_patches, -1, patches.shape[-1])
        return patches.mean(dim=1)  # (items, time patches, hidden)

    def describe(self) -> dict:
        return {
            "kind": "hf_audio",
            "model_id": self.spec.model_id,
            "revision": self.spec.revision,
            "weights_sha256": sha256_of_files(self.weight_files),
            "layer": self.spec.layer,
            "native_rate": self.native_rate,
            "feature_dim": self.feature_dim,
            "family": self.family,
            "token_hop_samples": self.samples_per_token,
            "input_scaling": self.input_scaling,
            "trust_remote_code": self.spec.trust_remote_code,
            "packages": {"transformers": transformers.__version__, "torch": torch.__version__},
        }
