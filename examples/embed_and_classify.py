"""Embed a folder of series files with a trained STEP encoder, then train a classifier on the embeddings.

The folder holds one sub-folder per class, each with .npy, .csv or .wav files, one series per file:

    my_data/quake/a.npy   my_data/quake/b.wav   my_data/noise/c.csv   ...

    python examples/embed_and_classify.py --model models/step-student --data my_data --output embeddings.npz

.npy: a (time,) or (channels, time) array; .csv: one column per channel; .wav: its own sampling rate. Pass
--sampling-rate for .npy and .csv files if you know it (else the encoder sees only their length, which is fine).
Prints the cross-validated accuracy of a ridge classifier (the probe table's probe) on the standardised embeddings.
"""

import argparse
from pathlib import Path

import numpy as np
import soundfile
from sklearn.linear_model import RidgeClassifierCV
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoModel

import pipeline  # noqa: F401  (registers the STEP classes with transformers' Auto classes)

SUFFIXES = (".npy", ".csv", ".wav")


def read_series(path: Path, sampling_rate: float | None) -> tuple[np.ndarray, float | None]:
    """One series as (channels, time) float32, and its sampling rate (None: unknown)."""
    if path.suffix == ".npy":
        values = np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        values = np.loadtxt(path, delimiter=",", ndmin=2).T  # columns are channels
    else:
        values, sampling_rate = soundfile.read(path, dtype="float32", always_2d=True)
        values = values.T
    return np.atleast_2d(values).astype(np.float32), sampling_rate


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained encoder directory, e.g. models/step-student")
    parser.add_argument("--data", type=Path, required=True, help="a folder with one sub-folder of files per class")
    parser.add_argument("--output", type=Path, help="write the embeddings, labels and file names to this .npz")
    parser.add_argument("--sampling-rate", type=float, help="sampling rate of the .npy and .csv files, Hz")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    args = parser.parse_args(argv)

    files = sorted(p for p in args.data.glob("*/*") if p.suffix in SUFFIXES)
    if not files:
        raise SystemExit(f"{args.data}: no {'/'.join(SUFFIXES)} files in its sub-folders")
    classes = sorted({p.parent.name for p in files})
    series, rates = zip(*(read_series(p, args.sampling_rate) for p in files))
    labels = np.array([classes.index(p.parent.name) for p in files])

    model = AutoModel.from_pretrained(args.model)
    embeddings = model.embed(list(series), sampling_rate=list(rates))  # (files, dim), one vector per series
    print(f"{len(files)} files, {len(classes)} classes {classes}: embeddings {embeddings.shape}")
    if args.output:
        np.savez(args.output, embeddings=embeddings, labels=labels, classes=np.array(classes),
                 files=np.array([str(p.relative_to(args.data)) for p in files]))

    # the probe table's classifier: standardise, then ridge with its penalty chosen by leave-one-out on the train
    # folds (a strong penalty matters: the embedding has hundreds of numbers, a folder a few dozen files)
    classifier = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-2, 4, 7)))
    folds = StratifiedKFold(n_splits=min(args.folds, np.bincount(labels).min()), shuffle=True, random_state=0)
    accuracy = cross_val_score(classifier, embeddings, labels, cv=folds).mean()
    print(f"ridge classifier on the embeddings: {accuracy:.3f} accuracy ({folds.n_splits}-fold cross-validation)")
    return float(accuracy)


if __name__ == "__main__":
    main()
