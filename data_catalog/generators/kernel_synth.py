"""KernelSynth: Gaussian-process series from random compositions of kernels (Chronos' synthetic pretraining data).

Ansari et al. 2024 ("Chronos: learning the language of time series", appendix A) draw j ~ U{1..5} kernels with
replacement from a bank, join them with random + or *, and sample the GP prior on [0, 1]. The bank here is theirs:
  - ExpSineSquared (periodic) with periods of 24, 48, 96, 168, 336, 672, 7, 14, 30, 60, 365, 365.25, 4, 26, 52, 6,
    12, 40, 10 samples of the GP grid (hourly, daily, weekly, ... seasonalities),
  - DotProduct (linear trends, sigma_0 = 0, 1, 10), RBF (length scales 0.1, 1, 10), RationalQuadratic (alpha =
    0.1, 1, 10), WhiteKernel (noise 0.1, 1) and ConstantKernel.
numpy/scipy only. Exact sampling costs O(n^3) (a Cholesky factor), so the GP is drawn on at most `gp_points`
points; a longer series is that draw interpolated (a finer sampling of the same smooth process) plus, where the
composition has a white-noise term, white noise at the full length, so memory and time stay O(length).
"""

import functools

import numpy as np
from scipy import linalg
from threadpoolctl import threadpool_limits

from data_catalog.generators import SCALE_OPTIONS, GeneratorSpec, physical_scale, random_length, standardise

PERIODS = (24, 48, 96, 168, 336, 672, 7, 14, 30, 60, 365, 365.25, 4, 26, 52, 6, 12, 40, 10)

DEFAULT_OPTIONS = {
    "min_length": 64,
    "max_length": 8192,
    "gp_points": 1024,  # largest exact GP draw; longer series interpolate it
    "max_kernels": 5,  # j ~ U{1..max_kernels} kernels per composition
    **SCALE_OPTIONS,
}


def kernel_bank(n: int) -> list[tuple[str, callable]]:
    """(name, k(x, lags)) on the grid x = linspace(0, 1, n); periods are in grid samples. Stationary kernels are
    evaluated on the n lags and laid out as a Toeplitz matrix (O(n) evaluations instead of O(n^2))."""
    def stationary(f):
        return lambda x, lags: linalg.toeplitz(f(lags))

    bank = [(f"periodic({p})", stationary(lambda r, p=p: np.exp(-2 * np.sin(np.pi * r / (p / n)) ** 2)))
            for p in PERIODS]
    bank += [(f"linear({s})", lambda x, lags, s=s: s**2 + np.outer(x, x)) for s in (0.0, 1.0, 10.0)]
    bank += [(f"rbf({ell})", stationary(lambda r, ell=ell: np.exp(-0.5 * r**2 / ell**2))) for ell in (0.1, 1.0, 10.0)]
    bank += [(f"rq({a})", stationary(lambda r, a=a: (1 + r**2 / (2 * a)) ** -a)) for a in (0.1, 1.0, 10.0)]
    bank += [(f"white({v})", lambda x, lags, v=v: v * np.eye(len(x))) for v in (0.1, 1.0)]
    bank += [("constant", lambda x, lags: np.ones((len(x), len(x))))]
    return bank


def random_kernel(rng: np.random.Generator, n: int, max_kernels: int) -> tuple[np.ndarray, str, float]:
    """A random composition: (covariance (n, n), its formula, the variance of its additive white-noise terms)."""
    bank = kernel_bank(n)
    x = np.linspace(0.0, 1.0, n)
    lags = x - x[0]
    picks = [bank[i] for i in rng.integers(0, len(bank), rng.integers(1, max_kernels + 1))]
    terms = [(name, k(x, lags), float(name.split("(")[1][:-1]) if name.startswith("white") else 0.0)
             for name, k in picks]

    def join(a, b):
        if rng.random() < 0.5:
            return (f"({a[0]} + {b[0]})", a[1] + b[1], a[2] + b[2])
        # a product keeps white noise only where both are white-ish; the diagonal share is a fair proxy
        return (f"({a[0]} * {b[0]})", a[1] * b[1], a[2] * b[1].diagonal().mean() + b[2] * a[1].diagonal().mean())

    formula_cov_white = functools.reduce(join, terms)
    return formula_cov_white[1], formula_cov_white[0], formula_cov_white[2]


def gp_sample(rng: np.random.Generator, cov: np.ndarray) -> np.ndarray:
    """One draw of N(0, cov): Cholesky with a little jitter, eigendecomposition if that still fails."""
    n = len(cov)
    jitter = 1e-6 * max(float(np.abs(cov.diagonal()).mean()), 1e-12)
    z = rng.standard_normal(n)
    with threadpool_limits(1):  # small factorisations: threads only add contention on a shared machine
        try:
            factor = linalg.cholesky(cov + jitter * np.eye(n), lower=True, check_finite=False)
            return factor @ z
        except linalg.LinAlgError:
            w, v = np.linalg.eigh((cov + cov.T) / 2)
            return v @ (np.sqrt(np.clip(w, 0, None)) * z)


def unit_series(rng: np.random.Generator, length: int, options: dict) -> np.ndarray:
    """A standardised KernelSynth draw of `length` samples (float64)."""
    n = min(length, int(options["gp_points"]))
    cov, _, white = random_kernel(rng, n, int(options["max_kernels"]))
    draw = gp_sample(rng, cov)
    if length > n:
        draw = np.interp(np.linspace(0, n - 1, length), np.arange(n), draw)
        if white > 0:  # the white-noise term is white at every sampling, not interpolated
            draw = draw + np.sqrt(white) * rng.standard_normal(length)
    return standardise(draw)


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One series (1, length) at a random physical scale; `label` unused."""
    length = random_length(rng, options)
    return physical_scale(rng, unit_series(rng, length, options)[None], options)


SPEC = GeneratorSpec(
    name="kernel_synth",
    description="Gaussian-process draws from random +/* compositions of periodic, linear, RBF, rational quadratic, "
    "white and constant kernels (Chronos' KernelSynth), any length and physical scale, unlabelled",
    sampling_rate=None,
    channels=1,
    unit="arbitrary",
    class_names=(),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
