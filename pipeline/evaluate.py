"""Evaluation: linear probes on frozen embeddings for every probe task, every model side by side.

Models compared under the same probe (standardise + logistic regression, scored with the task's metric):
- `step-distilled`: the distilled student (models/step-student);
- `step-random`: the same architecture with random weights (what distillation must beat);
- `teacher:<name>`: each teacher's cached features, mean-pooled over tokens (from its feature store);
- `step-scratch`: the student trained from scratch on the task's train split (cross-entropy, a short fixed
  budget), the paper's baseline; then probed like the others;
- `baseline-stats`: per-channel mean/std/log-variance/band powers (data_catalog.baseline), a classical floor.
"""

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from data_catalog.baseline import baseline_features
from data_catalog.catalog import load_catalog, open_reader
from pipeline.distill.loader import pad_series
from pipeline.feature_store import FeatureStore, store_location
from pipeline.student import STEPConfig, STEPEncoder
from schemas.catalog import CatalogEntry
from schemas.params import Params

log = logging.getLogger(__name__)


@dataclass
class ProbeTask:
    """One probe task's series and labels, split into train and test."""

    entry: CatalogEntry
    ids: list[str]             # series ids, as in the series and feature stores
    series: list[np.ndarray]   # (channels, time) each
    labels: np.ndarray         # (n,)
    train: np.ndarray          # (n,) bool; the rest is test
    sampling_rate: float


def load_task(entry: CatalogEntry, catalog, series_store: str) -> ProbeTask:
    reader = open_reader(entry, catalog, series_store)
    series = [s.values for s in reader]
    labels = np.array([m["label"] for m in reader.metadata])
    if (labels < 0).any():
        missing = [reader.ids[i] for i in np.flatnonzero(labels < 0)[:3]]
        raise ValueError(f"probe task {entry.name!r}: series without a label, e.g. {missing}")
    train = np.array([m["split"] == "train" for m in reader.metadata])
    rate = entry.sampling_rate or reader[0].sampling_rate
    return ProbeTask(entry, list(reader.ids), series, labels, train, rate)


def probe_score(embeddings: np.ndarray, task: ProbeTask, c: float, seed: int) -> float:
    """Fit the linear probe on the train split; score the test split with the task's metric."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))
    probe.fit(embeddings[task.train], task.labels[task.train])
    predicted = probe.predict(embeddings[~task.train])
    truth = task.labels[~task.train]
    if task.entry.probe.metric == "binary_f1":
        return float(f1_score(truth, predicted, average="binary", pos_label=1, zero_division=0))
    return float(f1_score(truth, predicted, average="macro", zero_division=0))


def teacher_embeddings(store: FeatureStore, task: ProbeTask) -> np.ndarray:
    """Mean over valid tokens (and over the segments of a cut series) of the cached teacher features."""
    name = task.entry.name
    if name not in store.manifest.groups:
        raise ValueError(f"feature store {store.path} has no probe task {name!r}; run extract for it")
    pooled, segment_ids = [], []
    for chunk in range(store.n_chunks(name)):
        features, n_tokens, chunk_ids = store.read_chunk(name, chunk)
        for tokens, count in zip(features, n_tokens):
            pooled.append(tokens[:count].mean(axis=0))
        segment_ids += [str(s).split("@")[0] for s in chunk_ids]
    pooled, segment_ids = np.stack(pooled), np.array(segment_ids)
    return np.stack([pooled[segment_ids == series_id].mean(axis=0) for series_id in task.ids])


def train_from_scratch(config: STEPConfig, task: ProbeTask, steps: int, batch_size: int, seed: int) -> STEPEncoder:
    """The paper's baseline: the student architecture trained with cross-entropy on the task's train split."""
    torch.manual_seed(seed)
    model = STEPEncoder(config)
    classes = len(task.entry.probe.class_names)
    head = torch.nn.Linear(config.hidden_size, classes)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    train_rows = np.flatnonzero(task.train)
    model.train()
    for _ in range(steps):
        rows = rng.choice(train_rows, size=min(batch_size, len(train_rows)), replace=False)
        values, lengths = pad_series([task.series[r] for r in rows])
        out = model(values, lengths, sampling_rate=task.sampling_rate)
        loss = torch.nn.functional.cross_entropy(head(out.pooled), torch.from_numpy(task.labels[rows]))
        loss = loss + out.patching_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()


def evaluate(params: Params) -> dict:
    """Probe every model on every task; write metrics, per-task CSVs, a Markdown table and a bar chart."""
    config = params.evaluate
    catalog = load_catalog(params.prepare.catalog)
    names = config.datasets or [e.name for e in catalog.datasets if e.role == "probe"]
    distilled = STEPEncoder.from_pretrained(params.distill.output_dir).eval()
    torch.manual_seed(config.seed)
    random_student = STEPEncoder(distilled.config).eval()
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}

    scores: dict[str, dict[str, float]] = {}
    for name in tqdm(names, desc="evaluate", unit="task"):
        task = load_task(catalog.get(name), catalog, params.prepare.series_store)
        embeddings = {
            "step-distilled": distilled.embed(task.series, task.sampling_rate, batch_size=config.batch_size),
            "step-random": random_student.embed(task.series, task.sampling_rate, batch_size=config.batch_size),
        }
        for teacher, store in stores.items():
            embeddings[f"teacher:{teacher}"] = teacher_embeddings(store, task)
        if config.scratch_steps > 0:
            scratch = train_from_scratch(distilled.config, task, config.scratch_steps, config.scratch_batch_size,
                                         config.seed)
            embeddings["step-scratch"] = scratch.embed(task.series, task.sampling_rate, batch_size=config.batch_size)
        embeddings["baseline-stats"] = np.stack([baseline_features(s, task.sampling_rate) for s in task.series])
        for model_name, vectors in embeddings.items():
            scores.setdefault(model_name, {})[name] = probe_score(vectors, task, config.probe_c, config.seed)
        log.info("%s: %s", name, {m: round(s[name], 3) for m, s in scores.items()})
    for model_scores in scores.values():
        model_scores["mean"] = float(np.mean([model_scores[n] for n in names]))
    write_probe_reports(Path(config.reports_dir), scores, names, {n: catalog.get(n).probe.metric for n in names})
    return scores


def write_probe_reports(directory: Path, scores: dict, tasks: list[str], metrics: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    rounded = {model: {task: round(value, 4) for task, value in s.items()} for model, s in scores.items()}
    (directory / "probe_metrics.json").write_text(json.dumps(rounded, indent=2) + "\n")
    (directory / "probes").mkdir(exist_ok=True)
    for task in [*tasks, "mean"]:
        with open(directory / "probes" / f"{task}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["model", "score"])
            writer.writerows((model, round(s[task], 4)) for model, s in scores.items())
    header = "| model | " + " | ".join(f"{t} ({metrics[t].replace('_', ' ')})" for t in tasks) + " | mean |"
    lines = [header, "|" + "---|" * (len(tasks) + 2)]
    best = {t: max(s[t] for s in scores.values()) for t in [*tasks, "mean"]}
    for model, s in scores.items():
        cells = [f"**{s[t]:.3f}**" if s[t] == best[t] else f"{s[t]:.3f}" for t in [*tasks, "mean"]]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    (directory / "probe_table.md").write_text("\n".join(lines) + "\n")

    figure, axis = plt.subplots(figsize=(max(8, 1.4 * (len(tasks) + 1)), 4))
    width = 0.8 / len(scores)
    for i, (model, s) in enumerate(scores.items()):
        axis.bar(np.arange(len(tasks) + 1) + i * width, [s[t] for t in [*tasks, "mean"]], width, label=model)
    axis.set_xticks(np.arange(len(tasks) + 1) + 0.4 - width / 2, [*tasks, "mean"], rotation=20)
    axis.set_ylabel("F1 (linear probe)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(directory / "probe_scores.png", dpi=110)
    plt.close(figure)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(readme: Path, reports_dir: Path) -> None:
    """Replace the README's results block with the generated probe table and distillation metrics."""
    table = (reports_dir / "probe_table.md").read_text()
    distill = json.loads((reports_dir / "distill" / "metrics.json").read_text())
    block = (f"{README_START}\n{table}\nDistillation: {distill['steps']} steps in {distill['wall_seconds']} s; "
             f"final validation loss {json.dumps(distill['val_loss'])} (first: {json.dumps(distill['first_val_loss'])})."
             f"\n{README_END}")
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: no {README_START} ... {README_END} block to fill")
    head, rest = text.split(README_START, 1)
    readme.write_text(head + block + rest.split(README_END, 1)[1])
