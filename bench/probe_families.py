"""Is the probe table's verdict the ridge probe's? Every row of the table, probed three ways on the same splits.

The probe table (`evaluate`) scores each model's embedding with one probe: standardise, then a ridge classifier
(regularisation by leave-one-out on the train split). The student's embedding is wider than the teachers'
(hidden-size token moments beside the same statistics and structure vectors), and the ridge penalty shrinks
every standardised dimension alike, so a verdict of "the student loses on the generated tasks" could be this
probe's dilution rather than the embedding's content. This bench probes the very embeddings `evaluate` builds
(`model_embeddings`: same pooling, same statistics and structure appended to every row) with:

- `ridge`: the table's probe (`probe_score`);
- `logistic`: standardise, then L2 logistic regression, C chosen by 3-fold cross-validation on the train split;
- `knn`: standardise, then 5 nearest neighbours by cosine distance (no fitted weights: how the embedding's
  geometry separates the classes, which extra dimensions blur rather than shrink).

Prints, per probe, every row's generated mean and real mean, and the student minus each teacher paired over the
same splits (mean [95% corrected resampled t interval], the table's protocol); writes them as JSON. Last line,
e.g. `probe_families: student - best teacher, generated: ridge -0.030, logistic -0.01, knn +0.02`.

    .venv/bin/python bench/probe_families.py [--splits 10] [--quick] [--out reports/ablations/probe-families]
"""

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from data_catalog.catalog import load_catalog  # noqa: E402
from pipeline.evaluate import (ProbeResults, load_task, model_embeddings, probe_score, probe_splits,  # noqa: E402
                               random_twin, task_score)
from pipeline.feature_store import FeatureStore, store_location  # noqa: E402
from pipeline.student import STEPEncoder  # noqa: E402
from schemas.params import load_params  # noqa: E402

PROBES = ("ridge", "logistic", "knn")
QUICK_SPLITS = 3


def score(probe: str, vectors: np.ndarray, labels: np.ndarray, train: np.ndarray, metric: str,
          alphas: list[float]) -> float:
    """The task's metric on the test split of one probe fitted on the train split."""
    if probe == "ridge":
        return probe_score(vectors, labels, train, metric, alphas)[0]
    if probe == "logistic":
        folds = int(min(3, np.bincount(labels[train]).min()))  # stratified folds need that many of each class
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0, 10.0], cv=folds,
                                                                     max_iter=1000))
    else:
        model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5, metric="cosine"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at the smallest penalties: the CV picks among them
        model.fit(vectors[train], labels[train])
    return task_score(labels[~train], model.predict(vectors[~train]), metric)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--splits", type=int, default=None, help="splits per task (default: evaluate.splits)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SPLITS} splits per task")
    parser.add_argument("--out", default="reports/ablations/probe-families")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    params = load_params(args.params)
    config = params.evaluate
    k = QUICK_SPLITS if args.quick else (args.splits or config.splits)
    catalog = load_catalog(params.prepare.catalog)
    names = config.datasets or [e.name for e in catalog.datasets if e.role == "probe"]
    distilled = STEPEncoder.from_pretrained(params.distill.output_dir).eval()
    random_student = random_twin(distilled, params, config.seed)  # the random student of `evaluate`
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}

    results = {probe: ProbeResults() for probe in PROBES}
    for name in names:
        task = load_task(catalog.get(name), catalog, params.prepare.series_store)
        splits = probe_splits(task, k, config.seed)
        embeddings = model_embeddings(params, task, distilled, random_student, stores)
        for model, vectors in embeddings.items():
            for train in splits:
                for probe in PROBES:
                    s = score(probe, vectors, task.labels, train, task.entry.probe.metric, config.probe_alphas)
                    results[probe].add(model, task, s, 0.0, (~train).sum() / train.sum())
        print(f"{name}: " + ", ".join(
            f"{probe} {np.mean(results[probe].scores['step-distilled'][name]):.3f}" for probe in PROBES), flush=True)

    report, gaps = {}, {}
    teachers = [m for m in results["ridge"].scores if m.startswith("teacher:")]
    for probe, res in results.items():  # means and paired differences exactly as the probe table computes them
        groups, summary, comparisons = list(res.groups()), res.summary(), res.comparisons()
        report[probe] = {"means": {m: {g: summary[m][g] for g in groups} for m in summary},
                         "student_minus": {m: {g: dict(zip(("mean", "low", "high"), c[g])) for g in groups}
                                           for m, c in comparisons.items()}}
        print(f"\n{probe} probe ({k} splits): generated / real mean")
        for model in summary:
            print(f"  {model:22s} " + " / ".join(f"{summary[model][g]:.3f}" for g in groups))
        for other, row in report[probe]["student_minus"].items():
            print(f"  student - {other:22s} " + " / ".join(
                f"{row[g]['mean']:+.3f} [{row[g]['low']:+.3f}, {row[g]['high']:+.3f}]" for g in groups))
        best = max(teachers, key=lambda t: summary[t]["mean"])
        gaps[probe] = (best, report[probe]["student_minus"][best]["mean"]["mean"])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_families.json").write_text(json.dumps({"splits": k, "probes": report}, indent=1))
    print("probe_families: student - best teacher, generated: "
          + ", ".join(f"{probe} {gap:+.3f} ({best})" for probe, (best, gap) in gaps.items()))


if __name__ == "__main__":
    main()
