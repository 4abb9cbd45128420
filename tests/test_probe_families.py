"""bench/probe_families.py: its three probes score the same splits with the task's metric, and tell a separable
embedding from a noise one."""

import numpy as np
import pytest

from bench.probe_families import PROBES, score


@pytest.mark.parametrize("probe", PROBES)
def test_each_probe_separates_what_is_separable_and_not_noise(probe):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    signal = np.eye(3)[labels] * 5 + rng.normal(size=(90, 3))  # class means far apart
    vectors = np.concatenate([signal, rng.normal(size=(90, 5))], axis=1)
    train = np.zeros(90, bool)
    train[rng.permutation(90)[:60]] = True
    separable = score(probe, vectors, labels, train, "macro_f1", [0.1, 1.0, 10.0])
    noise = score(probe, rng.normal(size=(90, 8)), labels, train, "macro_f1", [0.1, 1.0, 10.0])
    assert separable > 0.9 and noise < 0.6, (separable, noise)


def test_logistic_probe_folds_shrink_to_the_rarest_class():
    """A train split with two series of a class still fits (2 stratified folds, not 3)."""
    rng = np.random.default_rng(1)
    labels = np.array([0] * 20 + [1] * 3)
    vectors = rng.normal(size=(23, 4)) + labels[:, None] * 4
    train = np.ones(23, bool)
    train[[0, 1, 22]] = False  # one series of class 1 held out: two left for training
    assert score("logistic", vectors, labels, train, "binary_f1", [1.0]) == 1.0
