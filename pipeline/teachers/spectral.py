"""Classical EEG features as the default brain-domain teacher. No weights, no learning: named for what it is.

No EEG foundation model with weights installs here (BrainOmni, CBraMod, LaBraM need downloads; add one as a
plug-in, see pipeline/teachers/__init__.py). This teacher gives the student the quantities sleep and motor-imagery
work has relied on for decades, per window and per channel:
  - log10 band powers, delta 0.5-4, theta 4-8, alpha 8-13, beta 13-30, gamma 30-45 Hz (`bands`),
  - relative band powers (each band over the sum of the bands),
  - spectral entropy over the bands' range (normalised to [0, 1]),
  - Hjorth activity (log10 variance), mobility and complexity.
That is 2 * n_bands + 4 = 14 features per channel. Channels are then reduced by mean and standard deviation
across channels (feature_dim 28; with one channel the std half is 0), so the dimension does not depend on the
montage (1 to 58 channels in our data).

Grid: windows of `window_seconds` (default 2 s: 0.5 Hz resolution, enough for delta) at the nominal native rate
of 256 Hz, one token per half window (hop 1 s). Token i's window is centred on its cell [i * hop, (i + 1) * hop);
the series is mirrored (reflect padding) beyond its ends, so a series shorter than a window still gets a token.
Series within a factor 4 of 256 Hz (e.g. 100 Hz sleep EEG, 250 Hz motor imagery) are resampled; others
(gravitational-wave strain at 4 kHz, light curves), and series of unknown rate, are taken as 256 Hz, so "bands"
become relative frequency ranges.
Scale: each channel is standardised over the whole series first (float64, base.standardized), so band powers and
Hjorth activity are relative to the channel's own variance (activity 0 for a window as loud as the series
average), and the features are the same for x, 1e-21 * x and 1e6 * x; before, 1e-21 strain (powers ~1e-42) sat
at an absolute floor and lost its band powers. The absolute level is what the student's statistics compensation
supplies; the relative powers, entropy, mobility and complexity never depended on it.
Power spectra: scipy.signal.periodogram with a Hann window after removing each window's mean.
"""

import math

import numpy as np
import scipy.signal
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.teachers.base import WindowedTeacher, mean_and_std_over_channels
from schemas.teachers import SpectralTeacher

# Floor added to powers before log10, so flat windows and constant channels stay finite. Powers are relative to the
# channel's variance (standardised input), so this is relative too: 120 dB below the series' average power.
POWER_FLOOR = 1e-12
MAX_CONTEXT_TOKENS = 4096  # tokens per window for very long series (about 68 minutes at the defaults)


class SpectralTeacherAdapter(WindowedTeacher):
    domain = "brain"
    input_scaling = "standard"  # powers relative to each channel's variance: no dependence on units

    def __init__(self, name: str, spec: SpectralTeacher):
        super().__init__(name, spec)
        self.native_rate = float(spec.native_rate)
        self.samples_per_token = max(1, round(spec.window_seconds * spec.native_rate / 2))  # the hop
        self.window = 2 * self.samples_per_token
        self.max_context = MAX_CONTEXT_TOKENS * self.samples_per_token
        self.freqs = np.fft.rfftfreq(self.window, d=1 / self.native_rate)
        self.band_masks = [(self.freqs >= low) & (self.freqs < high) for low, high in spec.bands.values()]
        for band, mask in zip(spec.bands, self.band_masks):
            if not mask.any():
                raise ValueError(
                    f"teacher {name!r}: band {band!r} {spec.bands[band]} Hz holds no frequency bin of a "
                    f"{spec.window_seconds} s window (resolution {self.freqs[1]:.3g} Hz); lengthen window_seconds"
                )
        self.features_per_channel = 2 * len(spec.bands) + 4
        self.feature_dim = 2 * self.features_per_channel

    def encode_window(self, windows: np.ndarray) -> np.ndarray:
        x = windows[:, 0].astype(np.float64)  # (items, T)
        hop, window = self.samples_per_token, self.window
        n_tokens = max(1, math.ceil(x.shape[1] / hop))
        left = (window - hop) // 2
        right = (n_tokens - 1) * hop + window - x.shape[1] - left
        padded = np.pad(x, ((0, 0), (left, right)), mode="reflect")  # (items, (n_tokens - 1) * hop + window)
        frames = sliding_window_view(padded, window, axis=-1)[:, ::hop]  # (items, n_tokens, window)
        return self.channel_features(frames).astype(np.float32)  # (items, n_tokens, features_per_channel)

    def channel_features(self, frames: np.ndarray) -> np.ndarray:
        """(..., window) samples of one channel -> (..., 2 * n_bands + 4) features."""
        _, psd = scipy.signal.periodogram(frames, fs=self.native_rate, window="hann", detrend="constant", axis=-1)
        resolution = self.freqs[1]
        band_power = np.stack([psd[..., mask].sum(-1) * resolution for mask in self.band_masks], axis=-1)
        total = band_power.sum(-1, keepdims=True)
        relative = np.divide(band_power, total, out=np.zeros_like(band_power), where=total > 0)

        in_bands = np.logical_or.reduce(self.band_masks)
        in_band_psd = psd[..., in_bands]  # (..., bins)
        p = np.divide(in_band_psd, in_band_psd.sum(-1, keepdims=True), out=np.zeros_like(in_band_psd),
                      where=in_band_psd.sum(-1, keepdims=True) > 0)
        entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1) / math.log(max(in_band_psd.shape[-1], 2))

        centred = frames - frames.mean(-1, keepdims=True)
        var_x = centred.var(-1)
        var_dx = np.diff(centred, axis=-1).var(-1)
        var_ddx = np.diff(centred, n=2, axis=-1).var(-1)
        mobility = np.sqrt(np.divide(var_dx, var_x, out=np.zeros_like(var_x), where=var_x > 0))
        mobility_dx = np.sqrt(np.divide(var_ddx, var_dx, out=np.zeros_like(var_dx), where=var_dx > 0))
        complexity = np.divide(mobility_dx, mobility, out=np.zeros_like(mobility), where=mobility > 0)

        return np.concatenate(
            [
                np.log10(band_power + POWER_FLOOR),
                relative,
                entropy[..., None],
                np.log10(var_x + POWER_FLOOR)[..., None],  # Hjorth activity
                mobility[..., None],
                complexity[..., None],
            ],
            axis=-1,
        )

    pool_channels = staticmethod(mean_and_std_over_channels)  # (batch, channels, tokens, F) -> (batch, tokens, 2F)

    def describe(self) -> dict:
        return {
            "kind": "spectral",
            "model_id": "spectral:band-powers-hjorth",
            "revision": None,
            "weights_sha256": "none",
            "layer": None,
            "native_rate": self.native_rate,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "window_samples": self.window,
            "bands": {band: list(edges) for band, edges in self.spec.bands.items()},
            "packages": {"numpy": np.__version__, "scipy": scipy.__version__},
        }
