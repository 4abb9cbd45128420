"""The STEP student encoder: shapes at every length, statistics compensation, adaptive patching, masking,
Hugging Face round trip, ablation switches, the embed() API and the embedding store."""

import numpy as np
import pytest
import torch
import transformers
import xarray as xr
from huggingface_hub.errors import StrictDataclassClassValidationError

from data_catalog.series import Series
from pipeline import STEPConfig, STEPEncoder
from pipeline.embed import embed_to_store, series_from_file
from pipeline.student.configuration_step import PRESETS
from pipeline.student.fine_structure import window_band_powers, window_kernel_activity, window_structure
from pipeline.student.modeling_step import STEPBlock, gaussian_windows, normalise_channels, patching_penalty, signed_log

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    patch_points=8, front_end_channels=8, structure_bands=3,  # band powers on, so every model-level test covers them
)


def tiny_model(seed: int = 0, **overrides) -> STEPEncoder:
    torch.manual_seed(seed)
    return STEPEncoder(STEPConfig(**{**TINY, **overrides})).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: with 2 threads, synchronisation (and sharing the cores) costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> STEPEncoder:
    return tiny_model()


# ---------------------------------------------------------------------------------------------------------------
# Shapes, finiteness, scale
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 58])
@pytest.mark.parametrize("length", [1, 7, 33, 1000, 16384])
def test_shapes_and_finiteness(model, length, channels):
    values = torch.randn(2, channels, length)
    with torch.no_grad():
        out = model(values, torch.tensor([length, max(1, length // 2)]))
    tokens = int(out.num_tokens.max())
    assert out.last_hidden_state.shape == (2, channels, tokens, 32)
    assert out.token_mask.shape == (2, tokens) and out.token_mask.dtype == torch.bool
    assert out.token_mask.sum(1).tolist() == out.num_tokens.tolist()
    assert out.pooled.shape == (2, 32)
    assert out.patching_loss.shape == () and out.strides.shape == (2,)
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooled).all()
    assert (out.num_tokens >= 1).all()


def test_million_samples(model):
    values = torch.randn(1, 2, 1_000_000).cumsum(-1)
    with torch.no_grad():
        out = model(values)
    assert torch.isfinite(out.pooled).all()
    assert 5 <= int(out.num_tokens[0]) <= 200  # the untrained stride starts near initial_num_tokens


def test_signed_log_spans_strain_to_counts():
    x = torch.tensor([-1e9, -1.0, -1e-21, 0.0, 1e-21, 1e-12, 1.0, 1e6, 1e9], dtype=torch.float64)
    y = signed_log(x, eps=1e-24, max_magnitude=1e9)
    assert torch.all(y.diff() > 0)  # strictly increasing: 1e-21 is told apart from 0
    assert y[-1] == pytest.approx(1.0) and y[0] == pytest.approx(-1.0) and y[3] == 0
    assert y[4] > 0.05  # strain is not squashed to nothing


def test_constant_and_extreme_channels_are_finite():
    config = STEPConfig(**TINY)
    time = 500
    rng = np.random.default_rng(0)
    channels = np.stack(
        [
            np.zeros(time),  # all zero
            np.full(time, 3.7),  # constant
            1e6 + 1e-3 * rng.standard_normal(time),  # near-constant: variation below float32 rounding of 1e6
            1e-21 * rng.standard_normal(time),  # gravitational-wave strain
            1e9 + 1e7 * rng.standard_normal(time),  # counts
        ]
    ).astype(np.float32)
    values = torch.from_numpy(channels)[None]  # (1, 5, T)
    padding = torch.zeros(1, 1, time, dtype=torch.bool)
    signal, statistics = normalise_channels(values, torch.tensor([time]), padding, config)
    assert torch.isfinite(signal).all() and torch.isfinite(statistics).all()
    assert (signal[0, :3] == 0).all()  # constant channels become exactly 0
    assert (statistics[0, :3, 1] == 0).all()  # and report std 0
    assert signal[0, 3:].std(dim=-1).allclose(torch.ones(2, dtype=torch.float64), atol=1e-2)  # strain normalised
    assert statistics.abs().max() <= 1.01
    with torch.no_grad():
        out = tiny_model()(values)
    assert torch.isfinite(out.pooled).all()


def test_affine_change_acts_only_through_statistics():
    values = torch.randn(1, 3, 2000).cumsum(-1)
    scaled = values * 1e3 - 7.0
    model = tiny_model()
    with torch.no_grad():
        assert not torch.allclose(model(values).pooled, model(scaled).pooled, atol=1e-3)  # statistics see it
        model.statistics_embedding.weight.zero_()
        model.statistics_embedding.bias.zero_()
        plain, affine = model(values), model(scaled)
    torch.testing.assert_close(plain.last_hidden_state, affine.last_hidden_state, atol=2e-4, rtol=0)
    torch.testing.assert_close(plain.strides, affine.strides)


# ---------------------------------------------------------------------------------------------------------------
# Adaptive patching
# ---------------------------------------------------------------------------------------------------------------


def test_gradients_reach_the_stride_mlp():
    model = tiny_model().train()
    out = model(torch.randn(3, 2, 3000), torch.tensor([3000, 1200, 50]))
    out.pooled.square().sum().backward()  # no patching loss: the gradient comes through the window positions
    for name, parameter in model.stride_predictor.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_window_positions_are_differentiable():
    """d patches / d stride from autograd agrees with a finite difference (the windows move smoothly with S).

    S = 23.37 puts no window edge on a whole sample, where the held signal's integral has a kink."""
    config = STEPConfig(**TINY)
    signal = torch.randn(1, 2, 400, dtype=torch.float64).cumsum(-1)
    lengths = torch.tensor([400])
    stride = torch.tensor([23.37], dtype=torch.float64, requires_grad=True)
    direction = torch.randn(1, 2, 10, config.patch_points)
    (gaussian_windows(signal, lengths, stride, 10, config) * direction).sum().backward()
    step = 1e-6
    plus = (gaussian_windows(signal, lengths, stride.detach() + step, 10, config) * direction).sum()
    minus = (gaussian_windows(signal, lengths, stride.detach() - step, 10, config) * direction).sum()
    assert stride.grad.item() == pytest.approx(((plus - minus) / (2 * step)).item(), rel=1e-4)


def test_window_points_are_sub_interval_means():
    """Stride 4, span 8, P = 8: point p of window n is the mean of the ramp over a 1-sample sub-interval."""
    config = STEPConfig(**{**TINY, "patch_points": 8})
    ramp = torch.arange(64, dtype=torch.float64)[None, None]  # (1, 1, 64)
    patches = gaussian_windows(ramp, torch.tensor([64]), torch.tensor([4.0], dtype=torch.float64), 16, config)
    offsets = (torch.arange(8) + 0.5) / 8 - 0.5
    taper = torch.exp(-0.5 * (offsets / config.window_std_fraction) ** 2)
    untapered = patches[0, 0] / taper  # (16, 8)
    # window n spans [4n - 2, 4n + 6); the sub-interval [a, a + 1) of the held ramp averages to a
    expected = 4 * torch.arange(16)[:, None] - 2 + torch.arange(8)[None, :]
    inside = (expected >= 0) & (expected < 64)
    torch.testing.assert_close(untapered[inside], expected[inside].double())
    assert (untapered[~inside] == 0).all()  # outside the series reads as 0


def test_window_structure_is_the_mean_squared_increment_inside_each_window():
    config = STEPConfig(**TINY, structure_lags=4)
    signal = torch.randn(1, 2, 300, dtype=torch.float64)
    length, stride = 250, 10.0  # samples 250..299 are padding, zero as normalise_channels leaves them
    signal[..., length:] = 0.0
    features = window_structure(signal, torch.tensor([length]), torch.tensor([stride], dtype=torch.float64), 25,
                                config)  # (1, 2, 25, 4)
    assert features.shape == (1, 2, 25, 4)
    for token in (0, 7, 24):  # first (clipped at 0), middle, last (clipped at the length)
        centre, span = (token + 0.5) * stride, 2 * stride
        start, end = int(max(centre - span / 2, 0)), int(min(centre + span / 2, length))
        for j, lag in enumerate((1, 2, 4, 8)):
            pairs = np.arange(start, min(end, length - lag))  # both samples of a pair inside the series
            x = signal[0].numpy()
            expected = np.log(((x[:, pairs + lag] - x[:, pairs]) ** 2).mean(axis=1) + 1e-6) / 8
            np.testing.assert_allclose(features[0, :, token, j].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_window_structure_of_a_short_series_does_not_depend_on_the_batch_padding():
    """Lags at or beyond the batch's padded length read the floor, as lags beyond a series' own length do, so a
    40-sample series gets the same structure alone as beside a 300-sample one (lag 64 and 128 exceed both 40 and
    the lone batch's T)."""
    config = STEPConfig(**TINY, structure_lags=8)
    short = torch.randn(1, 1, 40, dtype=torch.float64)
    alone = window_structure(short, torch.tensor([40]), torch.tensor([4.0], dtype=torch.float64), 10, config)
    batch = torch.zeros(2, 1, 300, dtype=torch.float64)
    batch[0, :, :40], batch[1] = short[0], torch.randn(1, 300, dtype=torch.float64)
    padded = window_structure(batch, torch.tensor([40, 300]), torch.tensor([4.0, 30.0], dtype=torch.float64), 10,
                              config)
    torch.testing.assert_close(padded[:1], alone)


def test_window_structure_sees_what_resampling_averages_away():
    """A Nyquist-rate oscillation disappears from the P-point patches of long windows, not from the structure."""
    config = STEPConfig(**TINY, structure_lags=3)
    t = torch.arange(4096, dtype=torch.float64)
    slow = torch.sin(2 * torch.pi * t / 1024)[None, None]
    fast = slow + 0.3 * (-1.0) ** t  # the same series with a sample-to-sample alternation on top
    lengths, strides = torch.tensor([4096]), torch.tensor([64.0], dtype=torch.float64)
    patches = [gaussian_windows(x, lengths, strides, 64, config) for x in (slow, fast)]
    structure = [window_structure(x, lengths, strides, 64, config) for x in (slow, fast)]
    assert (patches[1] - patches[0]).abs().max() < 0.02  # P = 8 points of 16-sample means: the alternation is gone
    assert (structure[1][..., 0] - structure[0][..., 0]).min() > 0.5  # lag 1: log(0.36) vs log(~4e-5), over 8


@pytest.mark.parametrize("per_octave", [1, 3])
def test_window_band_powers_match_a_numpy_periodogram_per_window(per_octave):
    config = STEPConfig(**{**TINY, "structure_bands": 4, "bands_per_octave": per_octave})
    signal = torch.zeros(2, 1, 300, dtype=torch.float64)
    signal[0, :, :250] = torch.randn(1, 250, dtype=torch.float64)  # series 0 has 250 samples, then padding
    signal[1] = torch.randn(1, 300, dtype=torch.float64)
    lengths, strides = torch.tensor([250, 300]), torch.tensor([10.0, 12.5], dtype=torch.float64)
    num_tokens = torch.tensor([25, 24])
    features = window_band_powers(signal, lengths, strides, num_tokens, config)  # (2, 1, 25, 4)
    assert features.shape == (2, 1, 25, 4)
    for b in range(2):
        x, stride, width = signal[b, 0, : int(lengths[b])].numpy(), float(strides[b]), round(2 * float(strides[b]))
        taper = np.hanning(width)
        freqs = np.fft.rfftfreq(width)
        for token in (0, 5, int(num_tokens[b]) - 1):  # first and last read edge samples beyond the series
            start = round((token + 0.5) * stride - width / 2)
            frame = x[np.clip(np.arange(start, start + width), 0, len(x) - 1)]
            power = np.abs(np.fft.rfft((frame - frame.mean()) * taper)) ** 2
            for k in range(4):
                low, high = 0.5 / 2 ** ((k + 1) / per_octave), 0.5 / 2 ** (k / per_octave)
                in_band = (freqs >= low) & ((freqs < high) | (k == 0))
                if not in_band.any():  # 20- or 25-sample windows have no bin in the 4th octave (0.031-0.0625)
                    assert features[b, 0, token, k] == pytest.approx(np.log(1e-6) / 8)
                    continue
                expected = np.log(2 * power[in_band].sum() / (width * (taper**2).sum()) + 1e-6) / 8
                assert features[b, 0, token, k].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert (features[0, :, 25:] == np.log(1e-6) / 8).all() and (features[1, :, 24:] == np.log(1e-6) / 8).all()


def test_window_band_powers_put_a_weak_tone_in_its_own_octave():
    """A weak tone at 0.1 cycles/sample under loud low-frequency noise raises the power of its octave, and only
    there, in the tokens where it sounds."""
    config = STEPConfig(**{**TINY, "structure_bands": 5})
    torch.manual_seed(0)
    t = torch.arange(8192, dtype=torch.float64)
    noise = torch.cumsum(torch.randn(8192, dtype=torch.float64), 0)  # random walk: power ~ 1 / f^2
    noise = (noise - noise.mean()) / noise.std()
    tone = torch.where((t >= 4096) & (t < 6144), 0.05 * torch.sin(2 * torch.pi * 0.1 * t), 0.0)
    lengths, strides, num_tokens = torch.tensor([8192]), torch.tensor([128.0], dtype=torch.float64), torch.tensor([64])
    bands = window_band_powers((noise + tone)[None, None], lengths, strides, num_tokens, config)[0, 0]  # (64, 5)
    with_tone, without = slice(34, 46), slice(4, 28)  # tokens well inside and well outside the tone
    jump = bands[with_tone].mean(dim=0) - bands[without].mean(dim=0)  # (5,)
    assert jump[2] > 0.25  # octave 0.0625-0.125 cycles/sample: log power up by more than 2 (over 8)
    assert jump[[0, 1, 3, 4]].abs().max() < 0.05  # the other octaves do not see it
    # in third octaves, only the third holding 0.1 (0.099-0.125 cycles/sample, band 6) rises
    thirds = STEPConfig(**{**TINY, "structure_bands": 12, "bands_per_octave": 3})
    bands = window_band_powers((noise + tone)[None, None], lengths, strides, num_tokens, thirds)[0, 0]  # (64, 12)
    jump = bands[with_tone].mean(dim=0) - bands[without].mean(dim=0)  # (12,)
    assert jump.argmax() == 6 and jump[6] > 0.25
    # the rest stay within the noise of bands a few bins wide (octaves: 0.05, fewer bins per band here)
    assert jump[[k for k in range(12) if k not in (5, 6, 7)]].abs().max() < 0.1


def test_window_kernel_activity_is_the_ppv_of_each_kernel_inside_each_window():
    """Per token window, the share of positions where MiniRocket kernel k at dilation d exceeds its bias (minus
    1/2), from the kernel's output over the whole series with zeros beyond its ends."""
    from pipeline.minirocket import KERNELS

    biases = torch.linspace(-1, 1, 2 * 84).tolist()
    config = STEPConfig(**TINY, structure_kernel_dilations=[1, 3], structure_kernel_biases=biases)
    signal = torch.zeros(1, 2, 300, dtype=torch.float64)
    length, stride = 250, 10.0
    signal[..., :length] = torch.randn(1, 2, length, dtype=torch.float64)
    features = window_kernel_activity(signal, torch.tensor([length]), torch.tensor([stride], dtype=torch.float64),
                                      25, config)  # (1, 2, 25, 168)
    assert features.shape == (1, 2, 25, 2 * 84)
    x = signal[0, :, :length].numpy()
    for d, dilation in enumerate((1, 3)):
        padded = np.pad(x, ((0, 0), (4 * dilation, 4 * dilation)))
        for k in (0, 41, 83):
            weights = KERNELS[k, 0].numpy()
            output = sum(weights[j] * padded[:, j * dilation : j * dilation + length] for j in range(9))  # (2, 250)
            for token in (0, 12, 24):
                centre = (token + 0.5) * stride
                start, end = int(max(centre - stride, 0)), int(min(centre + stride, length))
                expected = (output[:, start:end] > biases[d * 84 + k]).mean(axis=1) - 0.5
                np.testing.assert_allclose(features[0, :, token, d * 84 + k].numpy(), expected, atol=1e-6)
    # long strides count every floor(S / 32)-th position only: S = 200 -> every 6th
    signal = torch.randn(1, 1, 3000, dtype=torch.float64)
    features = window_kernel_activity(signal, torch.tensor([3000]), torch.tensor([200.0], dtype=torch.float64), 15,
                                      config)  # (1, 1, 15, 168)
    x = signal[0].numpy()
    padded = np.pad(x, ((0, 0), (4, 4)))
    output = sum(KERNELS[5, 0].numpy()[j] * padded[:, j : j + 3000] for j in range(9))  # dilation 1, kernel 5
    for token in (0, 7, 14):
        start, end = int(max((token + 0.5) * 200 - 200, 0)), int(min((token + 0.5) * 200 + 200, 3000))
        counted = [p for p in range(start, end) if p % 6 == 0]
        expected = (output[0, counted] > biases[5]).mean() - 0.5
        assert features[0, 0, token, 5].item() == pytest.approx(expected, abs=1e-6)


def test_kernel_activity_enters_tokens_and_the_kernels_part_of_the_embedding():
    """The kernel activities are token inputs and their own embedding part, `kernels` (mean, std, max over tokens
    of the forward pass's kernel_activity); `structure` pools the lags and bands alone."""
    plain = tiny_model(structure_lags=2, structure_bands=0)
    with_kernels = tiny_model(structure_lags=2, structure_bands=0, structure_kernel_dilations=[1, 2])
    assert plain.kernel_embedding is None and with_kernels.kernel_embedding.in_features == 168
    series = [np.random.default_rng(0).normal(size=(1, 200)).astype(np.float32)]
    structure = with_kernels.embed(series, None, pooling="structure")
    assert structure.shape == (1, 3 * 2) == (1, 3 * with_kernels.config.fine_structure_width)
    kernels = with_kernels.embed(series, None, pooling="kernels")
    assert kernels.shape == (1, 3 * 168) == (1, 3 * with_kernels.config.kernel_activity_width)
    with torch.no_grad():
        out = with_kernels(torch.from_numpy(series[0])[None])
    activity = out.kernel_activity[0, 0]  # (N, 168)
    expected = torch.cat([activity.mean(0), activity.std(0, unbiased=False), activity.amax(0)])
    np.testing.assert_allclose(kernels[0], expected.numpy(), atol=1e-5)
    means = kernels[0, :168]  # the kernels' PPV - 1/2, in [-1/2, 1/2]
    assert np.all(np.abs(means) <= 0.5) and np.abs(means).max() > 0
    both = with_kernels.embed(series, None, pooling="structure+kernels")
    np.testing.assert_allclose(both, np.concatenate([structure, kernels], axis=1), atol=1e-6)
    with pytest.raises(ValueError, match="kernel activities"):
        plain.embed(series, None, pooling="mean+kernels")
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="has 'kernels' but"):
        STEPConfig(**TINY, embedding_pooling="mean+kernels")
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="structure_kernel_biases"):
        STEPConfig(**TINY, structure_kernel_dilations=[1], structure_kernel_biases=[0.0] * 10)
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="structure_kernel_dilations"):
        STEPConfig(**TINY, structure_kernel_dilations=[0])


def test_structure_lags_switch_and_bounds():
    with_structure, without = tiny_model(structure_lags=6), tiny_model(structure_lags=0, structure_bands=0)
    assert with_structure.structure_embedding.in_features == 6 and without.structure_embedding is None
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="structure_lags"):
        STEPConfig(**TINY, structure_lags=-1)
    with_bands = tiny_model(structure_bands=5)
    assert with_bands.band_embedding.in_features == 5 and without.band_embedding is None
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="structure_bands"):
        STEPConfig(**{**TINY, "structure_bands": 49})
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="bands_per_octave"):
        STEPConfig(**{**TINY, "bands_per_octave": 0})
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="stats_compensation is off"):
        STEPConfig(**{**TINY, "stats_compensation": False})  # the default pooling appends statistics
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="no lag or band inputs"):
        STEPConfig(**{**TINY, "structure_bands": 0, "embedding_pooling": "mean+structure"})


def test_one_channel_shortcut_equals_full_channel_attention():
    block = STEPBlock(STEPConfig(**TINY)).eval()
    hidden, mask = torch.randn(3, 1, 9, 32), torch.rand(3, 9) > 0.2
    mask[:, 0] = True
    with torch.no_grad():
        shortcut = block(hidden, mask)
        # the general path: attention over a sequence of one channel
        x = block.time_norm(hidden).reshape(3, 9, 32)
        reference = hidden + block.time_attention(x, key_mask=mask).view(3, 1, 9, 32)
        x = block.channel_norm(reference).transpose(1, 2).reshape(27, 1, 32)
        reference = reference + block.channel_attention(x).view(3, 9, 1, 32).transpose(1, 2)
        reference = reference + block.mlp(block.mlp_norm(reference))
    torch.testing.assert_close(shortcut, reference, atol=1e-6, rtol=1e-5)


def test_penalties_zero_inside_bounds_positive_outside():
    config = STEPConfig(**TINY)
    lengths = torch.tensor([100 * 50, 1000 * 50, 2 * 3, 10 * 300])
    strides = torch.tensor([100.0, 1000.0, 2.0, 10.0], dtype=torch.float64)  # N = 50, 50, 3, 300
    per_series = [patching_penalty(strides[i : i + 1], lengths[i : i + 1], config).item() for i in range(4)]
    assert per_series[0] == 0  # S = 100, N = 50: inside
    assert all(p > 0 for p in per_series[1:])  # S > 400; N < 5; N > 200
    edge = patching_penalty(torch.tensor([400.0], dtype=torch.float64), torch.tensor([400 * 200]), config)
    assert edge.item() == 0  # exactly on the bounds


def test_penalty_is_zero_when_forced_or_fixed(model):
    values = torch.randn(2, 1, 5)  # N <= 5 would be penalised by the adaptive stride
    with torch.no_grad():
        assert model(values).patching_loss > 0
        assert model(values, num_tokens=torch.tensor([2, 3])).patching_loss == 0
        assert tiny_model(adaptive_patching=False)(values).patching_loss == 0


@pytest.mark.parametrize("num_tokens", [[1, 1], [5, 200], [37, 3], [1500, 2]])
def test_forcing_the_token_count(model, num_tokens):
    lengths = torch.tensor([3000, 777])
    with torch.no_grad():
        out = model(torch.randn(2, 2, 3000), lengths, num_tokens=torch.tensor(num_tokens))
    assert out.num_tokens.tolist() == num_tokens
    assert out.token_mask.sum(1).tolist() == num_tokens
    assert out.last_hidden_state.shape[2] == max(num_tokens)
    torch.testing.assert_close(out.strides, lengths / torch.tensor(num_tokens))


def test_length_one_gives_one_valid_token(model):
    with torch.no_grad():
        out = model(torch.tensor([[[4.2]]]))
    assert out.num_tokens.tolist() == [1] and torch.isfinite(out.pooled).all()


# ---------------------------------------------------------------------------------------------------------------
# Masking: padding never changes a result
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("forced", [False, True])
def test_mixed_length_batch_equals_one_at_a_time(model, forced):
    lengths = [1000, 1, 33, 517, 7]
    values = torch.full((5, 3, 1000), float("nan"))  # padding that would poison any result it touched
    singles = []
    for row, length in enumerate(lengths):
        values[row, :, :length] = torch.randn(3, length) * (row + 1) + row
    num_tokens = torch.tensor([40, 1, 6, 13, 2]) if forced else None
    with torch.no_grad():
        batch = model(values, torch.tensor(lengths), num_tokens=num_tokens)
        for row, length in enumerate(lengths):
            forced_row = None if num_tokens is None else num_tokens[row : row + 1]
            singles.append(model(values[row : row + 1, :, :length], num_tokens=forced_row))
    for row, single in enumerate(singles):
        tokens = int(single.num_tokens[0])
        assert int(batch.num_tokens[row]) == tokens
        torch.testing.assert_close(batch.pooled[row], single.pooled[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            batch.last_hidden_state[row, :, :tokens], single.last_hidden_state[0], atol=1e-5, rtol=1e-5
        )
        assert (batch.last_hidden_state[row, :, tokens:] == 0).all()


def test_same_weights_take_any_channel_count(model):
    """Channels are exchangeable: permuting them permutes the per-channel features and keeps the embedding."""
    values = torch.randn(1, 4, 500)
    permutation = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out, permuted = model(values), model(values[:, permutation])
    torch.testing.assert_close(permuted.pooled, out.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(permuted.last_hidden_state, out.last_hidden_state[:, permutation], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face format, presets, ablations
# ---------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact_and_works_through_automodel(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    loaded = transformers.AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is STEPEncoder
    assert isinstance(transformers.AutoConfig.from_pretrained(tmp_path), STEPConfig)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    values = torch.randn(2, 3, 800)
    with torch.no_grad():
        assert torch.equal(model(values).pooled, loaded.eval()(values).pooled)


def test_presets():
    small = STEPConfig.from_preset("cpu-small")
    paper = STEPConfig.from_preset("paper", num_hidden_layers=17)
    assert (small.hidden_size, small.num_hidden_layers) == (64, 4)
    assert (paper.hidden_size, paper.num_hidden_layers) == (768, 17)
    assert STEPConfig().to_dict()["hidden_size"] == PRESETS["cpu-small"]["hidden_size"]  # the default is cpu-small
    with torch.device("meta"):  # count parameters without allocating 100M+ of them
        paper_parameters = sum(p.numel() for p in STEPEncoder(STEPConfig.from_preset("paper")).parameters())
    assert 80e6 < paper_parameters < 150e6
    with pytest.raises(ValueError, match="unknown STEP preset"):
        STEPConfig.from_preset("huge")
    with pytest.raises(StrictDataclassClassValidationError, match="multiple of num_attention_heads"):
        STEPConfig(hidden_size=130)


def test_adaptive_patching_switch():
    adaptive, fixed = tiny_model(), tiny_model(adaptive_patching=False, fixed_stride=16.0)
    assert any(name.startswith("stride_predictor.") for name, _ in adaptive.named_parameters())
    assert not any(name.startswith("stride_predictor.") for name, _ in fixed.named_parameters())
    with torch.no_grad():
        out = fixed(torch.randn(2, 1, 1600), torch.tensor([1600, 160]))
    assert out.strides.tolist() == [16.0, 16.0] and out.num_tokens.tolist() == [100, 10]


def test_stats_compensation_switch():
    with_stats, without = tiny_model(), tiny_model(stats_compensation=False, embedding_pooling="mean+std+max")
    assert hasattr(with_stats, "statistics_embedding") and with_stats.statistics_embedding is not None
    assert without.statistics_embedding is None
    assert sum(p.numel() for p in with_stats.parameters()) - sum(p.numel() for p in without.parameters()) == 3 * 32
    values = torch.randn(1, 2, 1000)
    with torch.no_grad():
        # without normalisation a scale change reaches the front end directly
        assert not torch.allclose(without(values).pooled, without(values * 1e3).pooled, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# embed() and the embedding store
# ---------------------------------------------------------------------------------------------------------------


def test_embed_matches_forward_in_input_order(model):
    rng = np.random.default_rng(0)
    series = [rng.standard_normal(n).astype(np.float32) for n in (300, 5, 2000, 40, 301)]
    series.insert(2, rng.standard_normal((3, 90)))  # a multichannel series in the middle, float64
    embeddings = model.embed(series, batch_size=2, pooling="pooled")
    assert embeddings.shape == (6, 32) and embeddings.dtype == np.float32
    pooled = model.embed(series, batch_size=2, pooling="mean+std+max+stats")
    assert pooled.shape == (6, 3 * 32 + 2)
    for i, x in enumerate(series):
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, np.shape(x)[-1])[None]
        with torch.no_grad():
            out = model(x)
        np.testing.assert_allclose(embeddings[i], out.pooled[0].numpy(), atol=1e-5)
        tokens, statistics = out.last_hidden_state[0], out.statistics[0]  # (C, N, D), (C, 2)
        expected = torch.cat([tokens.mean(1), tokens.std(1, unbiased=False), tokens.amax(1), statistics], -1)
        np.testing.assert_allclose(pooled[i], expected.mean(0).numpy(), atol=1e-4)  # channels averaged
    assert np.array_equal(model.embed(series, batch_size=2), model.embed(series, pooling=model.config.embedding_pooling))
    assert model.embed([]).shape == (0, 32)


def test_pool_embedding_ignores_padding_and_keeps_channels_apart_when_asked():
    from pipeline.student.pooling import pool_embedding

    tokens = torch.randn(2, 3, 5, 4)  # (B, C, N, D)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    padded = tokens.clone()
    padded[1, :, 2:] = 1e6  # padding must not reach any part
    for pooling in ("mean", "mean+std", "mean+max", "std+max"):
        np.testing.assert_allclose(pool_embedding(padded, mask, pooling), pool_embedding(tokens, mask, pooling))
    short = pool_embedding(tokens[1:, :, :2], mask[1:, :2], "mean+max")
    np.testing.assert_allclose(pool_embedding(tokens, mask, "mean+max")[1:], short, rtol=1e-6)
    kept = pool_embedding(tokens, mask, "mean", keep_channels=True)  # (B, C D) in channel order
    assert kept.shape == (2, 12)
    np.testing.assert_allclose(kept[0, 4:8], tokens[0, 1].mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match=r"pooling 'mean\+median'"):
        pool_embedding(tokens, mask, "mean+median")
    with pytest.raises(ValueError, match="needs the series statistics"):
        pool_embedding(tokens, mask, "mean+stats")


def test_std_pooling_has_a_finite_gradient_for_one_token_or_identical_tokens():
    from pipeline.student.pooling import token_moment

    tokens = torch.randn(3, 2, 4, 5, requires_grad=True)  # (B, C, N, F)
    mask = torch.tensor([[True, False, False, False], [True] * 4, [True] * 4])  # series 0: one valid token
    with torch.no_grad():
        tokens[2] = tokens[2, :, :1]  # series 2: four identical tokens
    std = token_moment(tokens, mask, "std")
    assert (std[0] == 0).all() and (std[2] == 0).all() and (std[1] > 0).all()
    std.sum().backward()
    assert torch.isfinite(tokens.grad).all()
    np.testing.assert_allclose(std[1].detach(), tokens[1].detach().std(dim=1, unbiased=False), rtol=1e-5)


def test_structure_pooling_reads_the_fine_structure_inputs(model):
    """`structure` appends mean, std and max over valid tokens of the inputs the forward pass returns as
    fine_structure; alone it is the no-network baseline; a model without fine structure refuses it."""
    from pipeline.student.pooling import pool_embedding

    rng = np.random.default_rng(3)
    series = [rng.standard_normal((2, n)).astype(np.float32) for n in (300, 900)]
    structure = model.embed(series, pooling="structure")
    assert structure.shape == (2, 3 * 3)  # TINY: 3 octave bands, no lags; mean, std, max
    for i, x in enumerate(series):
        with torch.no_grad():
            out = model(torch.from_numpy(x)[None])
        f = out.fine_structure[0]  # (C, N, 3)
        expected = torch.cat([f.mean(1), f.std(1, unbiased=False), f.amax(1)], -1).mean(0)  # channels averaged
        np.testing.assert_allclose(structure[i], expected.numpy(), atol=1e-5)
    both = model.embed(series, pooling="mean+structure")
    np.testing.assert_allclose(both[:, 32:], structure, atol=1e-5)
    tokens, mask = torch.randn(1, 1, 4, 8), torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs the student's lag and band inputs"):
        pool_embedding(tokens, mask, "mean+structure")
    with pytest.raises(ValueError, match="needs the student's lag and band inputs"):
        tiny_model(structure_bands=0).embed(series, pooling="structure")


def test_embedding_size_pools_the_projected_tokens_and_survives_save_and_load(tmp_path):
    """embedding_size E: mean/std/max pool Linear(hidden, E) of the final tokens (3 E numbers), stats and structure
    are appended as before; the projection is saved with the model; a negative size is refused by name."""
    model = tiny_model(embedding_size=5)
    rng = np.random.default_rng(4)
    series = [rng.standard_normal(n).astype(np.float32) for n in (300, 700)]
    embedding = model.embed(series, pooling="mean+std+max+stats+structure")
    assert embedding.shape == (2, 3 * 5 + 2 + 3 * 3)
    with torch.no_grad():
        out = model(torch.from_numpy(series[0])[None, None])
        projected = model.embedding_projection(out.last_hidden_state[0, 0])  # (N, E)
    np.testing.assert_allclose(embedding[0, :5], projected.mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(embedding[0, 10:15], projected.amax(0).numpy(), atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(loaded.embed(series), model.embed(series), atol=1e-6)
    assert tiny_model().embed(series, pooling="mean").shape == (2, 32)  # 0: the tokens themselves
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="embedding_size"):
        STEPConfig(**{**TINY, "embedding_size": -1})


def test_embed_keep_channels_orders_channels_and_needs_one_channel_count(model):
    rng = np.random.default_rng(1)
    series = [rng.standard_normal((3, 200)).astype(np.float32) for _ in range(2)]
    kept = model.embed(series, pooling="mean", keep_channels=True)
    assert kept.shape == (2, 3 * 32)
    swapped = model.embed([s[[1, 0, 2]] for s in series], pooling="mean", keep_channels=True)
    assert not np.allclose(kept, swapped, atol=1e-4)  # which channel is which now matters
    np.testing.assert_allclose(kept.reshape(2, 3, 32).mean(1), model.embed(series, pooling="mean"), atol=1e-5)
    with pytest.raises(ValueError, match="same channel count"):
        model.embed([series[0], series[1][:2]], keep_channels=True)
    with pytest.raises(StrictDataclassClassValidationError, match="embedding_pooling"):
        STEPConfig(embedding_pooling="mean+median")


def test_channel_identity_only_for_a_fixed_montage(tmp_path):
    m = tiny_model(montage_channels=4)
    x = torch.randn(2, 3, 200)
    swap = [1, 0, 2]
    with torch.no_grad():
        free, montage = m(x), m(x, fixed_montage=True)
        # without a montage channels are interchangeable: permuting them permutes the tokens
        torch.testing.assert_close(m(x[:, swap]).last_hidden_state, free.last_hidden_state[:, swap])
        # with one, channel c carries identity c, so the first two channels' roles differ
        swapped = m(x[:, swap], fixed_montage=True).last_hidden_state
        assert not torch.allclose(swapped, montage.last_hidden_state[:, swap], atol=1e-3)
        assert not torch.allclose(free.pooled, montage.pooled, atol=1e-3)
        # a model without identities ignores the flag
        plain = tiny_model()
        torch.testing.assert_close(plain(x, fixed_montage=True).pooled, plain(x).pooled)
        # embed(keep_channels=True) is the montage forward pass
        series = [s.numpy() for s in x]
        np.testing.assert_allclose(m.embed(series, pooling="pooled", keep_channels=True), montage.pooled, atol=1e-5)
        np.testing.assert_allclose(m.embed(series, pooling="pooled"), free.pooled, atol=1e-5)
    with pytest.raises(ValueError, match="montage of 5 channels needs montage_channels >= 5; this model has 4"):
        m(torch.randn(1, 5, 100), fixed_montage=True)
    m(torch.randn(1, 5, 100))  # any channel count outside a montage
    m.save_pretrained(tmp_path)
    loaded = STEPEncoder.from_pretrained(tmp_path).eval()
    assert loaded.config.montage_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, fixed_montage=True).pooled, montage.pooled)
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="montage_channels"):
        STEPConfig(**TINY, montage_channels=-1)


def test_embed_restores_training_mode():
    model = tiny_model().train()
    model.embed([np.ones(10)])
    assert model.training


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([1.0, np.nan, 2.0]), "series 1: non-finite value nan at channel 0, sample 1"),
        (np.zeros((2, 3, 4)), r"series 1: expected shape \(time,\) or \(channels, time\)"),
        (np.zeros((2, 0)), "series 1: empty"),
        (np.array([1e40]), "series 1: non-finite value inf"),  # overflows float32
    ],
)
def test_embed_rejects_bad_series_naming_them(model, bad, message):
    with pytest.raises(ValueError, match=message):
        model.embed([np.ones(10), bad])


def test_embed_to_store_streams_blocks_readable_by_xarray(model, tmp_path):
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 400, size=37)
    series = [Series(f"series-{i}" + "x" * (i % 4), rng.standard_normal((2, n)).astype(np.float32), 50.0)
              for i, n in enumerate(lengths)]
    output = embed_to_store(model, iter(series), tmp_path / "embeddings.zarr", batch_size=2)  # blocks of 16
    store = xr.open_zarr(output, consolidated=True)
    assert store.embedding.dims == ("series", "dim") and store.embedding.shape == (37, 3 * 32 + 2)
    assert store.embedding.dtype == np.float32
    assert store.series_id.dtype.kind == "U"
    assert list(store.series_id.values) == [s.id for s in series]
    np.testing.assert_allclose(store.embedding.values, model.embed([s.values for s in series]), atol=1e-6)
    assert store.attrs["model"] == "unsaved STEPEncoder" and store.attrs["hidden_size"] == 32


def test_embed_to_store_names_a_bad_series_by_id(model, tmp_path):
    series = [Series("good", np.ones((1, 10), np.float32), None), Series("broken", np.full((1, 5), np.inf), None)]
    with pytest.raises(ValueError, match="series 'broken': non-finite"):
        embed_to_store(model, series, tmp_path / "e.zarr")


def test_series_from_file(tmp_path):
    np.save(tmp_path / "rows.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    np.savez(tmp_path / "members.npz", a=np.ones(5), b=np.zeros((2, 7)))
    rows = list(series_from_file(tmp_path / "rows.npy", sampling_rate=10.0, stacked=True))
    assert [s.id for s in rows] == ["rows/0", "rows/1", "rows/2"] and rows[1].values.shape == (1, 4)
    # the catalog's convention: without `stacked`, a 2-D array is one (channels, time) series
    (one,) = series_from_file(tmp_path / "rows.npy")
    assert one.id == "rows/0" and one.values.shape == (3, 4) and np.array_equal(one.values[2], [8, 9, 10, 11])
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32))
    assert [s.values.shape for s in series_from_file(tmp_path / "cube.npy", stacked=True)] == [(3, 4), (3, 4)]
    with pytest.raises(ValueError, match="pass --stacked"):
        list(series_from_file(tmp_path / "cube.npy"))
    members = list(series_from_file(tmp_path / "members.npz"))
    assert [(s.id, s.values.shape) for s in members] == [("a", (1, 5)), ("b", (2, 7))]
    with pytest.raises(ValueError, match="expected a .npy or .npz file"):
        list(series_from_file(tmp_path / "x.csv"))


def test_kernel_components_project_the_kernels_part_on_corpus_principal_axes(tmp_path):
    """kernel_components M: the `kernels` part is the pooled activities, standardised over the fitting sample and
    projected on their M leading principal axes (numpy's SVD of the same numbers); refused before it is fitted;
    saved and loaded with the weights; a width beyond the activities is refused by name."""
    model = tiny_model(structure_lags=2, structure_bands=0, structure_kernel_dilations=[1, 2], kernel_components=3,
                       embedding_pooling="mean+kernels")
    rng = np.random.default_rng(5)
    series = [rng.standard_normal((1, int(n))).astype(np.float32) for n in rng.integers(100, 600, size=12)]
    with pytest.raises(RuntimeError, match="not fitted"):
        model.embed(series[:2])
    model.fit_kernel_components(series)
    raw = model.embed(series, pooling="kernels", raw_kernels=True).astype(np.float64)  # (12, 3 x 168)
    assert raw.shape == (12, 3 * 168)
    mean, scale = raw.mean(0), np.where(raw.std(0) > 0, raw.std(0), 1.0)
    _, singular, axes = np.linalg.svd((raw - mean) / scale, full_matrices=False)
    projected = model.embed(series, pooling="kernels")
    assert projected.shape == (12, 3)
    expected = (raw - mean) / scale @ axes[:3].T
    np.testing.assert_allclose(np.abs(projected), np.abs(expected), atol=1e-3)  # up to each axis' sign
    np.testing.assert_allclose(projected.std(0), singular[:3] / np.sqrt(12), rtol=1e-3)  # the leading variances
    embedding = model.embed(series)  # mean + kernels: the token mean, then the 3 components
    np.testing.assert_allclose(embedding[:, -3:], projected, atol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = STEPEncoder.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(loaded.embed(series), embedding, atol=1e-6)
    with pytest.raises(ValueError, match="kernel_components 0"):
        tiny_model(structure_kernel_dilations=[1]).fit_kernel_components(series)
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="kernel_components"):
        STEPConfig(**TINY, structure_kernel_dilations=[1], kernel_components=3 * 84 + 1)
