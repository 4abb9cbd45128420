"""The contract every teacher fulfils (`TeacherAdapter`) and the machinery most teachers share (`WindowedTeacher`).

A teacher turns a batch of series, recorded at any sampling rate, into token features (batch, tokens, features)
on a uniform grid of the original time axis: token i covers [i / token_rate, (i + 1) / token_rate) seconds.
The feature store pre-allocates its layout from `num_tokens`, so that count is exact, never an estimate.

Unknown sampling rate (`sampling_rate=None`, e.g. UCR series with no recorded rate): the teacher takes the
samples as they are, as if recorded at its native rate, and never resamples (`rate_plan` returns "as_is" whatever
the policy); `num_tokens` and `encode` give what a rate equal to the native rate would give, and `token_rate`
counts tokens per sample, so token times come out in samples instead of seconds.

Physical scale: a teacher's features do not depend on the series' units. x, 1e-21 * x and 1e6 * x give the same
features (to float32 rounding), because every built-in adapter rescales each channel by its own scale, computed in
float64, before the model (`peak_scaled`, `standardized`, or the model's own min-max or mean scaling redone in
float64), and every floor that keeps a flat series finite is relative to the series' own magnitude
(`RELATIVE_FLOOR`), never an absolute number in the model's units (those lose 1e-21 strain entirely). The
absolute level is what the student's statistics compensation supplies. Plug-ins opt in with `input_scaling`.

`WindowedTeacher` does what is common to the built-in teachers, top to bottom in `encode`:
  1. rate: resample to the native rate (scipy polyphase), or reinterpret the samples as native (a time stretch),
     per the spec's rate policy (`rate_plan`). Rate-agnostic teachers (native_rate None) take samples as they are.
     Then `normalize_series` rescales each channel (see "Physical scale" above; the subclass picks how).
  2. channels: audio and general time-series teachers see every channel on its own and average the token
     features over channels, so the feature dimension never depends on the channel count (1..58 in our data).
     A brain model (`sees_all_channels`) gets all channels at once and must itself return a fixed dimension.
  3. length: a series longer than `max_context` is cut into windows on the token grid that overlap by
     `window_overlap`; every token is kept from the window where it sits most centrally (`stitch_plan`).
  4. the model: `encode_window` (the one thing a subclass must write) maps (items, channels, T) model samples
     to exactly ceil(T / samples_per_token) tokens; it owns padding of short inputs and the model's own
     input normalisation.
"""

import abc
import hashlib
import json
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.signal
import torch

Domain = Literal["audio", "timeseries", "brain"]

# Largest denominator of the rational up/down approximation of native_rate / series rate. 1000 keeps every
# common audio/EEG pair exact (44.1k -> 16k is 160/441) and the polyphase filter small.
MAX_RESAMPLE_DENOMINATOR = 1000

# Spreads below this fraction of a series' largest |value| count as flat. float32 resolves ~1.2e-7 of a value, so
# anything smaller is rounding noise of the level, not signal; as a fraction it scales with the series' units.
RELATIVE_FLOOR = 1e-6


class TeacherAdapter(abc.ABC):
    """What the extraction loop calls. See the module docstring for the token grid."""

    name: str  # the params.yaml key of this teacher, e.g. "silero_vad"
    domain: Domain
    native_rate: float | None  # Hz the model expects; None for rate-agnostic general time-series models
    max_context: int  # longest input in model samples; longer inputs: overlapping windows, stitched
    feature_dim: int  # fixed, independent of the input's channel count

    @abc.abstractmethod
    def num_tokens(self, length: int, sampling_rate: float | None) -> int:
        """Exact number of tokens `encode` returns for `length` samples at `sampling_rate` (>= 1 if length >= 1).
        None: the rate is unknown (see the module docstring)."""

    @abc.abstractmethod
    def token_rate(self, sampling_rate: float | None, length: int | None = None) -> float:
        """Tokens per second of the original series' time axis, per sample when the rate is unknown (None)
        (for teachers that decimate long inputs by a length-dependent factor, of a series of `length` samples)."""

    @abc.abstractmethod
    def encode(self, values: np.ndarray, sampling_rate: float | None) -> np.ndarray:
        """(batch, channels, time) float32 -> (batch, num_tokens(time, rate), feature_dim) float32; the same
        features for any positive rescaling of a series (see the module docstring)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Identity for the store manifest: model_id, revision, weights_sha256, layer, native_rate, feature_dim,
        kind, and package versions where relevant."""


@dataclass(frozen=True)
class RatePlan:
    """How a series reaches the model: samples kept as they are, or resampled by up/down."""

    mode: Literal["as_is", "reinterpret", "resample"]
    up: int = 1
    down: int = 1


def rate_plan(
    native_rate: float | None, sampling_rate: float | None, policy: str = "auto", max_factor: float = 4.0
) -> RatePlan:
    """Resample only when it makes sense physically.

    Resampling a 30-minute-cadence light curve to 16 kHz would turn each sample into 29 million, so the
    "auto" policy resamples only within a factor `max_factor` of the native rate and otherwise feeds the
    samples as if recorded at the native rate. A ratio within 1/MAX_RESAMPLE_DENOMINATOR of 1 is left as is.
    An unknown rate (None) gives nothing to resample from: the samples go in as they are, whatever the policy.
    """
    if sampling_rate is None:
        return RatePlan("as_is")
    if not (math.isfinite(sampling_rate) and sampling_rate > 0):
        raise ValueError(f"sampling_rate must be a positive finite number of Hz or None, got {sampling_rate!r}")
    if native_rate is None:
        return RatePlan("as_is")
    ratio = native_rate / sampling_rate
    if policy == "auto":
        policy = "resample" if 1 / max_factor <= ratio <= max_factor else "reinterpret"
    if policy == "reinterpret":
        return RatePlan("reinterpret")
    if policy != "resample":
        raise ValueError(f"unknown rate_policy {policy!r}; expected auto, resample or reinterpret")
    fraction = Fraction(ratio).limit_denominator(MAX_RESAMPLE_DENOMINATOR)
    if fraction == 1:
        return RatePlan("as_is")
    return RatePlan("resample", fraction.numerator, fraction.denominator)


def resample(values: np.ndarray, plan: RatePlan) -> np.ndarray:
    """Polyphase resampling along the last axis; the output has ceil(T * up / down) samples.

    The edges are padded by extending a fitted line (padtype="line"), so a series with a large offset or a
    trend does not ramp to zero at its ends; a single sample is padded with its own value. Each row's mean is
    taken out before filtering and put back after (float64): the polyphase filter leaves a ripple of about 6e-4
    of whatever level it filters, which on a light curve at 1e4 +- 1 or EEG with a DC offset would be larger than
    the signal; a constant now maps to the same constant.
    """
    if plan.mode != "resample":
        return values
    padtype = "line" if values.shape[-1] >= 2 else "mean"
    level = values.mean(axis=-1, keepdims=True, dtype=np.float64)  # (..., 1)
    out = scipy.signal.resample_poly(values - level, plan.up, plan.down, axis=-1, padtype=padtype) + level
    return out.astype(np.float32, copy=False)


def peak_scaled(values: np.ndarray) -> np.ndarray:
    """(..., T) -> (..., T) float32, each row divided by its largest |value| (float64): waveforms in [-1, 1], as
    audio models expect, whatever the units. An all-zero row stays zero."""
    x = np.asarray(values, dtype=np.float64)
    peak = np.abs(x).max(axis=-1, keepdims=True)  # (..., 1)
    return (x / np.where(peak > 0, peak, 1.0)).astype(np.float32)


def standardized(values: np.ndarray) -> np.ndarray:
    """(..., T) -> (..., T) float32, each row centred and divided by its standard deviation (float64).

    The deviation is floored at RELATIVE_FLOOR times the row's largest |value|, so a constant row becomes zeros
    and a flat one with float32 rounding noise stays small, instead of that noise being blown up to unit variance.
    For models that centre and scale their input themselves this only moves their absolute floors (e.g. 1e-5 on
    PatchTST's variance) to a fixed fraction of the series' own scale; it also keeps offsets from eating float32
    precision (a light curve at 1e4 +- 1e-2).
    """
    x = np.asarray(values, dtype=np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)  # (..., T)
    scale = np.maximum(centred.std(axis=-1, keepdims=True), RELATIVE_FLOOR * np.abs(x).max(axis=-1, keepdims=True))
    return (centred / np.where(scale > 0, scale, 1.0)).astype(np.float32)


def window_starts(n_tokens: int, window_tokens: int, overlap: float) -> list[int]:
    """First token of every window covering n_tokens, windows of window_tokens tokens overlapping by `overlap`.

    Windows start every `step` tokens; the last one is pulled back to end exactly at the last token, so every
    window has window_tokens tokens (only the last may be short of samples in its final, partial token).
    """
    if n_tokens <= window_tokens:
        return [0]
    step = max(1, window_tokens - round(overlap * window_tokens))
    starts = list(range(0, n_tokens - window_tokens, step))
    starts.append(n_tokens - window_tokens)
    return starts


def stitch_plan(starts: list[int], window_tokens: int, n_tokens: int) -> list[tuple[int, int]]:
    """For each window, the half-open range of global tokens it contributes: the tokens nearer its centre than
    any other window's centre. Together the ranges tile [0, n_tokens) exactly."""
    cuts = [0]
    for left, right in zip(starts, starts[1:]):
        # Token i (centre i + 0.5) stays with the left window while i + 0.5 < midpoint of the two centres.
        midpoint = (left + right + window_tokens) / 2
        cuts.append(min(max(math.ceil(midpoint - 0.5), right), left + window_tokens))
    cuts.append(n_tokens)
    return list(zip(cuts[:-1], cuts[1:]))


def pool_steps(features: torch.Tensor, pool: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(items, steps, D) -> (items, ceil(steps / pool), D): mean over groups of `pool` consecutive steps; the
    last, partial group is the mean of the steps it has. valid: (items, steps) bool, steps to leave out of the
    means (padding); a group with no valid step gives zeros."""
    items, steps, dim = features.shape
    n_tokens = math.ceil(steps / pool)
    if valid is None:
        valid = torch.ones(items, steps, dtype=torch.bool, device=features.device)
    weights = torch.zeros(items, n_tokens * pool, dtype=features.dtype, device=features.device)
    weights[:, :steps] = valid.to(features.dtype)
    padded = torch.zeros(items, n_tokens * pool, dim, dtype=features.dtype, device=features.device)
    padded[:, :steps] = features
    sums = (padded * weights[..., None]).view(items, n_tokens, pool, dim).sum(dim=2)
    counts = weights.view(items, n_tokens, pool).sum(dim=2).clamp_min(1.0)  # (items, n_tokens)
    return sums / counts[..., None]


def mean_and_std_over_channels(features: np.ndarray) -> np.ndarray:
    """(batch, channels, tokens, F) -> (batch, tokens, 2F): mean and standard deviation across channels, for teachers
    whose per-channel features differ by sensor (band powers, EEG components); one channel gives std 0."""
    return np.concatenate([features.mean(axis=1), features.std(axis=1)], axis=-1)


def resolve_device(device: str) -> torch.device:
    """"auto" means cuda when available."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(device)


def sha256_of_files(paths: list[Path]) -> str:
    """sha256 over the bytes of `paths` in order (for one file: that file's usual sha256)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def local_model_dir(teacher: str, model_id: str, revision: str | None, allow_patterns: list[str]) -> Path:
    """A local directory as it is, or a hub id downloaded (only `allow_patterns`, never pickles) to the cache.

    Loading then always goes through the local directory, so the weight files hashed are the files loaded.
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, revision=revision, allow_patterns=allow_patterns))
    except Exception as exc:
        raise FileNotFoundError(
            f"teacher {teacher!r}: model_id {model_id!r} is not a local directory and could not be fetched from "
            f"the Hugging Face Hub (revision {revision!r}): {exc}. With HF_HUB_OFFLINE=1 only models already "
            "in the local cache load."
        ) from exc


def safetensors_files(teacher: str, model_dir: Path) -> list[Path]:
    """The safetensors files transformers loads from a save_pretrained directory (one file, or the shards)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / shard for shard in shards]
    single = model_dir / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(
            f"teacher {teacher!r}: no model.safetensors in {model_dir}; only safetensors weights are loaded "
            "(pickled .bin/.pt checkpoints can run code when loaded)"
        )
    return [single]


def hub_model_files(teacher: str, spec) -> tuple[Path, list[Path]]:
    """Local copy of a transformers model (json + safetensors, plus code only when trust_remote_code is on, with a
    warning) and the weight files it will load."""
    if spec.trust_remote_code:
        logging.getLogger(__name__).warning(
            "teacher %r: trust_remote_code is on: code shipped with %r runs in this process", teacher, spec.model_id)
    patterns = ["*.json", "*.safetensors"] + (["*.py"] if spec.trust_remote_code else [])
    model_dir = local_model_dir(teacher, spec.model_id, spec.revision, patterns)
    return model_dir, safetensors_files(teacher, model_dir)


class WindowedTeacher(TeacherAdapter):
    """A teacher whose tokens sit on a fixed hop of `samples_per_token` model samples (see module docstring).

    Subclasses set domain, native_rate, max_context, feature_dim, samples_per_token and input_scaling and write
    `encode_window`; they may override `normalize_series` and `pool_channels`.
    """

    samples_per_token: int  # model samples per token: the hop of the token grid
    sees_all_channels: bool = False  # True: encode_window gets every channel of a series at once
    # How normalize_series rescales each channel before the model: "peak" (peak_scaled), "standard"
    # (standardized), or "none" (the subclass makes its features scale-free itself, or opts out).
    input_scaling: Literal["none", "peak", "standard"] = "none"
    device: torch.device = torch.device("cpu")
    bf16: bool = False

    def __init__(self, name: str, spec):
        self.name = name
        self.spec = spec

    # ---- what a subclass writes -------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_window(self, windows: np.ndarray) -> torch.Tensor | np.ndarray:
        """(items, channels, T) float32 model samples, T <= max_context -> (items, ceil(T / samples_per_token), D).

        channels is 1 unless `sees_all_channels`. Runs under torch.inference_mode (and autocast if bf16)."""

    def normalize_series(self, values: np.ndarray) -> np.ndarray:
        """Per-channel rescaling of (batch, channels, T) model samples before windowing, per `input_scaling`.

        On the whole series, not per window, so windows of one series keep their relative levels. One series at
        a time, so the float64 working copy stays one series' size."""
        if self.input_scaling == "none":
            return values
        rescale = {"peak": peak_scaled, "standard": standardized}[self.input_scaling]
        out = np.empty(values.shape, dtype=np.float32)  # (batch, channels, T)
        for item, series in enumerate(values):
            out[item] = rescale(series)
        return out

    def pool_channels(self, features: np.ndarray) -> np.ndarray:
        """(batch, channels, tokens, D) -> (batch, tokens, feature_dim). Default: mean over channels."""
        return features.mean(axis=1)

    # ---- the contract -----------------------------------------------------------------------------------
    def rate_plan(self, sampling_rate: float | None) -> RatePlan:
        return rate_plan(
            self.native_rate,
            sampling_rate,
            getattr(self.spec, "rate_policy", "auto"),
            getattr(self.spec, "max_resample_factor", 4.0),
        )

    def model_length(self, length: int, sampling_rate: float | None) -> int:
        """Samples the model sees for a series of `length` samples."""
        plan = self.rate_plan(sampling_rate)
        return -(-length * plan.up // plan.down)  # resample_poly's output length, ceil(length * up / down)

    def num_tokens(self, length: int, sampling_rate: float | None) -> int:
        if length < 1:
            raise ValueError(f"teacher {self.name!r}: a series needs at least one sample, got length {length}")
        return max(1, math.ceil(self.model_length(length, sampling_rate) / self.samples_per_token))

    def token_rate(self, sampling_rate: float | None, length: int | None = None) -> float:
        plan = self.rate_plan(sampling_rate)
        per_unit = 1.0 if sampling_rate is None else sampling_rate  # unknown rate: tokens per sample
        return per_unit * plan.up / plan.down / self.samples_per_token

    def encode(self, values: np.ndarray, sampling_rate: float | None) -> np.ndarray:
        values = self._checked(values)
        batch, channels, length = values.shape
        n_tokens = self.num_tokens(length, sampling_rate)

        # (batch, channels, time) -> (batch, channels, model_time)
        model_values = self.normalize_series(resample(values, self.rate_plan(sampling_rate)))
        if self.sees_all_channels:
            items = model_values  # (batch, channels, model_time)
        else:
            items = model_values.reshape(batch * channels, 1, -1)  # (batch * channels, 1, model_time)

        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with torch.inference_mode(), autocast:
            tokens = self._encode_long(items)  # (items, n_tokens, D)
        if tokens.shape[1] != n_tokens:
            raise RuntimeError(f"teacher {self.name!r} made {tokens.shape[1]} tokens, num_tokens says {n_tokens}")

        if not self.sees_all_channels:
            tokens = self.pool_channels(tokens.reshape(batch, channels, n_tokens, -1))
        return np.ascontiguousarray(tokens, dtype=np.float32)  # (batch, n_tokens, feature_dim)

    def _checked(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if values.ndim != 3 or values.shape[-1] < 1 or values.shape[1] < 1:
            raise ValueError(
                f"teacher {self.name!r}: values must be (batch, channels, time) with channels, time >= 1, "
                f"got shape {values.shape}"
            )
        finite = np.isfinite(values).all(axis=(1, 2))
        if not finite.all():
            raise ValueError(
                f"teacher {self.name!r}: non-finite values (NaN or inf) in batch item(s) "
                f"{np.flatnonzero(~finite).tolist()}; impute or drop them before extraction"
            )
        return values.astype(np.float32, copy=False)

    def _encode_long(self, items: np.ndarray) -> np.ndarray:
        """(items, channels, T) -> (items, ceil(T / hop), D): one window, or overlapping windows stitched."""
        n_items, channels, length = items.shape
        hop = self.samples_per_token
        n_tokens = max(1, math.ceil(length / hop))
        window_tokens = self.max_context // hop
        if window_tokens < 1:
            raise ValueError(f"teacher {self.name!r}: max_context {self.max_context} is shorter than one token ({hop})")
        starts = window_starts(n_tokens, window_tokens, self.spec.window_overlap)
        if len(starts) == 1:
            return self._encode_batched(items)

        # All windows but possibly the last have window_tokens * hop samples; the last ends at the series'
        # end and may be shorter by a partial token. Equal-length windows of every item go through together.
        window_samples = window_tokens * hop
        pieces = [items[:, :, a * hop : a * hop + window_samples] for a in starts]
        full = [k for k, piece in enumerate(pieces) if piece.shape[-1] == window_samples]
        short = [k for k in range(len(pieces)) if k not in full]
        encoded: dict[int, np.ndarray] = {}
        for group in (full, short):
            if not group:
                continue
            stacked = np.stack([pieces[k] for k in group], axis=1)  # (items, windows, channels, samples)
            out = self._encode_batched(stacked.reshape(n_items * len(group), channels, -1))
            out = out.reshape(n_items, len(group), window_tokens, -1)  # (items, windows, window_tokens, D)
            encoded.update({k: out[:, j] for j, k in enumerate(group)})

        tokens = np.empty((n_items, n_tokens, encoded[0].shape[-1]), dtype=np.float32)
        for k, (lo, hi) in enumerate(stitch_plan(starts, window_tokens, n_tokens)):
            tokens[:, lo:hi] = encoded[k][:, lo - starts[k] : hi - starts[k]]
        return tokens

    def _encode_batched(self, windows: np.ndarray) -> np.ndarray:
        """encode_window over chunks of batch_size windows; checks the token count subclasses promise."""
        expected = max(1, math.ceil(windows.shape[-1] / self.samples_per_token))
        outputs = []
        for start in range(0, len(windows), self.spec.batch_size):
            out = self.encode_window(np.ascontiguousarray(windows[start : start + self.spec.batch_size]))
            if isinstance(out, torch.Tensor):
                out = out.float().cpu().numpy()
            if out.shape[1] != expected:
                raise RuntimeError(
                    f"teacher {self.name!r}: encode_window returned {out.shape[1]} tokens for "
                    f"{windows.shape[-1]} samples; expected ceil(T / {self.samples_per_token}) = {expected}"
                )
            outputs.append(out)
        return np.concatenate(outputs)
