"""MiniRocket (Dempster, Schmidt and Webb, KDD 2021), our own code: the kernels, the whole-series transform and the
corpus-fitted biases that the probe table's anchor row, the `minirocket` teacher and the student's fixed kernel
inputs share. Not a teacher module: distillation uses it without importing any teacher.

MiniRocket convolves a series with 84 fixed kernels of length 9 (weights -1, except 2 at three of the nine
positions: every choice of 3 of 9) at a set of dilations, and keeps, per kernel and dilation, the proportion of
positive values (PPV) of the convolution output minus a bias. The biases are quantiles of the convolution output
of training series, so every feature splits real data somewhere in its range. No learning; with a ridge classifier
on top it is the baseline practitioners reach for (aeon, sktime).

- `MiniRocket`: the published whole-series transform (fit on a task's train split, transform every series), for
  the probe table's `baseline-minirocket` row. Follows the reference implementation (github.com/angus924/minirocket,
  `minirocket.py` and `minirocket_multivariate.py`; aeon's MiniRocket is a port of it) step by step:
  dilations spaced exponentially up to (length - 1) / 8 with features spread over them (`fit_dilations`),
  quantile levels from the golden-ratio sequence (`quantile_levels`), each (dilation, kernel)'s biases from the
  convolution output of one random training series, PPV over the whole output or, for every other kernel, over the
  part that needs no zero padding. Multichannel series: as the reference's multivariate version, each (dilation,
  kernel) sums its convolution over a random subset of 1 to 9 channels. tests/test_minirocket.py checks it
  reproduces aeon 1.6.0's published accuracy on a vendored UCR set.
- `corpus_sample` and `fit_corpus_biases`: biases per (dilation, kernel) fitted once on a fixed sample of the
  pretraining corpus, for the per-token teacher (pipeline/teachers/minirocket.py) and the student's kernel inputs.
"""

import math
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F

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


def convolve(x: torch.Tensor, dilation: int, stride: int = 1) -> torch.Tensor:
    """(n, L) -> (n, 84, ceil(L / stride)): every kernel at `dilation`, zero padding of 4 * dilation on each side
    ("same"), the output kept at every `stride`-th position."""
    return F.conv1d(x[:, None, :], KERNELS.to(x.device), padding=4 * dilation, dilation=dilation, stride=stride)


def convolve_each(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """(n, 84, L) -> (n, 84, L): kernel k on row k only (a grouped convolution), padded as `convolve`."""
    return F.conv1d(x, KERNELS.to(x.device), padding=4 * dilation, dilation=dilation, groups=NUM_KERNELS)


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
            own = self._own_outputs(examples, d, dilation)  # (84, L): kernel k on example k only
            q = torch.from_numpy(levels[start : start + NUM_KERNELS * per_kernel].reshape(NUM_KERNELS, per_kernel))
            self.biases.append(torch.stack([torch.quantile(own[k].double(), q[k].double())
                                            for k in range(NUM_KERNELS)]).float())  # (84, per_kernel)
            start += NUM_KERNELS * per_kernel
        return self

    def _own_outputs(self, examples: torch.Tensor, d: int, dilation: int) -> torch.Tensor:
        """(84, C, L) one example per kernel -> (84, L): kernel k on example k alone, summed over its channel subset
        (the 84 x 84 outputs `_outputs` would give hold only these on their diagonal)."""
        if examples.shape[1] == 1:
            mixed = examples[:, 0]  # (84, L)
        else:  # the convolution is linear: summing the channels first is summing their outputs
            mixed = torch.einsum("kcl,kc->kl", examples, torch.from_numpy(self.channel_masks[d]))  # (84, L)
        return convolve_each(mixed[None], int(dilation))[0]  # (84, L)

    def _outputs(self, x: torch.Tensor, d: int, dilation: int) -> torch.Tensor:
        """(n, C, L) -> (n, 84, L): each kernel's convolution summed over its channel subset at dilation index d."""
        n, channels, length = x.shape
        if channels == 1:
            return convolve(x[:, 0], int(dilation))
        # the convolution is linear: each kernel convolves the sum of its channels (84 convolutions, not 84 C)
        mixed = torch.einsum("ncl,kc->nkl", x, torch.from_numpy(self.channel_masks[d]))  # (n, 84, L)
        return convolve_each(mixed, int(dilation))

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
                # Every other kernel (alternating with the dilation) counts only positions needing no padding.
                inner = (d + torch.arange(NUM_KERNELS)) % 2 == 1  # (84,)
                ppv = torch.empty(len(batch), NUM_KERNELS, self.biases[d].shape[1])  # (b, 84, F_d)
                ppv[:, inner] = proportion_above(outputs[:, inner, padding:-padding], self.biases[d][inner])
                ppv[:, ~inner] = proportion_above(outputs[:, ~inner], self.biases[d][~inner])
                features.append(ppv.flatten(1))
            out.append(torch.cat(features, dim=1))
        return torch.cat(out).numpy()


def fit_corpus_biases(spec: MiniRocketTeacher, series: list[np.ndarray]) -> list[float]:
    """Biases per (dilation, kernel): quantiles of the kernel's output over a sample of corpus series.

    series: (channels, T) arrays, each channel standardised here as the teacher will see it (the first 2 channels
    and 2048 samples of each; a teacher standardises over the whole series, which for these corpora differs
    little). Quantile levels are evenly spaced inside (0, 1) (e.g. 1/3 and 2/3 for two biases), so each token's
    PPV splits the corpus' outputs into equal parts. Deterministic given the series; returns the flat list the spec
    stores."""
    # the first 2 channels and 2048 samples of each series: with 256 series that is ~10^6 positions per kernel,
    # far more than the quantiles need, and a 32-channel, 131,072-sample segment costs no more than a short one
    rows = [standardized_rows(s[:2, :2048].astype(np.float64)).astype(np.float32) for s in series]
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


def standardized_rows(x: np.ndarray) -> np.ndarray:
    """Each row centred and divided by its std (float64), floored at 1e-6 of its largest |value| (as the teachers'
    `base.standardized`, so the biases are fitted on what the teacher and the student see)."""
    centred = x - x.mean(axis=-1, keepdims=True)
    scale = np.maximum(centred.std(axis=-1, keepdims=True), 1e-6 * np.abs(x).max(axis=-1, keepdims=True))
    return (centred / np.where(scale > 0, scale, 1.0)).astype(np.float32)


def corpus_sample(catalog, series_store: str, max_samples: int, count: int, purpose: str) -> list[np.ndarray]:
    """`count` segments evenly spaced over every pretraining data set's segments, (channels, T) each: a fixed
    sample of the corpus for constants fitted on data, whatever `extract.datasets` selects."""
    from data_catalog.catalog import open_readers
    from data_catalog.readers import DataError
    from data_catalog.segments import segment_series

    entries = [entry for entry in catalog.datasets if entry.role == "pretrain"]
    segments = []
    for reader in open_readers(entries, catalog, series_store, inline_io=True):
        lengths = reader.lengths.copy()
        for i in np.flatnonzero(lengths < 0):  # formats whose header does not say are read once to find out
            lengths[i] = reader[int(i)].length
        segments += [(reader, segment) for segment in segment_series(reader.ids, lengths, max_samples)]
    if not segments:
        raise DataError(f"{purpose} is fitted on the pretraining corpus, and the catalog has no data set with "
                        "role: pretrain")
    picks = np.unique(np.linspace(0, len(segments) - 1, min(count, len(segments))).round().astype(int))
    return [segments[i][0][segments[i][1].series_index].values[:, segments[i][1].start : segments[i][1].stop]
            for i in picks]
