"""A simple baseline for the generated probe tasks, to show that none of them is trivially solved.

Features per channel: mean, standard deviation, log-variance and the log power in 8 octave bands from
Nyquist/256 to Nyquist (Welch PSD). Classifier: standardised features + logistic regression. A task whose
baseline scores near 1 is too easy to tell encoders apart; near chance, too hard to show anything.
"""

import numpy as np
from scipy import signal
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data_catalog.generators import GENERATORS, generate

N_BANDS = 8
WELCH_SEGMENT = 512  # samples; series shorter than this use their whole length


def baseline_features(values: np.ndarray, sampling_rate: float) -> np.ndarray:
    """(channels * (3 + N_BANDS),) features of one series `values` of shape (channels, time)."""
    values = np.asarray(values, dtype=np.float64)  # float64: squares of 1e-21 strain underflow in float32
    nyquist = sampling_rate / 2
    frequencies, psd = signal.welch(values, fs=sampling_rate, nperseg=min(WELCH_SEGMENT, values.shape[1]), axis=-1)
    edges = nyquist * 2.0 ** np.arange(-N_BANDS, 1)  # octave bands, Nyquist/256 .. Nyquist
    band_index = np.digitize(frequencies, edges) - 1  # bin k belongs to band [edges[k], edges[k+1])
    band_index[frequencies == nyquist] = N_BANDS - 1
    tiny = np.finfo(np.float64).tiny
    band_powers = np.stack(
        [psd[:, band_index == band].sum(axis=1) for band in range(N_BANDS)], axis=1
    )  # (channels, N_BANDS); a band without a bin is 0 and gets log(tiny)
    variance = values.var(axis=1)
    per_channel = np.concatenate(
        [values.mean(axis=1, keepdims=True), np.sqrt(variance)[:, None], np.log(variance + tiny)[:, None],
         np.log(band_powers + tiny)],
        axis=1,
    )  # (channels, 3 + N_BANDS)
    return per_channel.ravel()


def baseline_score(name: str, n_train: int = 200, n_test: int = 200, seed: int = 0, options=None) -> float:
    """Train on items [0, n_train) and test on [n_train, n_train + n_test) of set (name, seed).

    Metric: binary F1 (positive class = label 1) for 2-class tasks, macro F1 otherwise.
    """
    spec = GENERATORS[name]
    if not spec.class_names:
        raise ValueError(f"baseline_score: generator {name!r} is unlabelled, there is nothing to score")
    features, labels = [], []
    for index in range(n_train + n_test):
        values, label = generate(name, index, seed, options)
        features.append(baseline_features(values, spec.sampling_rate))
        labels.append(label)
    features, labels = np.array(features), np.array(labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(features[:n_train], labels[:n_train])
    predicted = model.predict(features[n_train:])
    average = "binary" if len(spec.class_names) == 2 else "macro"
    return float(f1_score(labels[n_train:], predicted, average=average))
