"""Fine structure: what each token's window holds at scales the resampled patch averages away (our addition to
STEP, `structure_lags` and `structure_bands`): lag increments and (sub-)octave band powers, per token and channel."""

import math

import torch

from pipeline.student.configuration_step import STEPConfig


def window_structure(
    signal: torch.Tensor, lengths: torch.Tensor, strides: torch.Tensor, max_tokens: int, config: STEPConfig
) -> torch.Tensor:
    """Each token window's structure function: log of the mean squared increment (x[t + k] - x[t])^2 at the lags
    k = 1, 2, 4, ..., 2^(J - 1) samples, J = `structure_lags`.

    Why: resampling a window of beta * S samples to P points keeps only periods longer than about 2 beta S / P
    samples; everything faster (a gravitational-wave chirp at 4 kHz sampling, a 7 kHz call at 16 kHz) is averaged
    away before the network sees it, so no amount of distillation can recover it. For a unit-variance signal the
    mean squared increment at lag k is 2 (1 - autocorrelation(k)), a coarse power spectrum in octaves, so these J
    numbers per token say how much energy sits at each fine scale. One prefix sum per lag: O(J T), like patching.
    The windows are the patches' spans with edges rounded to samples (no gradient to the stride from here).
    """
    # signal (B, C, T) float64, 0 beyond each length; lengths (B,); strides (B,) float64
    batch, channels, time = signal.shape
    start, end = window_edges(lengths, strides, max_tokens, config)  # (B, N) each
    features = []
    for j in range(config.structure_lags):
        lag = 2**j
        if lag >= time:  # no pair of samples this far apart in the batch: the floor, as window_means' empty windows
            features.append(signal.new_full((batch, channels, max_tokens), math.log(1e-6) / 8))
            continue
        squared = (signal[..., lag:] - signal[..., :-lag]).square_()  # (B, C, T - lag), pair (t, t + lag)
        # pairs starting inside the window whose second sample is still in the series
        mean_square = window_means(squared, (lengths - lag).clamp(min=0), start, end)  # (B, C, N)
        features.append(torch.log(mean_square + 1e-6) / 8)  # ~[-1.7, 0.5] for a unit-variance signal
    return torch.stack(features, dim=-1).float()  # (B, C, N, J)


def window_band_powers(
    signal: torch.Tensor, lengths: torch.Tensor, strides: torch.Tensor, num_tokens: torch.Tensor, config: STEPConfig
) -> torch.Tensor:
    """Each token window's log mean power in K = `structure_bands` bands of frequency, `bands_per_octave` (b) to
    an octave: band k holds 0.5 / 2^((k+1) / b) to 0.5 / 2^(k / b) cycles per sample (the top band, below
    Nyquist, first).

    Why: the lag increments of `window_structure` are high-pass measures (lag k weighs frequency f by
    2 - 2 cos(2 pi f k)), so where a narrow-band event (a chirp in coloured detector noise, a call over wind) sits
    must be untangled from several lags under the noise's own slope; a band power reads it directly, as a
    spectrogram teacher does, at every scale the resampled patch cannot resolve. How: the periodogram of each
    token's window (W = round(beta * S) samples centred on the token, Hann taper, mean removed, edge samples
    repeated beyond the series), its bins summed per band: one batched rfft per series, O(T log W), and only
    the series' own samples enter, so padding in a batch changes nothing. A band narrower than the window's bin
    spacing (low octaves of short windows) has no bin and reads as the floor; the patch itself resolves those
    frequencies. No gradient to the stride from here.
    """
    # signal (B, C, T) float64, 0 beyond each length; lengths (B,); strides (B,) float64; num_tokens (B,)
    batch, channels, _ = signal.shape
    bands, device = config.structure_bands, signal.device
    floor = math.log(1e-6) / 8
    features = signal.new_full((batch, channels, int(num_tokens.max()), bands), floor)  # (B, C, N, K)
    octaves = torch.arange(bands + 1, dtype=torch.float64, device=device) / config.bands_per_octave  # (K + 1,)
    edges = 0.5 / 2.0**octaves  # (K + 1,) band edges in cycles per sample, descending
    for b in range(batch):
        length, stride, tokens = int(lengths[b]), float(strides[b].detach()), int(num_tokens[b])
        width = max(4, round(config.window_width_factor * stride))  # W samples per window
        taper = torch.hann_window(width, periodic=False, dtype=torch.float64, device=device)  # (W,)
        centres = (torch.arange(tokens, dtype=torch.float64, device=device) + 0.5) * stride  # (N_b,)
        index = (centres - width / 2).round().long()[:, None] + torch.arange(width, device=device)  # (N_b, W)
        frames = signal[b][:, index.clamp(0, length - 1)]  # (C, N_b, W)
        frames = (frames - frames.mean(-1, keepdim=True)) * taper  # (C, N_b, W)
        power = torch.fft.rfft(frames, dim=-1).abs().square_()  # (C, N_b, W // 2 + 1)
        frequency = torch.fft.rfftfreq(width, device=device, dtype=torch.float64)  # (W // 2 + 1,)
        # (W // 2 + 1, K) one-hot band of each bin; the top band keeps Nyquist, DC is in none
        in_band = (frequency[:, None] >= edges[None, 1:]) & ((frequency[:, None] < edges[None, :-1])
                                                             | (torch.arange(bands, device=device) == 0))
        # power per sample of the tapered window: Parseval over the one-sided spectrum (x2 off DC and Nyquist)
        band_power = 2 * power @ in_band.double() / (width * taper.square().sum())  # (C, N_b, K)
        has_bins = in_band.any(dim=0)  # (K,)
        features[b, :, :tokens, has_bins] = torch.log(band_power[..., has_bins] + 1e-6) / 8
    return features.float()  # (B, C, N, K); ~[-1.7, 0] for a unit-variance signal


def window_edges(
    lengths: torch.Tensor, strides: torch.Tensor, max_tokens: int, config: STEPConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) samples (B, N) long of each token's window, its span beta * S centred at (n + 1/2) S, clipped
    to the series and rounded down to samples."""
    span = config.window_width_factor * strides  # (B,)
    centres = (torch.arange(max_tokens, dtype=torch.float64, device=strides.device) + 0.5) * strides[:, None]
    last = lengths.double()[:, None]
    start = (centres - span[:, None] / 2).clamp(min=0.0).minimum(last).floor().long()  # (B, N) first sample
    end = (centres + span[:, None] / 2).clamp(min=0.0).minimum(last).floor().long()  # (B, N) one past the last
    return start, end


def window_means(values: torch.Tensor, valid: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Mean of values (B, C, T') over each window [start, end) (B, N), counting only positions < valid (B,): one
    prefix sum, so the cost does not depend on the windows' spans. Empty windows give 0."""
    batch, channels, time = values.shape
    values = values.masked_fill(torch.arange(time, device=values.device) >= valid[:, None, None], 0.0)
    integral = values.new_zeros(batch, channels, time + 1)
    torch.cumsum(values, dim=-1, out=integral[..., 1:])
    high = torch.minimum(end, valid[:, None])  # (B, N)
    low = torch.minimum(start, high)
    count = (high - low).clamp(min=1)[:, None, :]  # (B, 1, N)
    take = lambda index: integral.gather(-1, index[:, None, :].expand(-1, channels, -1))  # noqa: E731
    return (take(high) - take(low)) / count  # (B, C, N)


def window_kernel_activity(
    signal: torch.Tensor, lengths: torch.Tensor, strides: torch.Tensor, max_tokens: int, config: STEPConfig
) -> torch.Tensor:
    """Each token window's MiniRocket activity: per dilation d of `structure_kernel_dilations` and each of the 84
    fixed kernels, the proportion of the window's positions where the kernel's output exceeds its bias (PPV),
    minus 1/2, so the features are centred near 0 on the corpus (the biases are its medians).

    Why: the resampled patch averages away what is faster than about 2 beta S / P samples, and the lag and band
    powers keep only energy per scale, not shape; these fixed kernels see every sample's local shape (a rise, a
    dip, a kink at each dilation), the representation MiniRocket classifies with. The output is the kernel over the
    series with zeros beyond its ends (the reference's padding). The proportion is counted at every k-th position,
    k = max(1, floor(S / 32)), so about 64 positions per window of 2 S samples: exact for short strides (S < 64, e.g.
    every UCR series here), an unbiased estimate for long ones, and a cost that does not grow with T / N (a
    131,072-sample segment costs about what a 4,096-sample one does). One prefix sum per dilation over the counted
    positions (`window_means`); no gradient to the stride from here; one series at a time, so memory stays
    (C, 84, T / k) floats.
    """
    from pipeline.minirocket import NUM_KERNELS, convolve

    # signal (B, C, T) float64, 0 beyond each length; lengths (B,); strides (B,) float64
    batch, channels, time = signal.shape
    dilations = config.structure_kernel_dilations
    biases = torch.zeros(len(dilations), NUM_KERNELS) if config.structure_kernel_biases is None else torch.tensor(
        config.structure_kernel_biases, dtype=torch.float32).view(len(dilations), NUM_KERNELS)
    start, end = window_edges(lengths, strides, max_tokens, config)  # (B, N) each, in samples
    features = signal.new_zeros(batch, channels, max_tokens, len(dilations) * NUM_KERNELS, dtype=torch.float32)
    for b in range(batch):
        length = int(lengths[b])
        step = max(1, int(float(strides[b].detach()) // 32))  # count every step-th position
        series = signal[b, :, :length].float()  # (C, T_b)
        counted = -(-length // step)  # positions 0, step, 2 step, ... < length
        first = -(-start[b : b + 1] // step)  # (1, N) first counted position of each window, in counted units
        last = -(-end[b : b + 1] // step)  # (1, N) one past the last
        for d, dilation in enumerate(dilations):
            output = convolve(series, dilation, stride=step)  # (C, 84, T / step)
            above = (output > biases[d].to(series.device)[None, :, None]).float()
            ppv = window_means(above.flatten(0, 1)[None], torch.tensor([counted], device=signal.device), first, last)
            features[b, :, :, d * NUM_KERNELS : (d + 1) * NUM_KERNELS] = ppv[0].view(
                channels, NUM_KERNELS, max_tokens).transpose(1, 2) - 0.5  # (C, N, 84)
    return features  # (B, C, N, 84 D)
