"""MiniRocket (Dempster, Schmidt and Webb, KDD 2021), our own code: the classical anchor and a per-token teacher.

MiniRocket convolves a series with 84 fixed kernels of length 9 (weights -1, except 2 at three of the nine
positions: every choice of 3 of 9) at a set of dilations, and keeps, per kernel and dilation, the proportion of
positive values (PPV) of the convolution output minus a bias. The biases are quantiles of the convolution output
of training series, so every feature splits real data somewhere in its range. No learning; with a ridge classifier
on top it is the baseline practitioners reach for (aeon, sktime).

Two uses here, one set of functions:
- `MiniRocket`: the published whole-series transform (fit on a task's train split, transform every series), for
  the probe table's `baseline-minirocket` row. Follows the reference implementation (github.com/angus924/minirocket,
  `minirocket.py` and `minirocket_multivariate.py`; aeon's MiniRocket is a port of it) step by step:
  dilations spaced exponentially up to (length - 1) / 8 with features spread over them (`fit_dilations`),
  quantile levels from the golden-ratio sequence (`quantile_levels`), each (dilation, kernel)'s biases from the
  convolution output of one random training series, PPV over the whole output or, for every other kernel, over the
  part that needs no zero padding. Multichannel series: as the reference's multivariate version, each (dilation,
  kernel) sums its convolution over a random subset of 1 to 9 channels. tests/test_minirocket.py checks it
  reproduces aeon 1.6.0's published accuracy on a vendored UCR set.
- `MiniRocketTeacherAdapter` (`kind: minirocket`): PPV per token. The same 84 kernels at fixed dilations (a token
  grid has no series length to space them by) run over the whole standardised series; each token's features are
  the PPV of the output positions inside its cell, above biases fitted once on the pretraining corpus (quantiles of
  the convolution outputs of a fixed, seeded sample of corpus series; `fit_corpus_biases`, called by extraction
  before any store is written). The biases' hash is in the store manifest, so a store fitted differently is refused.
"""

import hashlib
import math
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.teachers.base import WindowedTeacher
from schemas.teachers import MiniRocketTeacher

KERNEL_LENGTH = 9
KERNEL_POSITIONS = np.array(list(combinations(range(KERNEL_LENGTH), 3)))  # (84, 3): where the weight is 2
NUM_KERNELS = len(KERNEL_POSITIONS)  # 84


def kernel_weights() -> torch.Tensor:
    """(84, 1, 9) the fixed kernels: -1 everywhere, 2 at three positions (each kernel sums to 0)."""
    weights = -torch.ones(NUM_KERNELS, 1, KERNEL_LENGTH)
    for k, positions in enumerate(KERNEL_POSITIONS):
        weights[k, 0, positions] = 2.0
    return weights


KERNELS = kernel_weights()


def quantile_levels(n: int) -> np.ndarray:
    """(n,) the reference's quantile levels: fractional parts of i * golden ratio, i = 1..n (low-discrepancy)."""
    return (np.arange(1, n + 1) * ((np.sqrt(5) + 1) / 2)) % 1


def fit_dilations(length: int, num_features: int, max_dilations_per_kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """Dilations for series of `length` samples and how many features (biases) each gets, as the reference does.

    Dilations are floor(2 ** linspace(0, log2((length - 1) / 8), m)) without repeats, so the widest kernel spans
    the series; features per kernel are spread over them in proportion to how often each dilation came up."""
    per_kernel = num_features // NUM_KERNELS
    max_dilations = min(per_kernel, max_dilations_per_kernel)
    multiplier = per_kernel / max_dilations
    max_exponent = np.log2(max(length - 1, 1) / (KERNEL_LENGTH - 1))
    dilations, counts = np.unique(
        np.logspace(0, max(max_exponent, 0.0), max_dilations, base=2).astype(np.int32), return_counts=True)
    features = (counts * multiplier).astype(np.int32)
    for i in range(per_kernel - features.sum()):  # the remainder, one at a time from the smallest dilation
        features[i % len(features)] += 1
    return dilations, features


def convolve(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """(n, L) -> (n, 84, L): every kernel at `dilation`, zero padding of 4 * dilation on each side ("same")."""
    return F.conv1d(x[:, None, :], KERNELS, padding=4 * dilation, dilation=dilation)


def proportion_above(outputs: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """PPV: (n, k, L) outputs, (k, F) biases -> (n, k, F) fraction of the L positions above each bias.

    One pass whatever F: each position's rank among the kernel's sorted biases (a binary search), a histogram of
    the ranks, and suffix sums of it (positions above the j-th smallest bias are those ranked above j)."""
    n, k, length = outputs.shape
    order = biases.argsort(dim=-1)  # (k, F)
    ordered = biases.gather(-1, order).contiguous()  # (k, F) ascending
    # rank = number of biases strictly below the output: output > ordered[j] exactly when j < rank
    rank = torch.searchsorted(ordered.expand(n, k, -1).contiguous(), outputs.contiguous())  # (n, k, L)
    counts = torch.zeros(n * k, biases.shape[-1] + 1, dtype=outputs.dtype, device=outputs.device)
    ones = torch.ones(n * k, length, dtype=counts.dtype, device=counts.device)
    counts.scatter_add_(1, rank.view(n * k, length), ones)  # (n k, F + 1) positions per rank
    above = counts.flip(-1).cumsum(-1).flip(-1)[:, 1:].view(n, k, -1)  # (n, k, F): ranks > j, sorted bias order
    return torch.empty_like(above).scatter_(-1, order.expand(n, k, -1), above) / length


class MiniRocket:
    """The published whole-series MiniRocket transform: `fit` on training series, `transform` any series.

    Series are (n, channels, length) arrays of one length (resample ragged sets to one length first, as aeon's
    users do). `num_features` defaults to the paper's 10,000 (rounded down to a multiple of 84: 9,996)."""

    def __init__(self, num_features: int = 10_000, max_dilations_per_kernel: int = 32, seed: int = 0):
        self.num_features = num_features
        self.max_dilations_per_kernel = max_dilations_per_kernel
        self.seed = seed

    def fit(self, x: np.ndarray) -> "MiniRocket":
        """Dilations from the length, channel subsets and biases from the training series x (n, C, L)."""
        n, channels, length = x.shape
        rng = np.random.default_rng(self.seed)
        self.dilations, self.features_per_dilation = fit_dilations(
            length, self.num_features, self.max_dilations_per_kernel)
        # Multichannel: per (dilation, kernel), 1 to min(C, 9) channels (log-uniform count), summed.
        combos = len(self.dilations) * NUM_KERNELS
        counts = (2 ** rng.uniform(0, np.log2(min(channels, KERNEL_LENGTH) + 1), combos)).astype(int)
        self.channel_masks = np.zeros((len(self.dilations), NUM_KERNELS, channels), dtype=np.float32)
        for combo, count in enumerate(counts):
            self.channel_masks.reshape(combos, channels)[combo, rng.choice(channels, count, replace=False)] = 1.0
        levels = quantile_levels(NUM_KERNELS * int(self.features_per_dilation.sum()))
        self.biases, start = [], 0
        values = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        for d, (dilation, per_kernel) in enumerate(zip(self.dilations, self.features_per_dilation)):
            examples = values[torch.from_numpy(rng.integers(n, size=NUM_KERNELS))]  # (84, C, L): one per kernel
            outputs = self._outputs(examples, d, dilation)  # (84, 84, L)
            own = outputs[torch.arange(NUM_KERNELS), torch.arange(NUM_KERNELS)]  # (84, L): kernel k on example k
            q = torch.from_numpy(levels[start : start + NUM_KERNELS * per_kernel].reshape(NUM_KERNELS, per_kernel))
            self.biases.append(torch.stack([torch.quantile(own[k].double(), q[k].double())
                                            for k in range(NUM_KERNELS)]).float())  # (84, per_kernel)
            start += NUM_KERNELS * per_kernel
        return self

    def _outputs(self, x: torch.Tensor, d: int, dilation: int) -> torch.Tensor:
        """(n, C, L) -> (n, 84, L): each kernel's convolution summed over its channel subset at dilation index d."""
        n, channels, length = x.shape
        if channels == 1:
            return convolve(x[:, 0], int(dilation))
        per_channel = convolve(x.reshape(n * channels, length), int(dilation)).reshape(n, channels, NUM_KERNELS, -1)
        return torch.einsum("nckl,kc->nkl", per_channel, torch.from_numpy(self.channel_masks[d]))

    @torch.no_grad()
    def transform(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """(n, C, L) -> (n, num_features) PPV features, in the reference's order (dilation, kernel, bias).
        batch_size None: as many series as keep one batch's outputs near 2^24 numbers."""
        out = []
        values = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        batch_size = batch_size or max(1, 2**24 // (NUM_KERNELS * x.shape[1] * x.shape[2]))
        for batch in values.split(batch_size):
            features = []
            for d, dilation in enumerate(self.dilations):
                outputs = self._outputs(batch, d, dilation)  # (b, 84, L)
                padding = 4 * int(dilation)
                whole = proportion_above(outputs, self.biases[d])  # (b, 84, F_d)
                inner = proportion_above(outputs[..., padding:-padding], self.biases[d])
                # Every other kernel (alternating with the dilation) counts only positions needing no padding.
                uses_inner = ((d + torch.arange(NUM_KERNELS)) % 2 == 1)[None, :, None]
                features.append(torch.where(uses_inner, inner, whole).flatten(1))
            out.append(torch.cat(features, dim=1))
        return torch.cat(out).numpy()


# ----------------------------------------------------------------------------------------------------------------
# The per-token teacher
# ----------------------------------------------------------------------------------------------------------------


class MiniRocketTeacherAdapter(WindowedTeacher):
    """PPV per token of fixed MiniRocket kernels at fixed dilations, above corpus-fitted biases.

    Input: each channel standardised over the whole series (scale-free), taken as samples (no rate). Output per
    token: (dilations x 84 kernels x biases_per_kernel) proportions in [0, 1], channels averaged."""

    domain = "timeseries"
    native_rate = None
    input_scaling = "standard"

    def __init__(self, name: str, spec: MiniRocketTeacher):
        super().__init__(name, spec)
        self.samples_per_token = spec.samples_per_token
        self.dilations = list(spec.dilations)
        # Windows overlap by more than the widest kernel's reach, so stitched tokens see full context.
        self.max_context = spec.max_context_tokens * spec.samples_per_token
        self.feature_dim = len(self.dilations) * NUM_KERNELS * spec.biases_per_kernel
        self.biases = None if spec.biases is None else torch.tensor(spec.biases, dtype=torch.float32).reshape(
            len(self.dilations), NUM_KERNELS, spec.biases_per_kernel)

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        if self.biases is None:
            raise RuntimeError(f"teacher {self.name!r}: biases are not fitted; extraction fits them from the "
                               "pretraining corpus (pipeline.teachers.minirocket.fit_corpus_biases) first")
        x = torch.from_numpy(windows[:, 0])  # (items, T)
        items, length = x.shape
        hop = self.samples_per_token
        n_tokens = max(1, math.ceil(length / hop))
        # Token cells: pad the output to n_tokens * hop positions; padded positions are left out of each PPV.
        valid = torch.zeros(n_tokens * hop, dtype=torch.bool)
        valid[:length] = True
        counts = valid.view(n_tokens, hop).sum(-1).clamp_min(1)  # (n_tokens,)
        features = []
        for d, dilation in enumerate(self.dilations):
            outputs = convolve(x, dilation)  # (items, 84, T)
            outputs = F.pad(outputs, (0, n_tokens * hop - length), value=-math.inf)  # never above a bias
            cells = outputs.view(items, NUM_KERNELS, n_tokens, hop)
            ppv = torch.stack([(cells > bias[None, :, None, None]).sum(dim=-1) / counts  # (items, 84, n_tokens)
                               for bias in self.biases[d].T], dim=-1)  # (items, 84, n_tokens, B)
            features.append(ppv.permute(0, 2, 1, 3).flatten(2))  # (items, n_tokens, 84 * B)
        return torch.cat(features, dim=-1)  # (items, n_tokens, feature_dim)

    def describe(self) -> dict:
        biases = self.spec.biases or []
        return {
            "kind": "minirocket",
            "model_id": "minirocket:ppv-per-token",
            "revision": None,
            "weights_sha256": hashlib.sha256(np.asarray(biases, dtype=np.float32).tobytes()).hexdigest(),
            "layer": None,
            "native_rate": None,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "dilations": self.dilations,
            "biases_per_kernel": self.spec.biases_per_kernel,
            "packages": {"torch": torch.__version__.split("+")[0]},
        }


def fit_corpus_biases(spec: MiniRocketTeacher, series: list[np.ndarray]) -> list[float]:
    """Biases per (dilation, kernel): quantiles of the kernel's output over a sample of corpus series.

    series: (channels, T) arrays, each channel standardised here as the teacher will see it (the first 2 channels
    and 2048 samples of each; a teacher standardises over the whole series, which for these corpora differs
    little). Quantile levels are evenly spaced inside (0, 1) (e.g. 1/3 and 2/3 for two biases), so each token's PPV splits the corpus'
    outputs into equal parts. Deterministic given the series; returns the flat list the spec stores."""
    from pipeline.teachers.base import standardized

    # the first 2 channels and 2048 samples of each series: with 256 series that is ~10^6 positions per kernel,
    # far more than the quantiles need, and a 32-channel, 131,072-sample segment costs no more than a short one
    rows = [standardized(s[:2, :2048].astype(np.float64)).astype(np.float32) for s in series]
    if not rows or sum(r.size for r in rows) == 0:
        raise ValueError("fit_corpus_biases: no corpus samples to fit MiniRocket's biases on")
    levels = np.linspace(0, 1, spec.biases_per_kernel + 2)[1:-1]
    # an evenly spaced subset of each series' output positions, about fit_max_positions in all per kernel
    step = max(1, math.ceil(sum(r.size for r in rows) / spec.fit_max_positions))
    biases = []
    for dilation in spec.dilations:
        outputs = torch.cat([convolve(torch.from_numpy(r), dilation)[..., ::step].permute(1, 0, 2).reshape(
            NUM_KERNELS, -1) for r in rows], dim=1)  # (84, sampled positions of all channels)
        biases.append(np.quantile(outputs.numpy(), levels, axis=1).T)  # (84, B)
    return np.stack(biases).astype(np.float32).flatten().tolist()
