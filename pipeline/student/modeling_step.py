"""The STEP student encoder, in one file, read top to bottom.

Data flow for a batch of B series with C channels, padded on the right to T samples (shapes in comments):

    values (B, C, T), lengths (B,)
      -> statistics compensation: per-channel mean/std over the valid samples, signal z-normalised   (B, C, T)
      -> adaptive patching: stride S = 1 + exp(MLP(log T)), N = ceil(T / S) tokens; token n is the Gaussian
         window of span beta * S centred at (n + 1/2) S, resampled to P points                     (B, C, N, P)
      -> convolutional front end, the same for every channel                                       (B, C, N, D)
      -> + fine structure: log mean squared increment at lags 1, 2, 4, ... samples within each window  (B, C, N, D)
      -> + band powers: log power per (third) octave of frequency in each window's periodogram        (B, C, N, D)
      -> + kernel activity: PPV of MiniRocket's 84 fixed kernels at a few dilations in each window    (B, C, N, D)
      -> + signed-log mean and std of the channel (the statistics taken out above)                 (B, C, N, D)
      -> + channel identity, only for a fixed montage and only if the config has some              (B, C, N, D)
      -> + sinusoidal positions along time
      -> blocks: attention along time, attention along channels (axial), GELU MLP; pre-LayerNorm   (B, C, N, D)
      -> final LayerNorm = last_hidden_state; mean over valid tokens and channels, LayerNorm = pooled  (B, D)
    embed(): per channel, mean/std/max over tokens of Linear(D, E)(last_hidden_state), the statistics, the pooled
      lag and band inputs and the pooled kernel activities on M corpus principal components; channels averaged

Outside a declared montage nothing has a per-channel-index parameter, so the same weights take 1 or 58 channels.
Padding never enters a result: statistics, windows, attention and pooling all use each series' own length, so a
batch of mixed lengths gives what each series gives alone.

Patching is linear in T: one prefix sum over the signal, then each window reads only its own support.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from pipeline.student.configuration_step import STEPConfig
from pipeline.student.fine_structure import window_band_powers, window_kernel_activity, window_structure
from pipeline.student.inputs import check_inputs, length_batches, validate_series
from pipeline.student.pooling import check_pooling, pool_embedding, principal_axes


@dataclass
class STEPEncoderOutput(ModelOutput):
    """What one forward pass returns.

    last_hidden_state: (batch, channels, tokens, hidden) per-token features, zero at padded tokens.
    statistics: (batch, channels, 2) signed-log mean and std per channel (None without statistics compensation).
    token_mask: (batch, tokens) True where the token belongs to the series.
    pooled: (batch, hidden) the series embedding.
    patching_loss: () weighted Huber penalties of the adaptive stride (0 when N is forced or patching is fixed).
    strides: (batch,) stride S in samples that was used.
    num_tokens: (batch,) number of valid tokens N.
    fine_structure: (batch, channels, tokens, J + K) each token's lag increments and band powers, the inputs
        `window_structure` and `window_band_powers` computed (None when both are off).
    kernel_activity: (batch, channels, tokens, 84 D) each token's fixed-kernel activities, the input
        `window_kernel_activity` computed (None when off).
    """

    last_hidden_state: torch.Tensor | None = None
    statistics: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    patching_loss: torch.Tensor | None = None
    strides: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    fine_structure: torch.Tensor | None = None
    kernel_activity: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# Statistics compensation
# ----------------------------------------------------------------------------------------------------------------


def signed_log(x: torch.Tensor, eps: float, max_magnitude: float) -> torch.Tensor:
    """sign(x) * log1p(|x| / eps), divided so that |x| = max_magnitude maps to 1.

    With eps = 1e-24 this separates 1e-21 (gravitational-wave strain) from 0 and still stays O(1) at 1e9.
    """
    return torch.sign(x) * torch.log1p(x.abs() / eps) / math.log1p(max_magnitude / eps)


def normalise_channels(
    values: torch.Tensor, lengths: torch.Tensor, padding: torch.Tensor, config: STEPConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-normalise every channel over its valid samples; return the signal and the signed-log mean and std.

    Computed in float64: the variance of a 1e-21 signal (1e-42) is below float32's normal range. A constant or
    near-constant channel (std within float rounding of its mean) becomes exactly 0 with std feature 0, never NaN.
    Samples beyond each length are set to 0 and never read later. In-place steps keep the peak at a few copies of
    the input, which matters at T = 1e7.
    """
    # values (B, C, T); lengths (B,); padding (B, 1, T) True beyond each length
    counts = lengths.double()[:, None, None]  # (B, 1, 1)
    signal = values.to(torch.float64, copy=True).masked_fill_(padding, 0.0)  # (B, C, T)
    mean = signal.sum(dim=-1, keepdim=True) / counts  # (B, C, 1)
    signal.sub_(mean).masked_fill_(padding, 0.0)  # centred
    std = torch.linalg.vector_norm(signal, dim=-1, keepdim=True) / counts.sqrt()  # (B, C, 1)
    constant = std <= config.constant_channel_atol + config.constant_channel_rtol * mean.abs()  # (B, C, 1)
    std = std.masked_fill(constant, 0.0)
    signal.div_(torch.where(constant, 1.0, std)).masked_fill_(constant, 0.0)  # (B, C, T), unit variance
    statistics = torch.cat([mean, std], dim=-1)  # (B, C, 2)
    statistics = signed_log(statistics, config.stats_log_eps, config.stats_log_max).float()
    return signal, statistics


# ----------------------------------------------------------------------------------------------------------------
# Learnable adaptive patching
# ----------------------------------------------------------------------------------------------------------------


class StridePredictor(nn.Module):
    """S = 1 + exp(MLP(log T)), written as a residual on the prior S - 1 = T / initial_num_tokens.

    The prior makes an untrained model use about `initial_num_tokens` tokens at every length (so a 1e7-sample
    series does not start with 1e6 tokens); the MLP learns the departure from it. Inputs: log10(T) / 7 and, if
    `stride_mlp_uses_sampling_rate`, log10(rate) / 7 and a flag saying whether the rate is known.
    """

    def __init__(self, config: STEPConfig):
        super().__init__()
        self.uses_sampling_rate = config.stride_mlp_uses_sampling_rate
        self.initial_num_tokens = config.initial_num_tokens
        in_features = 3 if self.uses_sampling_rate else 1
        self.mlp = nn.Sequential(
            nn.Linear(in_features, config.stride_mlp_hidden_size),
            nn.GELU(),
            nn.Linear(config.stride_mlp_hidden_size, 1),
        )

    def forward(self, lengths: torch.Tensor, sampling_rate: torch.Tensor) -> torch.Tensor:
        # lengths (B,) long; sampling_rate (B,) float64, NaN where unknown
        log_length = torch.log10(lengths.double())  # (B,)
        features = [log_length / 7]
        if self.uses_sampling_rate:
            known = torch.isfinite(sampling_rate) & (sampling_rate > 0)
            log_rate = torch.where(known, torch.log10(sampling_rate.clamp(min=1e-30)), 0.0)
            features += [log_rate / 7, known.double()]
        features = torch.stack(features, dim=-1).to(self.mlp[0].weight.dtype)  # (B, in_features)
        log_prior = log_length * math.log(10) - math.log(self.initial_num_tokens)  # log(T / initial_num_tokens)
        return 1 + torch.exp(log_prior + self.mlp(features).squeeze(-1).double())  # (B,) float64


def patching_penalty(strides: torch.Tensor, lengths: torch.Tensor, config: STEPConfig) -> torch.Tensor:
    """Huber penalties keeping S <= stride_max and tokens_min <= N <= tokens_max; 0 inside the bounds.

    Measured on the relative excess so one weight and delta fit all three; N is the continuous T / S so that
    the token-count bounds have a gradient.
    """
    # strides, lengths (B,)
    soft_num_tokens = lengths.double() / strides
    excesses = torch.stack(
        [
            F.relu(strides / config.stride_max - 1),
            F.relu(1 - soft_num_tokens / config.tokens_min),
            F.relu(soft_num_tokens / config.tokens_max - 1),
        ]
    )  # (3, B)
    huber = F.huber_loss(excesses, torch.zeros_like(excesses), reduction="none", delta=config.patching_penalty_delta)
    return config.patching_penalty_weight * huber.sum(dim=0).mean().float()


def gaussian_windows(
    signal: torch.Tensor,
    lengths: torch.Tensor,
    strides: torch.Tensor,
    max_tokens: int,
    config: STEPConfig,
) -> torch.Tensor:
    """Resample each token's window (span beta * S, centred at (n + 1/2) S) to P points and taper it.

    Point p of a window is the mean of the signal over the p-th of P equal sub-intervals of the span. With the
    signal held constant between samples this mean is exact from a prefix sum read at P + 1 edges, so:
    - cost is one O(T) cumulative sum plus O(N P) reads; no N x T matrix, only each window's support is touched;
    - long sub-intervals average (anti-aliasing when S >> P), short ones interpolate (S < P);
    - the edges move with S and the integral is linear between samples, so the output is differentiable with
      respect to S (d/dt of the integral is the signal itself), which is how gradients reach the stride MLP.
    Everything beyond a series' own length reads as 0 (the channel mean after normalisation).
    Positions and the result are float64: float32 cannot address single samples past 1.6e7.
    """
    # signal (B, C, T) float64, 0 beyond each length; lengths (B,); strides (B,) float64
    batch, channels, time = signal.shape
    points = config.patch_points
    integral = signal.new_zeros(batch, channels, time + 1)  # integral[..., i] = sum of the first i samples
    torch.cumsum(signal, dim=-1, out=integral[..., 1:])

    span = config.window_width_factor * strides  # (B,)
    centres = (torch.arange(max_tokens, dtype=torch.float64, device=signal.device) + 0.5) * strides[:, None]  # (B, N)
    edge_offsets = torch.linspace(-0.5, 0.5, points + 1, dtype=torch.float64, device=signal.device)  # (P + 1,)
    edges = centres[:, :, None] + edge_offsets * span[:, None, None]  # (B, N, P + 1)
    last_edge = lengths.double()[:, None, None]
    edges = torch.minimum(edges.clamp(min=0.0), last_edge)  # nothing outside [0, length] is read

    left_sample = torch.minimum(edges.detach().floor().long(), last_edge.long() - 1)  # (B, N, P + 1)
    fraction = edges - left_sample  # in [0, 1]; carries the gradient to the stride
    index = left_sample.reshape(batch, 1, -1).expand(-1, channels, -1)  # (B, C, N (P + 1))
    integral_at_edges = integral.gather(-1, index) + fraction.reshape(batch, 1, -1) * signal.gather(-1, index)
    integral_at_edges = integral_at_edges.reshape(batch, channels, max_tokens, points + 1)  # (B, C, N, P + 1)

    sub_interval = (span / points)[:, None, None, None]  # (B, 1, 1, 1)
    patches = integral_at_edges.diff(dim=-1) / sub_interval  # (B, C, N, P) mean over each sub-interval

    point_offsets = (torch.arange(points, device=signal.device) + 0.5) / points - 0.5  # (P,) in units of the span
    taper = torch.exp(-0.5 * (point_offsets / config.window_std_fraction) ** 2)  # (P,) Gaussian window
    return patches * taper  # (B, C, N, P) float64


# ----------------------------------------------------------------------------------------------------------------
# Convolutional front end and Transformer blocks
# ----------------------------------------------------------------------------------------------------------------


class PatchFrontEnd(nn.Module):
    """One (P,) patch -> one token: three 1-D convolutions (the last two stride 2), flatten, linear.

    Applied to every channel and token alike (channel independent). Flattening rather than pooling keeps where
    in the window a feature occurred.
    """

    def __init__(self, config: STEPConfig):
        super().__init__()
        channels = config.front_end_channels
        self.conv1 = nn.Conv1d(1, channels, kernel_size=5, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.projection = nn.Linear(channels * config.patch_points // 4, config.hidden_size)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        # patches (M, P), M = batch * channels * tokens
        x = F.gelu(self.conv1(patches[:, None, :]))  # (M, F, P)
        x = F.gelu(self.conv2(x))  # (M, F, P / 2)
        x = F.gelu(self.conv3(x))  # (M, F, P / 4)
        return self.projection(x.flatten(1))  # (M, D)


def sinusoids(length: int, channels: int, max_timescale: float, device: torch.device) -> torch.Tensor:
    """Whisper's sinusoidal positions, computed for any length: (length, channels)."""
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2, device=device))
    scaled_time = torch.arange(length, device=device)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the middle axis of (sequences, length, D), with an optional key mask."""

    def __init__(self, config: STEPConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x (S, L, D); key_mask (S, L) True where a key may be attended to
        sequences, length, hidden = x.shape
        heads = (sequences, length, self.num_heads, hidden // self.num_heads)
        q = self.q_proj(x).view(heads).transpose(1, 2)  # (S, H, L, D / H)
        k = self.k_proj(x).view(heads).transpose(1, 2)
        v = self.v_proj(x).view(heads).transpose(1, 2)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (S, 1, 1, L)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)  # (S, H, L, D / H)
        return self.out_proj(out.transpose(1, 2).reshape(sequences, length, hidden))  # (S, L, D)


class STEPBlock(nn.Module):
    """Pre-LayerNorm block: attention along time, then along channels (axial attention), then a GELU MLP.

    The paper only says that attention alternates between the two axes; here every block holds both (one MLP per
    block), so that `num_hidden_layers` counts blocks and every block mixes both axes. With one channel the
    channel attention reduces to a per-token linear map.
    """

    def __init__(self, config: STEPConfig):
        super().__init__()
        self.time_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.time_attention = SelfAttention(config)
        self.channel_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.channel_attention = SelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        # hidden (B, C, N, D); token_mask (B, N)
        batch, channels, tokens, width = hidden.shape

        # along time: every channel of every series is a sequence of N tokens; padded tokens are never keys
        x = self.time_norm(hidden).reshape(batch * channels, tokens, width)  # (B C, N, D)
        x = self.time_attention(x, key_mask=token_mask.repeat_interleave(channels, dim=0))
        hidden = hidden + self.dropout(x.view(batch, channels, tokens, width))

        # along channels: every token position of every series is a sequence of C tokens (no channel positions)
        if channels == 1 and not (self.training and self.channel_attention.dropout > 0):
            # one key: softmax weight 1, so attention is exactly out_proj(v_proj(x)); skips q, k and two copies
            attention = self.channel_attention
            hidden = hidden + self.dropout(attention.out_proj(attention.v_proj(self.channel_norm(hidden))))
        else:
            x = self.channel_norm(hidden).transpose(1, 2).reshape(batch * tokens, channels, width)  # (B N, C, D)
            x = self.channel_attention(x)
            hidden = hidden + self.dropout(x.view(batch, tokens, channels, width).transpose(1, 2))

        return hidden + self.dropout(self.mlp(self.mlp_norm(hidden)))  # (B, C, N, D)


def series_statistics(values: torch.Tensor, lengths: torch.Tensor, config: "STEPConfig") -> torch.Tensor:
    """(B, C, 2) signed-log mean and std of every channel over its valid samples, as statistics compensation
    computes them (so teacher rows can be given the very same features in evaluation)."""
    padding = (torch.arange(values.shape[-1], device=values.device) >= lengths[:, None])[:, None, :]
    return normalise_channels(values, lengths, padding, config)[1]


# ----------------------------------------------------------------------------------------------------------------
# The encoder
# ----------------------------------------------------------------------------------------------------------------


class STEPEncoder(PreTrainedModel):
    """STEP student encoder: `model(values, lengths)` for training, `model.embed(list_of_arrays)` for embeddings.

    Ablations (config): `adaptive_patching=False` removes the stride MLP (constant `fixed_stride`, same window
    shape, no penalty); `stats_compensation=False` removes the normalisation and the statistics embedding (the raw
    signal is patched and its scale is never given back explicitly).
    """

    config_class = STEPConfig
    base_model_prefix = "step"
    main_input_name = "values"

    def __init__(self, config: STEPConfig):
        super().__init__(config)
        self.stride_predictor = StridePredictor(config) if config.adaptive_patching else None
        self.front_end = PatchFrontEnd(config)
        # Linear(2, D) on (signed-log mean, signed-log std) added to every token: the same as appending the two
        # features to the front-end output and projecting.
        self.statistics_embedding = nn.Linear(2, config.hidden_size) if config.stats_compensation else None
        # Linear(J, D) on each token's fine structure (window_structure), added to the front end's token
        self.structure_embedding = (nn.Linear(config.structure_lags, config.hidden_size) if config.structure_lags
                                    else None)
        # Linear(K, D) on each token's band powers (window_band_powers), added likewise
        self.band_embedding = (nn.Linear(config.structure_bands, config.hidden_size) if config.structure_bands
                               else None)
        # Linear(84 D, D) on each token's fixed-kernel activities (window_kernel_activity), added likewise
        self.kernel_embedding = (nn.Linear(config.kernel_activity_width, config.hidden_size)
                                 if config.kernel_activity_width else None)
        # one learned vector per channel index of a fixed montage, added to every token of that channel
        self.channel_embedding = (nn.Embedding(config.montage_channels, config.hidden_size)
                                  if config.montage_channels else None)
        self.blocks = nn.ModuleList(STEPBlock(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooled_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Linear(D, E): the numbers per token that the embedding's mean/std/max parts pool (embedding_size > 0)
        self.embedding_projection = (nn.Linear(config.hidden_size, config.embedding_size) if config.embedding_size
                                     else None)
        # the embedding's `kernels` part on M corpus principal components (kernel_components > 0): mean and scale
        # (3 x 84 D,) and components (M, 3 x 84 D) of the pooled kernel activities; fixed (fit_kernel_components),
        # saved with the weights; a zero scale means not fitted yet
        if config.kernel_components:
            width = 3 * config.kernel_activity_width
            self.register_buffer("kernel_component_mean", torch.zeros(width))
            self.register_buffer("kernel_component_scale", torch.zeros(width))
            self.register_buffer("kernel_component_axes", torch.zeros(config.kernel_components, width))
        self.post_init()

    def _init_weights(self, module: nn.Module):
        """Normal(0, initializer_range) for the Transformer; fan-in (Kaiming) init for the front end and the
        statistics embedding, so that at initialisation the signal shape and the statistics enter at the same O(1)
        scale as the sinusoidal positions instead of being drowned by them; channel identities start at the
        positions' scale too (rms 1/sqrt 2), so that channels of a montage differ from the first step."""
        super()._init_weights(module)
        if isinstance(module, PatchFrontEnd):
            for layer in (module.conv1, module.conv2, module.conv3, module.projection):
                init.kaiming_normal_(layer.weight, nonlinearity="relu")
        if isinstance(module, STEPEncoder):
            for layer in (module.statistics_embedding, module.structure_embedding, module.band_embedding,
                          module.kernel_embedding):
                if layer is not None:
                    init.kaiming_normal_(layer.weight, nonlinearity="linear")
            if module.channel_embedding is not None:
                init.normal_(module.channel_embedding.weight, std=math.sqrt(0.5))

    def choose_strides(
        self, lengths: torch.Tensor, sampling_rate: torch.Tensor, num_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stride S (B,) float64, token count N (B,) long and the patching penalty () for each series.

        Forced N (distillation onto a teacher's token grid): S = T / N exactly, no penalty. Otherwise S comes
        from the stride MLP (or is `fixed_stride`), is raised to T / max_num_tokens if needed, and N = ceil(T / S).
        """
        config = self.config
        if num_tokens is not None:
            return lengths.double() / num_tokens, num_tokens, torch.zeros((), device=lengths.device)
        if self.stride_predictor is not None:
            strides = self.stride_predictor(lengths, sampling_rate)
            penalty = patching_penalty(strides, lengths, config)
        else:
            strides = torch.full(lengths.shape, float(config.fixed_stride), dtype=torch.float64, device=lengths.device)
            penalty = torch.zeros((), device=lengths.device)
        strides = torch.maximum(strides, lengths.double() / config.max_num_tokens)
        num_tokens = torch.ceil(lengths.double() / strides).long().clamp(1, config.max_num_tokens)
        return strides, num_tokens, penalty

    def forward(
        self,
        values: torch.Tensor,
        lengths: torch.Tensor | None = None,
        sampling_rate: float | torch.Tensor | None = None,
        num_tokens: torch.Tensor | None = None,
        fixed_montage: bool = False,
    ) -> STEPEncoderOutput:
        """values (B, C, T) padded on the right; lengths (B,) valid samples (default T); sampling_rate: None, one
        rate or (B,) rates in Hz (NaN = unknown); num_tokens: None or (B,) long forcing exactly N tokens;
        fixed_montage: channel c of every series is the same sensor (the catalog's `channel_names` order), so
        channel identities are added if the config has them (`montage_channels`)."""
        config = self.config
        batch, channels, time = check_inputs(values, lengths, num_tokens)
        device = values.device
        lengths = torch.full((batch,), time, device=device) if lengths is None else lengths.to(device).long()
        if sampling_rate is None:
            sampling_rate = float("nan")
        sampling_rate = torch.as_tensor(sampling_rate, dtype=torch.float64, device=device).expand(batch)
        if num_tokens is not None:
            num_tokens = num_tokens.to(device).long()

        # 1. statistics compensation
        padding = (torch.arange(time, device=device) >= lengths[:, None])[:, None, :]  # (B, 1, T)
        if config.stats_compensation:
            signal, statistics = normalise_channels(values, lengths, padding, config)  # (B, C, T), (B, C, 2)
        else:
            signal, statistics = values.to(torch.float64, copy=True).masked_fill_(padding, 0.0), None

        # 2. adaptive patching
        strides, num_tokens, patching_loss = self.choose_strides(lengths, sampling_rate, num_tokens)
        max_tokens = int(num_tokens.max())
        patches = gaussian_windows(signal, lengths, strides, max_tokens, config).float()  # (B, C, N, P)
        structure = None
        if self.structure_embedding is not None:
            structure = window_structure(signal, lengths, strides, max_tokens, config)  # (B, C, N, J)
        bands = None
        if self.band_embedding is not None:
            bands = window_band_powers(signal, lengths, strides, num_tokens, config)  # (B, C, N, K)
        kernels = None
        if self.kernel_embedding is not None:
            kernels = window_kernel_activity(signal, lengths, strides, max_tokens, config)  # (B, C, N, 84 D)
        del signal
        token_mask = torch.arange(max_tokens, device=device) < num_tokens[:, None]  # (B, N)

        # 3. front end (+ statistics) + positions
        hidden = self.front_end(patches.flatten(0, 2)).view(batch, channels, max_tokens, -1)  # (B, C, N, D)
        if structure is not None:
            hidden = hidden + self.structure_embedding(structure)  # (B, C, N, D)
        if bands is not None:
            hidden = hidden + self.band_embedding(bands)  # (B, C, N, D)
        if kernels is not None:
            hidden = hidden + self.kernel_embedding(kernels)  # (B, C, N, D)
        fine_structure = [f for f in (structure, bands) if f is not None]
        fine_structure = torch.cat(fine_structure, dim=-1) if fine_structure else None  # (B, C, N, J + K)
        if statistics is not None:
            hidden = hidden + self.statistics_embedding(statistics)[:, :, None, :]  # (B, C, 1, D) broadcast
        if fixed_montage and self.channel_embedding is not None:
            if channels > config.montage_channels:
                raise ValueError(f"a fixed montage of {channels} channels needs montage_channels >= {channels}; "
                                 f"this model has {config.montage_channels}")
            hidden = hidden + self.channel_embedding.weight[:channels, None, :]  # (C, 1, D) broadcast
        hidden = hidden + sinusoids(max_tokens, config.hidden_size, config.max_timescale, device)  # (N, D) bcast

        # 4. axial Transformer
        for block in self.blocks:
            hidden = block(hidden, token_mask)
        hidden = self.final_norm(hidden) * token_mask[:, None, :, None]  # (B, C, N, D), 0 at padded tokens

        # 5. pooling: mean over valid tokens and channels, then LayerNorm
        valid_count = (num_tokens * channels)[:, None]  # (B, 1)
        pooled = self.pooled_norm(hidden.sum(dim=(1, 2)) / valid_count)  # (B, D)

        return STEPEncoderOutput(
            last_hidden_state=hidden,
            statistics=statistics,
            token_mask=token_mask,
            pooled=pooled,
            patching_loss=patching_loss,
            strides=strides.float(),
            num_tokens=num_tokens,
            fine_structure=fine_structure,
            kernel_activity=kernels,
        )

    def embedding_tokens(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """What the embedding's mean/std/max parts pool: (B, C, N, D) final tokens -> (B, C, N, E), or the tokens
        themselves when embedding_size is 0."""
        if self.embedding_projection is None:
            return last_hidden_state
        return self.embedding_projection(last_hidden_state)

    def kernel_projection(self, pooling: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(mean, scale, axes) that map the pooled kernel activities onto their corpus principal components, or
        None where `pooling` has no `kernels` part or it is raw (kernel_components 0)."""
        if not self.config.kernel_components or "kernels" not in pooling.split("+"):
            return None
        if not bool(self.kernel_component_scale.any()):
            raise RuntimeError("this model's kernel components are not fitted: call fit_kernel_components on a sample "
                               "of the pretraining corpus first (distillation does, and saves them)")
        return self.kernel_component_mean, self.kernel_component_scale, self.kernel_component_axes

    @torch.no_grad()
    def fit_kernel_components(self, series: Sequence[np.ndarray], batch_size: int = 16) -> None:
        """Fit the `kernels` part's projection (kernel_components > 0) on a sample of the pretraining corpus: the
        pooled kernel activities (mean, std, max over tokens: 3 x 84 D numbers per series, channels averaged, the
        series taken as of unknown rate) are standardised and their M leading principal components kept (signs
        fixed so the largest loading of each is positive)."""
        if not self.config.kernel_components:
            raise ValueError("fit_kernel_components: this model has kernel_components 0 (raw kernel activities)")
        raw = self.embed(series, None, batch_size=batch_size, pooling="kernels", raw_kernels=True)  # (n, 3 x 84 D)
        projection = principal_axes(raw.astype(np.float64), self.config.kernel_components)
        for buffer, value in zip((self.kernel_component_mean, self.kernel_component_scale,
                                  self.kernel_component_axes), projection):
            buffer.copy_(torch.from_numpy(value).to(buffer.dtype))

    @torch.inference_mode()
    def embed(
        self,
        series: Sequence[np.ndarray],
        sampling_rate: float | Sequence[float | None] | np.ndarray | None = None,
        batch_size: int = 32,
        max_batch_samples: int = 2**24,
        pooling: str | None = None,
        keep_channels: bool = False,
        raw_kernels: bool = False,
    ) -> np.ndarray:
        """Embeddings (n, dim) float32, in input order, of arrays shaped (time,) or (channels, time).

        pooling: None = `config.embedding_pooling` (the recipe measured best, see STEPConfig); `pooled` = the
        forward pass's LayerNorm(mean) vector (hidden,); or '+'-joined parts of `pool_embedding` (mean, std, max,
        stats, structure) over the final tokens. keep_channels: the series share a fixed montage, so channels get
        their identities (if the model has them) and per-channel vectors are concatenated in channel order instead
        of averaged; all series must then have the same channel count. raw_kernels: the `kernels` part as the
        3 x 84 D pooled activities even where the model projects them (kernel_components; what its fit reads).

        Series are grouped by channel count and by length (within a factor 2, so padding at most doubles the
        work), at most `batch_size` series and `max_batch_samples` padded values per batch (a longer series goes
        alone). Runs in eval mode; the previous mode is restored.
        """
        pooling = pooling or self.config.embedding_pooling
        if pooling != "pooled":
            check_pooling(pooling)
        arrays = [validate_series(i, x) for i, x in enumerate(series)]
        if keep_channels and len({x.shape[0] for x in arrays}) > 1:
            raise ValueError("keep_channels needs the same channel count in every series, got "
                             f"{sorted({x.shape[0] for x in arrays})}")
        one_rate = sampling_rate is None or np.isscalar(sampling_rate)
        rates = [sampling_rate] * len(arrays) if one_rate else list(sampling_rate)
        if len(rates) != len(arrays):
            raise ValueError(f"sampling_rate has {len(rates)} entries for {len(arrays)} series")
        embeddings: np.ndarray | None = None
        projection = None if raw_kernels else self.kernel_projection(pooling)

        was_training = self.training
        self.eval()
        try:
            for batch in length_batches([x.shape for x in arrays], batch_size, max_batch_samples):
                longest = max(arrays[i].shape[1] for i in batch)
                values = np.zeros((len(batch), arrays[batch[0]].shape[0], longest), dtype=np.float32)  # (B, C, T)
                for row, i in enumerate(batch):
                    values[row, :, : arrays[i].shape[1]] = arrays[i]
                lengths = torch.tensor([arrays[i].shape[1] for i in batch])  # (B,)
                batch_rates = torch.tensor([np.nan if rates[i] is None else float(rates[i]) for i in batch])
                out = self(torch.from_numpy(values).to(self.device), lengths, sampling_rate=batch_rates,
                           fixed_montage=keep_channels)
                if pooling == "pooled":
                    vectors = out.pooled
                else:
                    vectors = pool_embedding(self.embedding_tokens(out.last_hidden_state), out.token_mask, pooling,
                                             keep_channels, out.statistics, out.fine_structure,
                                             out.kernel_activity, projection)
                if embeddings is None:
                    embeddings = np.zeros((len(arrays), vectors.shape[1]), dtype=np.float32)
                embeddings[batch] = vectors.float().cpu().numpy()
        finally:
            self.train(was_training)
        return embeddings if embeddings is not None else np.zeros((0, self.config.hidden_size), np.float32)
