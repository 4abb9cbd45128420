"""Configuration of the STEP student encoder.

Every choice the STEP paper (arXiv 2603.18688) leaves open is a field here, with the default we picked and why.
Two presets: "cpu-small" (the default, trains in minutes on 2 CPU cores) and "paper" (hidden 768, 12 blocks; the
paper reports 17 blocks, use `STEPConfig.from_preset("paper", num_hidden_layers=17)` for that reading).
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from pipeline.student.pooling import check_pooling


@strict
class STEPConfig(PreTrainedConfig):
    r"""
    Transformer backbone (Whisper-style pre-LayerNorm encoder, GELU MLP, sinusoidal positions):
        hidden_size: width of every token.
        num_hidden_layers: number of blocks; each block is attention along time, attention along channels, MLP.
        num_attention_heads: heads of both attentions.
        intermediate_size: hidden width of the MLP.
        dropout, attention_dropout: dropout on residual branches / attention weights (0 in the presets).
        layer_norm_eps: epsilon of every LayerNorm.
        max_timescale: longest period of the sinusoidal positions (Whisper uses 10000).
        initializer_range: std of the normal init of attention/MLP weights (the front end uses fan-in init).

    Convolutional front end (shared by all channels):
        patch_points: P, points each Gaussian window is resampled to; divisible by 4 (two stride-2 convolutions).
            32 resolves a window of 2 S samples at S = 16 without loss and averages longer ones.
        front_end_channels: channels of the three 1-D convolutions that turn one (P,) patch into one token.

    Learnable adaptive patching (LAP):
        adaptive_patching: False = the paper's ablation, a constant stride `fixed_stride` for every series.
        fixed_stride: stride in samples of the fixed-patch mode (16, PatchTST's patch length; the paper's ablation
            value is not stated).
        window_width_factor: beta, the window spans beta * S samples (paper: 2, so windows overlap by half).
        window_std_fraction: Gaussian std as a fraction of the window span (0.25: the span is +-2 std). Unknown in
            the paper.
        stride_mlp_hidden_size: width of the MLP log T -> log(S - 1).
        stride_mlp_uses_sampling_rate: also feed log10(sampling rate) and a "rate known" flag to the stride MLP
            (off by default: the paper conditions on log T only).
        initial_num_tokens: the stride MLP is a residual on the prior S - 1 = T / initial_num_tokens, so an
            untrained model starts with about this many tokens at every length (64: inside the paper's 5..200
            and cheap; without the prior a random MLP could ask for a million tokens at T = 1e7).
        max_num_tokens: hard cap on N whatever the MLP says (attention is quadratic in N; 1024 keeps one series
            under a second on a CPU); when it binds, S = T / max_num_tokens. The fixed-patch mode is capped too,
            so it stays fixed up to T = fixed_stride * max_num_tokens.
        stride_max, tokens_min, tokens_max: the paper's bounds S <= 400 and 5 <= N <= 200, enforced softly. Both
            upper bounds cannot hold beyond T = 400 * 200 = 80,000; there the penalties trade one against the other.
        patching_penalty_weight, patching_penalty_delta: weight and Huber delta of those penalties, applied to the
            relative excess (S / stride_max - 1, 1 - N / tokens_min, N / tokens_max - 1) so that one weight and one
            delta suit all three; N here is the continuous T / S so that the penalty has a gradient.

    Fine structure (our addition, not in the paper):
        structure_lags: J; every token also gets the log mean squared increment of its window at lags 1, 2, 4,
            ..., 2^(J - 1) samples (a coarse octave spectrum of what resampling to P points averages away: the
            content faster than about 2 beta S / P samples). 0 = off, the paper's tokens (and the default, so
            that models saved without the field load as they were); the cpu-small preset uses 8 (lags up to 128
            samples; docs/design.md, "Fine structure", gives what it measured).
        structure_bands: K; every token also gets its window's log power in K bands of frequency (octaves 0.25-0.5,
            0.125-0.25, ... cycles per sample, or finer: bands_per_octave), from the periodogram of the window: where
            along the spectrum an event sits, which the lag increments (high-pass measures) leave tangled with the
            noise's slope. 0 = off
            (the default, for models saved without the field); cpu-small uses 8 (down to 0.002 cycles per sample).
        bands_per_octave: how finely `structure_bands` split the spectrum: 1 = octaves (the default, and
            cpu-small's), 3 = third octaves (K = 24 then spans 8 octaves), which place a call's pitch or a chirp's
            track within its octave, as a spectrogram teacher does. Not the default: measured in five runs, thirds
            gave +0.026 generated mean F1 and -0.013 on the real sets, on average (docs/experiments.md, "What
            each change measured"), and the real sets are judged first.
        structure_kernel_dilations: D dilations (samples) of MiniRocket's 84 fixed kernels (length 9, weights -1
            and 2 at three positions; pipeline/minirocket.py): every token also gets, per kernel and
            dilation, the proportion of its window's positions where the kernel's output on the normalised signal
            exceeds the kernel's bias (PPV, minus 1/2): 84 D fixed random-convolution features that see every
            sample of the window, where the resampled patch sees P points. They enter the token like the other
            fine-structure inputs (a Linear into hidden); the embedding's `kernels` part pools them (mean, std, max
            over tokens: the mean is MiniRocket's whole-series PPV at these dilations). Fixed, not learned: a
            random-weight twin has them too. None = off (the default, for models saved without the field).
        structure_kernel_biases: the 84 D biases, flat (dilation, kernel); distillation fits them once as the median
            of each kernel's output over a fixed sample of the pretraining corpus (pipeline/distill/train.py), and
            the saved config keeps them. None with dilations set = 0 for every kernel.
        kernel_components: M > 0: the embedding's `kernels` part is not the 3 x 84 D pooled activities but their
            projection on M principal components of the same numbers over a fixed sample of the pretraining corpus
            (each standardised first; `fit_kernel_components`, which distillation calls, keeps them as buffers of
            the saved model). 756 fixed numbers beside 3 E learned ones swamp a ridge probe: the generated tasks
            fell by 0.08 with them; 16 components keep what they add on the real sets (docs/experiments.md, "The
            kernel activities in the embedding"). 0 = the raw 3 x 84 D numbers (the default, for models saved
            without the field).

    Channel identity (our addition, not in the paper):
        montage_channels: M learned channel-identity vectors; vector c is added to every token of channel c when
            the series share a fixed montage (the catalog declares `channel_names`: `forward(fixed_montage=True)`,
            `embed(keep_channels=True)`), so that attention can tell which channel is which (left from right
            hemisphere, say). Series without a declared montage get none, so any channel count still works,
            unseen counts included; a montage of more than M channels is refused. Identity is by channel index
            in the declared order. 0 = off (the default, for models saved without the field).

    Statistics compensation (SCS):
        stats_compensation: False = the paper's ablation, the raw signal is patched (no per-channel normalisation)
            and no mean/std features are added.
        stats_log_eps: eps of the signed log sign(x) * log1p(|x| / eps) applied to the mean and std.
        stats_log_max: the largest magnitude expected; the signed log is divided by log1p(stats_log_max / eps)
            so that features stay O(1) from 1e-21 (strain) to 1e9 (counts).
        constant_channel_rtol, constant_channel_atol: a channel with std <= atol + rtol * |mean| is constant
            (only float rounding varies): its normalised signal is 0 and its std feature is 0, never NaN.

    Embedding (what `embed()` returns by default):
        embedding_pooling: '+'-joined parts pooled over each channel's final tokens: mean, std, max, stats (the
            channel's signed-log mean and std), structure (mean, std and max over tokens of the lag and band
            inputs) and kernels (the same of the fixed-kernel activities); `pooled` = the forward pass's
            LayerNorm(mean). Default mean+std+max+stats: on the probe table it gave the distilled student 0.429
            generated / 0.692 real mean F1 against 0.399 / 0.571 for `pooled` (docs/experiments.md); the mean alone
            loses what varies within a series. cpu-small appends structure and kernels, the latter as 16 principal
            components (kernel_components; docs/experiments.md, "The kernel activities in the embedding").
        embedding_size: E > 0 maps each final token through a Linear(hidden, E) before the mean, std and max parts
            pool it, so the embedding's learned part is 3 E numbers instead of 3 hidden; distillation trains the
            map through the summary loss (the summary heads read the pooled E-wide tokens). A ridge probe fitted
            on 75-200 series reads a few informative dimensions better than many (docs/experiments.md, "What each
            change measured"). 0 = off (the class default): the final tokens themselves are pooled. cpu-small uses
            64.
    """

    model_type = "step"

    # Transformer backbone
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 256
    dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    layer_norm_eps: float = 1e-5
    max_timescale: float | int = 10000.0
    initializer_range: float = 0.02

    # Convolutional front end
    patch_points: int = 32
    front_end_channels: int = 32

    # Learnable adaptive patching
    adaptive_patching: bool = True
    fixed_stride: float | int = 16.0
    window_width_factor: float | int = 2.0
    window_std_fraction: float = 0.25
    stride_mlp_hidden_size: int = 32
    stride_mlp_uses_sampling_rate: bool = False
    initial_num_tokens: int = 64
    max_num_tokens: int = 1024
    stride_max: float | int = 400.0
    tokens_min: float | int = 5.0
    tokens_max: float | int = 200.0
    patching_penalty_weight: float | int = 1.0
    patching_penalty_delta: float | int = 1.0

    # Fine structure
    structure_lags: int = 0
    structure_bands: int = 0
    bands_per_octave: int = 1
    structure_kernel_dilations: list[int] | None = None
    structure_kernel_biases: list[float] | None = None
    kernel_components: int = 0

    # Channel identity
    montage_channels: int = 0

    # Statistics compensation
    stats_compensation: bool = True
    stats_log_eps: float = 1e-24
    stats_log_max: float = 1e9
    constant_channel_rtol: float = 1e-6
    constant_channel_atol: float = 1e-30

    # Embedding
    embedding_pooling: str = "mean+std+max+stats"
    embedding_size: int = 0

    def validate_step_architecture(self):
        """Reject settings the model cannot build or run with, naming the field."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.patch_points < 4 or self.patch_points % 4 != 0:
            raise ValueError(f"patch_points ({self.patch_points}) must be a positive multiple of 4")
        for name in ("fixed_stride", "window_width_factor", "window_std_fraction", "stats_log_eps", "stats_log_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.embedding_pooling != "pooled":
            try:
                parts = check_pooling(self.embedding_pooling)  # the rule embed() applies to its `pooling`
            except ValueError as exc:
                raise ValueError(f"embedding_pooling: {exc}, or 'pooled'") from exc
            if "stats" in parts and not self.stats_compensation:
                raise ValueError(f"embedding_pooling {self.embedding_pooling!r} has 'stats' but stats_compensation is "
                                 "off, so there are no statistics to append: drop 'stats'")
            if "structure" in parts and not self.fine_structure_width:
                raise ValueError(f"embedding_pooling {self.embedding_pooling!r} has 'structure' but the model has no "
                                 "lag or band inputs: set structure_lags or structure_bands")
            if "kernels" in parts and not self.kernel_activity_width:
                raise ValueError(f"embedding_pooling {self.embedding_pooling!r} has 'kernels' but the model has no "
                                 "kernel activities: set structure_kernel_dilations")
        if self.embedding_size < 0:
            raise ValueError(f"embedding_size must be >= 0 (0: off), got {self.embedding_size}")
        if not 0 <= self.structure_lags <= 24:
            raise ValueError(f"structure_lags must lie in [0, 24], got {self.structure_lags}")
        if not 0 <= self.structure_bands <= 48:
            raise ValueError(f"structure_bands must lie in [0, 48], got {self.structure_bands}")
        if not 1 <= self.bands_per_octave <= 12:
            raise ValueError(f"bands_per_octave must lie in [1, 12], got {self.bands_per_octave}")
        dilations = self.structure_kernel_dilations or []
        if any(d < 1 for d in dilations) or len(dilations) > 16:
            raise ValueError(f"structure_kernel_dilations must be at most 16 dilations >= 1, got {dilations}")
        if not 0 <= self.kernel_components <= 3 * 84 * len(dilations):
            raise ValueError(f"kernel_components must lie in [0, 3 x 84 x len(structure_kernel_dilations) = "
                             f"{3 * 84 * len(dilations)}], got {self.kernel_components}")
        if self.structure_kernel_biases is not None and len(self.structure_kernel_biases) != 84 * len(dilations):
            raise ValueError(f"structure_kernel_biases must hold 84 x len(structure_kernel_dilations) = "
                             f"{84 * len(dilations)} values, got {len(self.structure_kernel_biases)}")
        if not 0 <= self.montage_channels <= 4096:
            raise ValueError(f"montage_channels must lie in [0, 4096], got {self.montage_channels}")
        if self.max_num_tokens < 1 or self.initial_num_tokens < 1:
            raise ValueError("max_num_tokens and initial_num_tokens must be >= 1")

    @property
    def fine_structure_width(self) -> int:
        """Lag and band inputs per token and channel: J lags + K bands (what the `structure` part pools)."""
        return self.structure_lags + self.structure_bands

    @property
    def kernel_activity_width(self) -> int:
        """Fixed-kernel activities per token and channel: 84 D (what the `kernels` part pools)."""
        return 84 * len(self.structure_kernel_dilations or [])

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "STEPConfig":
        """A named preset ("cpu-small" or "paper"), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown STEP preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    # 0.31M parameters. MiniRocket kernel activities at dilations 1, 4, 16 as fixed fine-structure inputs: real sets
    # +0.020 (visible, not resolved), PLAID 0.765 -> 0.829 (docs/experiments.md, "Knowledge that carries"). In the
    # embedding as 16 corpus principal components of their pooled numbers, not all 756, beside 3 x 64 learned
    # numbers (with the minirocket teacher): over seeds, generated tasks +0.079 and real sets -0.009 against the 756
    # raw numbers beside 3 x 32 (docs/experiments.md, "The kernel activities in the embedding").
    # Hidden 64: on the probe table, width 64 matched width 128 on the real sets and gave +0.01 on the generated tasks
    # in two seeds at about half the training cost; 192 and 6 blocks were worse. Embedding size 64: with the
    # minirocket teacher and the kernel activities out of the embedding, 32 / 64 / 128 gave 0.605 / 0.599 / 0.561
    # generated and 0.811 / 0.836 / 0.846 on the visible real sets (docs/experiments.md).
    "cpu-small": dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
        patch_points=32, front_end_channels=32, structure_lags=8, structure_bands=8,
        structure_kernel_dilations=[1, 4, 16], kernel_components=16,
        embedding_pooling="mean+std+max+stats+structure+kernels", embedding_size=64,
    ),
    # The paper's width (768) with 12 blocks: 117M parameters. The paper reports 17 blocks (num_hidden_layers=17:
    # 164M parameters); which count is right is not known.
    "paper": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        patch_points=64, front_end_channels=256,
    ),
}
