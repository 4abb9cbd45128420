"""Evaluation: linear probes on frozen embeddings, every model on every probe task, over repeated splits.

Models compared under one protocol:
- `step-distilled`: the distilled student (models/step-student);
- `step-random`: the same architecture and config with random weights (what distillation must beat);
- `teacher:<name>`: each teacher's cached token features, pooled over tokens with the very same operator as
  the student's tokens (`pool_embedding`, `evaluate.pooling`), the same series statistics appended when the
  pooling has `stats` and the same pooled fine-structure inputs (the distilled student's) when it has `structure`;
- `teachers:all`: every teacher's pooled row side by side (the statistics once per teacher, the fine-structure
  vectors once): what the teachers know together, roughly what distillation can at most hand on;
- `baseline-stats`: per-channel mean/std/log-variance/band powers (data_catalog.baseline), a classical floor;
- `baseline-minirocket`: MiniRocket (pipeline.minirocket, the published transform, 10,000 features) on
  the whole series: the classical anchor practitioners reach for. Its biases are fitted once per task on the
  declared train split (series only, no labels; the reference fits them on the train set too), every series is
  linearly resampled to the task's longest length (as aeon users do with ragged sets), at most
  `evaluate.minirocket_max_length` (4096: gwosc_like and marmaudio_like, 16,384 samples, are halved twice), then
  the same probe;
- `baseline-structure`: the distilled student's fine-structure inputs alone (lag increments and octave band
  powers of each token's window, mean/std/max over tokens): what the student's network adds is the gap to it.
The paper's other protocol (fine-tuning against training from scratch) is `pipeline.finetune`.

The protocol, the same for every model:
- K splits per task (`evaluate.splits`): split 0 is the task's declared split (the official train/test split
  of a real data set; for generated sets the last `test_fraction` of the series), splits 1..K-1 are seeded
  stratified resplits of all labelled series with the same test size. Every model sees the same K splits.
- Probe: standardise, then a ridge classifier whose regularisation is chosen from `evaluate.probe_alphas` by
  leave-one-out cross-validation on the train split only (scikit-learn's RidgeClassifierCV, the probe ROCKET
  uses). Scored on the test split with the task's metric (binary or macro F1) and accuracy.
- Intervals: 95% interval of the mean over the K splits from the corrected resampled t-test (Nadeau & Bengio,
  2003): mean +- t(0.975, K-1) * sd * sqrt(1/K + n_test/n_train). Resplits share series, so the plain
  sd/sqrt(K) would be too narrow. Means over tasks are taken per split, then given the same interval.
- `mean` averages the generated tasks, `real_mean` the real ones (file sources, e.g. the UCR sets).
- Comparisons ("beats", "loses") are paired: the distilled student's score minus another model's on the same
  split, with the same corrected interval over the K differences (`probe_comparisons.json`); far narrower than
  the two models' own intervals, since both share each split's luck.
- A data set with a fixed montage (`channel_names` in the catalog) is embedded with its channels kept apart
  (per-channel vectors concatenated); teachers' stores hold channel-averaged tokens, so their rows cannot.
"""

import csv
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from sklearn.linear_model import RidgeClassifierCV
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from data_catalog.baseline import baseline_features
from data_catalog.catalog import load_catalog, open_reader
from pipeline.feature_store import FeatureStore, store_location
from pipeline.minirocket import MiniRocket
from pipeline.student import STEPEncoder
from pipeline.student.modeling_step import series_statistics
from pipeline.student.pooling import check_pooling, pool_embedding
from schemas.catalog import CatalogEntry, GeneratorSource
from schemas.params import Params

log = logging.getLogger(__name__)

FIXED_PARTS = ("structure", "kernels")  # embedding parts pooled from the student's fixed inputs, not learned


@dataclass
class ProbeTask:
    """One probe task's series and labels, with its declared train/test split."""

    entry: CatalogEntry
    ids: list[str]             # series ids, as in the series and feature stores
    series: list[np.ndarray]   # (channels, time) each
    labels: np.ndarray         # (n,)
    train: np.ndarray          # (n,) bool, the declared split (official for real data); the rest is test
    sampling_rate: float | None  # None: unknown

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def real(self) -> bool:
        """Real recordings (read from files), as opposed to the generated analogues."""
        return not isinstance(self.entry.source, GeneratorSource)


def load_task(entry: CatalogEntry, catalog, series_store: str) -> ProbeTask:
    reader = open_reader(entry, catalog, series_store)
    items = list(reader)
    labels = np.array([m.get("label", -1) for m in reader.metadata])
    if (labels < 0).any():
        missing = [reader.ids[i] for i in np.flatnonzero(labels < 0)[:3]]
        raise ValueError(f"probe task {entry.name!r}: series without a label, e.g. {missing}")
    train = np.array([m["split"] == "train" for m in reader.metadata])
    if train.all() or not train.any():
        raise ValueError(f"probe task {entry.name!r}: its declared split has no {'test' if train.all() else 'train'} "
                         "series")
    return ProbeTask(entry, list(reader.ids), [s.values for s in items], labels, train, items[0].sampling_rate)


def probe_splits(task: ProbeTask, k: int, seed: int) -> list[np.ndarray]:
    """K train masks (n,) bool: the declared split, then K-1 stratified resplits with the same test size.

    Seeded by (seed, task name), so every model, and every run, gets the same splits.
    """
    splits = [task.train]
    if k > 1:
        task_seed = zlib.crc32(task.name.encode()) ^ seed
        resplit = StratifiedShuffleSplit(n_splits=k - 1, test_size=int((~task.train).sum()), random_state=task_seed)
        for train_rows, _ in resplit.split(np.zeros(len(task.labels)), task.labels):
            mask = np.zeros(len(task.labels), dtype=bool)
            mask[train_rows] = True
            splits.append(mask)
    return splits


def probe_score(embeddings: np.ndarray, labels: np.ndarray, train: np.ndarray, metric: str,
                alphas: list[float]) -> tuple[float, float]:
    """(metric score, accuracy) of a ridge probe fitted on `train` (alpha by leave-one-out on it) on the rest."""
    probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=alphas))
    probe.fit(embeddings[train], labels[train])
    return task_score(labels[~train], probe.predict(embeddings[~train]), metric)


def task_score(truth: np.ndarray, predicted: np.ndarray, metric: str) -> tuple[float, float]:
    """(the task's metric, accuracy): binary F1 (positive = label 1) or macro F1, for probes and fine-tuning."""
    if metric == "binary_f1":
        score = f1_score(truth, predicted, average="binary", pos_label=1, zero_division=0)
    else:
        score = f1_score(truth, predicted, average="macro", zero_division=0)
    return float(score), float(accuracy_score(truth, predicted))


def interval(scores: list[float], test_train_ratio: float, confidence: float = 0.95) -> tuple[float, float]:
    """Corrected resampled t interval of the mean of K split scores (Nadeau & Bengio 2003).

    half-width = t(1 - alpha/2, K-1) * sd * sqrt(1/K + n_test/n_train); a single split has no interval (0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    k, mean = len(scores), float(scores.mean())
    if k < 2:
        return mean, mean
    half = stats.t.ppf(0.5 + confidence / 2, k - 1) * scores.std(ddof=1) * np.sqrt(1 / k + test_train_ratio)
    return mean - float(half), mean + float(half)


def teacher_embeddings(store: FeatureStore, task: ProbeTask, pooling: str, config,
                       fixed: np.ndarray | None = None) -> np.ndarray:
    """Each series' cached teacher tokens (of all its segments together) pooled by the student's operator,
    `pool_embedding`, with the series' statistics (as the student computes them) where the pooling asks, and with
    `fixed` (n, width), the student's pooled fixed inputs, where the pooling has `structure` or `kernels`."""
    name = task.name
    if name not in store.manifest.groups:
        raise ValueError(f"feature store {store.path} has no probe task {name!r}; run extract for it")
    tokens_of: dict[str, list[np.ndarray]] = {}
    for chunk in range(store.n_chunks(name)):
        features, n_tokens, chunk_ids = store.read_chunk(name, chunk)
        for tokens, count, segment_id in zip(features, n_tokens, chunk_ids):
            tokens_of.setdefault(str(segment_id).split("@")[0], []).append(tokens[:count])
    pooling = "mean" if pooling == "pooled" else pooling  # the student's LayerNorm(mean) is a mean, normalised
    parts = check_pooling(pooling)
    if set(parts) & set(FIXED_PARTS):  # computed by the student from the series, not from these tokens: appended
        if fixed is None:
            raise ValueError(f"pooling {pooling!r}: teacher rows need the student's pooled fixed inputs")
        parts = [part for part in parts if part not in FIXED_PARTS]
    pooling = "+".join(parts)
    pooled = []
    for series_id, values in zip(task.ids, task.series):
        tokens = torch.from_numpy(np.concatenate(tokens_of[series_id]))[None, None]  # (1, 1, N, F)
        statistics = None
        if "stats" in pooling:  # per-channel statistics averaged over channels, as for the student
            statistics = series_statistics(torch.from_numpy(values)[None], torch.tensor([values.shape[1]]), config)
            statistics = statistics.mean(dim=1, keepdim=True)  # (1, 1, 2)
        mask = torch.ones(1, tokens.shape[2], dtype=torch.bool)
        pooled.append(pool_embedding(tokens, mask, pooling, statistics=statistics)[0].numpy() if pooling
                      else np.zeros(0, np.float32))
    pooled = np.stack(pooled)
    return pooled if fixed is None else np.concatenate([pooled, fixed], axis=1)


def model_embeddings(params: Params, task: ProbeTask, distilled: STEPEncoder, random_student: STEPEncoder,
                     stores: dict[str, FeatureStore]) -> dict[str, np.ndarray]:
    """{model name: (n, dim) embeddings} of one task's series for every compared model."""
    batch_size = params.evaluate.batch_size
    pooling = params.evaluate.pooling or distilled.config.embedding_pooling
    keep_channels = task.entry.fixed_montage
    embeddings = {
        model: encoder.embed(task.series, task.sampling_rate, batch_size=batch_size, pooling=pooling,
                             keep_channels=keep_channels)
        for model, encoder in (("step-distilled", distilled), ("step-random", random_student))
    }
    # the embedding's fixed parts (pooled lag, band and kernel inputs: no learning) are appended to every teacher's
    # row; teachers average channels, so their rows get the channel-averaged vectors
    fixed_parts = "+".join(part for part in pooling.split("+") if part in FIXED_PARTS)
    appended = None
    if fixed_parts:
        appended = distilled.embed(task.series, task.sampling_rate, batch_size=batch_size, pooling=fixed_parts)
    for teacher, store in stores.items():
        embeddings[f"teacher:{teacher}"] = teacher_embeddings(store, task, pooling, distilled.config, appended)
    if len(stores) > 1:  # every teacher's row side by side, the appended vectors once
        own = [embeddings[f"teacher:{t}"][:, : None if appended is None else -appended.shape[1]] for t in stores]
        embeddings["teachers:all"] = np.concatenate(own + ([] if appended is None else [appended]), axis=1)
    rate = task.sampling_rate or 1.0  # unknown rate: band edges relative to Nyquist, whatever the unit
    embeddings["baseline-stats"] = np.stack([baseline_features(s, rate) for s in task.series])
    if params.evaluate.minirocket_features:
        embeddings["baseline-minirocket"] = minirocket_embeddings(task, params.evaluate.minirocket_features,
                                                                  params.evaluate.seed,
                                                                  params.evaluate.minirocket_max_length)
    if fixed_parts:  # the fixed parts alone: the teachers' vectors already, unless a montage keeps channels apart
        embeddings["baseline-structure"] = appended if not keep_channels else distilled.embed(
            task.series, task.sampling_rate, batch_size=batch_size, pooling=fixed_parts, keep_channels=True)
    return embeddings


def minirocket_embeddings(task: ProbeTask, num_features: int, seed: int, max_length: int | None = None) -> np.ndarray:
    """(n, ~num_features) MiniRocket features of every series of the task, each resampled to the longest length (at
    most `max_length`); fitted (dilations, biases: no labels) on the declared train split."""
    length = min(max(values.shape[1] for values in task.series), max_length or np.inf)
    grid = np.linspace(0.0, 1.0, length)
    x = np.stack([values if values.shape[1] == length else
                  np.stack([np.interp(grid, np.linspace(0.0, 1.0, values.shape[1]), channel) for channel in values])
                  for values in task.series]).astype(np.float32)  # (n, C, length)
    rocket = MiniRocket(num_features, seed=seed).fit(x[task.train])
    return rocket.transform(x)


def random_twin(distilled: STEPEncoder, params: Params, seed: int) -> STEPEncoder:
    """The random-weight student every comparison is made against: the distilled student's architecture and fixed
    inputs (its config, with the kernel biases), seeded weights, and where the embedding projects the kernel
    activities, its own components fitted on the same corpus sample as the distilled student's."""
    from pipeline.distill.train import kernel_component_sample

    torch.manual_seed(seed)
    twin = STEPEncoder(distilled.config).eval()
    if distilled.config.kernel_components:
        twin.fit_kernel_components(kernel_component_sample(params))
    return twin


def evaluate(params: Params) -> dict:
    """Probe every model on every task over the K splits; write metrics, per-split scores, tables and plots."""
    config = params.evaluate
    catalog = load_catalog(params.prepare.catalog)
    names = config.datasets or [e.name for e in catalog.datasets if e.role == "probe"]
    distilled = STEPEncoder.from_pretrained(params.distill.output_dir).eval()
    random_student = random_twin(distilled, params, config.seed)
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}

    results = ProbeResults()
    for name in tqdm(names, desc="evaluate", unit="task"):
        task = load_task(catalog.get(name), catalog, params.prepare.series_store)
        splits = probe_splits(task, config.splits, config.seed)
        embeddings = model_embeddings(params, task, distilled, random_student, stores)
        for model, vectors in embeddings.items():
            for train in splits:
                score, accuracy = probe_score(vectors, task.labels, train, task.entry.probe.metric,
                                              config.probe_alphas)
                results.add(model, task, score, accuracy, (~train).sum() / train.sum())
        log.info("%s: %s", name, {m: round(float(np.mean(s[name])), 3) for m, s in results.scores.items()})
    summary = results.summary()
    write_probe_reports(Path(config.reports_dir), results, summary)
    return summary


class ProbeResults:
    """Per-split scores of every model on every task, and what is derived from them (means, intervals)."""

    def __init__(self):
        self.scores: dict[str, dict[str, list[float]]] = {}    # model -> task -> K metric scores
        self.accuracy: dict[str, dict[str, list[float]]] = {}  # model -> task -> K accuracies
        self.tasks: dict[str, ProbeTask] = {}
        self.ratio: dict[str, float] = {}  # task -> n_test / n_train

    def add(self, model: str, task: ProbeTask, score: float, accuracy: float, test_train_ratio: float) -> None:
        self.scores.setdefault(model, {}).setdefault(task.name, []).append(score)
        self.accuracy.setdefault(model, {}).setdefault(task.name, []).append(accuracy)
        self.tasks[task.name], self.ratio[task.name] = task, float(test_train_ratio)

    def groups(self) -> dict[str, list[str]]:
        """{'mean': generated tasks, 'real_mean': real tasks}, each only when it has tasks."""
        generated = [n for n, t in self.tasks.items() if not t.real]
        real = [n for n, t in self.tasks.items() if t.real]
        return {key: tasks for key, tasks in (("mean", generated), ("real_mean", real)) if tasks}

    def per_split(self, table: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
        """model -> task (and `mean`, `real_mean`: averaged over their tasks split by split) -> K scores."""
        out = {}
        for model, by_task in table.items():
            out[model] = dict(by_task)
            for key, tasks in self.groups().items():
                out[model][key] = np.mean([by_task[t] for t in tasks], axis=0).tolist()
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """model -> task -> mean score over the splits (plus `mean` and `real_mean`)."""
        return {m: {t: float(np.mean(s)) for t, s in by_task.items()} for m, by_task in self.per_split(self.scores).items()}

    def _ratios(self) -> dict[str, float]:
        """n_test / n_train per task, and its mean over the tasks of each group."""
        ratio = dict(self.ratio)
        for key, tasks in self.groups().items():
            ratio[key] = float(np.mean([self.ratio[t] for t in tasks]))
        return ratio

    def intervals(self) -> dict[str, dict[str, tuple[float, float]]]:
        """model -> task (and group) -> 95% interval of the mean."""
        ratio = self._ratios()
        return {m: {t: interval(s, ratio[t]) for t, s in by_task.items()}
                for m, by_task in self.per_split(self.scores).items()}

    def comparisons(self, reference: str = "step-distilled") -> dict[str, dict[str, list[float]]]:
        """model -> task (and group) -> [mean, low, high] of reference minus model, paired split by split."""
        ratio, per_split = self._ratios(), self.per_split(self.scores)
        out = {}
        for model, by_task in per_split.items():
            if model == reference:
                continue
            out[model] = {}
            for task, scores in by_task.items():
                differences = np.subtract(per_split[reference][task], scores)
                out[model][task] = [float(differences.mean()), *interval(differences, ratio[task])]
        return out


def write_probe_reports(directory: Path, results: ProbeResults, summary: dict) -> None:
    """probe_metrics.json (DVC metrics), probe_splits.json, probe_intervals.json, probe_accuracy.json,
    probes/<task>.csv (DVC plots), probe_table.md and probe_scores.png (error bars: the 95% intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    intervals = results.intervals()
    columns = [*results.tasks, *results.groups()]

    def rounded(table):
        return {model: {task: round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v]
                        for task, v in by_task.items()} for model, by_task in table.items()}

    (directory / "probe_metrics.json").write_text(json.dumps(rounded(summary), indent=2) + "\n")
    (directory / "probe_splits.json").write_text(json.dumps(rounded(results.per_split(results.scores)), indent=2) + "\n")
    bounds = {m: {t: {"low": round(low, 4), "high": round(high, 4)} for t, (low, high) in by_task.items()}
              for m, by_task in intervals.items()}
    (directory / "probe_intervals.json").write_text(json.dumps(bounds, indent=2) + "\n")
    comparisons = results.comparisons() if "step-distilled" in summary else {}
    (directory / "probe_comparisons.json").write_text(json.dumps(rounded(comparisons), indent=2) + "\n")
    real = [n for n, t in results.tasks.items() if t.real]
    accuracy = {m: {t: float(np.mean(s)) for t, s in by_task.items() if t in real + ["real_mean"]}
                for m, by_task in results.per_split(results.accuracy).items()}
    (directory / "probe_accuracy.json").write_text(json.dumps(rounded(accuracy), indent=2) + "\n")

    (directory / "probes").mkdir(exist_ok=True)
    for column in columns:
        with open(directory / "probes" / f"{column}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["model", "score", "low", "high"])
            writer.writerows((m, round(s[column], 4), *(round(x, 4) for x in intervals[m][column]))
                             for m, s in summary.items())
    (directory / "probe_table.md").write_text(probe_table(results, summary, intervals, accuracy, comparisons))

    figure, axis = plt.subplots(figsize=(max(8, 1.3 * len(columns)), 4.5))
    width = 0.8 / len(summary)
    for i, (model, s) in enumerate(summary.items()):
        means = np.array([s[c] for c in columns])
        low_high = np.array([intervals[model][c] for c in columns])
        axis.bar(np.arange(len(columns)) + i * width, means, width, label=model,
                 yerr=np.abs(low_high.T - means), capsize=2, error_kw={"elinewidth": 0.8})
    axis.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, columns, rotation=25, ha="right")
    axis.set_ylabel("F1, linear probe (95% interval)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(directory / "probe_scores.png", dpi=110)
    plt.close(figure)


def probe_table(results: ProbeResults, summary: dict, intervals: dict, accuracy: dict, comparisons: dict) -> str:
    """Markdown: F1 mean +- interval half-width per task, best mean per column in bold; the paired differences of
    the distilled student against every other model on the task means; real tasks' accuracy."""
    columns = [*results.tasks, *results.groups()]

    def header(column):
        task = results.tasks.get(column)
        return f"{column} ({task.entry.probe.metric.replace('_', ' ')})" if task else f"**{column}**"

    lines = ["| model | " + " | ".join(header(c) for c in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    best = {c: max(s[c] for s in summary.values()) for c in columns}
    for model, s in summary.items():
        cells = []
        for c in columns:
            low, high = intervals[model][c]
            cell = f"{s[c]:.3f} ±{(high - low) / 2:.3f}"
            cells.append(f"**{cell}**" if s[c] == best[c] else cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    groups = list(results.groups())
    if comparisons:
        lines += ["", "step-distilled minus each model, paired over the same splits (mean [95% interval]); a "
                  "difference whose interval excludes 0 is one the splits resolve:", "",
                  "| model | " + " | ".join(groups) + " |", "|" + "---|" * (len(groups) + 1)]
        for model, by_task in comparisons.items():
            cells = [f"{d:+.3f} [{low:+.3f}, {high:+.3f}]" for d, low, high in (by_task[g] for g in groups)]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    real = [n for n, t in results.tasks.items() if t.real]
    if real:
        lines += ["", "Real data sets, accuracy (the UCR archive's convention), mean over the same splits:", "",
                  "| model | " + " | ".join(real) + " | real_mean |", "|" + "---|" * (len(real) + 2)]
        for model, by_task in accuracy.items():
            lines.append(f"| {model} | " + " | ".join(f"{by_task[t]:.3f}" for t in [*real, "real_mean"]) + " |")
    k = len(next(iter(next(iter(results.scores.values())).values())))
    lines += ["", f"{k} splits per task; ± is the half-width of the 95% interval of the mean (corrected resampled t)."]
    return "\n".join(lines) + "\n"


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(readme: Path, reports_dir: Path) -> None:
    """Replace the README's results block with the generated probe table, fine-tuning and distillation metrics."""
    table = (reports_dir / "probe_table.md").read_text()
    distill = json.loads((reports_dir / "distill" / "metrics.json").read_text())
    block = (f"{README_START}\n{table}\nDistillation: {distill['steps']} steps; "  # no wall time: it varies by run
             f"validation loss at step 0 {json.dumps(distill['first_val_loss'])}, final {json.dumps(distill['val_loss'])}."
             f"\n{README_END}")
    text = replace_block(readme.read_text(), README_START, README_END, block, readme)
    finetune = reports_dir / "finetune_metrics.json"
    if finetune.exists():
        text = replace_block(text, FINETUNE_START, FINETUNE_END, finetune_table(json.loads(finetune.read_text()),
                             json.loads((reports_dir / "finetune" / "splits.json").read_text())), readme)
    readme.write_text(text)


FINETUNE_START, FINETUNE_END = "<!-- finetune:start -->", "<!-- finetune:end -->"


def replace_block(text: str, start: str, end: str, content: str, where: Path) -> str:
    """`text` with everything from `start` to `end` replaced by start + content + end."""
    if start not in text or end not in text:
        raise ValueError(f"{where}: no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    body = content if content.startswith(start) else f"{start}\n{content}\n{end}"
    return head + body + rest.split(end, 1)[1]


def finetune_table(metrics: dict, record: dict) -> str:
    """Markdown table of reports/finetune_metrics.json, with the budget and wall time it took."""
    columns = [c for c in next(iter(metrics.values())) if c != "real_accuracy_mean"]
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {m} | " + " | ".join(f"{s[c]:.3f}" for c in columns) + " |" for m, s in metrics.items()]
    budget = record["budget"]
    splits = budget["splits"]
    differences = record.get("finetune_distilled_minus", {})
    if splits > 1 and differences:
        lines += ["", f"finetune-distilled minus each row, paired over the same {splits} splits (mean [95% interval], "
                  "corrected resampled t):", "", "| row | mean | real_mean |", "|---|---|---|"]
        lines += [f"| {other} | " + " | ".join(f"{d[g][0]:+.3f} [{d[g][1]:+.3f}, {d[g][2]:+.3f}]" if g in d else "-"
                                             for g in ("mean", "real_mean")) + " |" for other, d in differences.items()]
    which = "split 0 only" if splits == 1 else f"{splits} splits per task (split 0 the declared one)"
    lines += ["", f"LP-FT: {budget['epochs']:g} epochs over each train fold, at most {budget['max_steps']} steps of "
              f"{budget['batch_size']} series per model, task and split, {which}."]  # no wall time: it varies
    return "\n".join(lines)
