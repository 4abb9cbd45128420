"""The paper's protocol, fine-tuning, done as LP-FT: a linear probe's head first, then the encoder end to end.

For every probe task and split (the first `finetune.splits` of evaluate's splits), two models with the same
architecture and the same procedure and budget:
- `finetune-distilled`: starts from the distilled student's weights;
- `finetune-scratch`: starts from random weights (seeded), LP on random features then FT: the same procedure.

The procedure (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution"), per model, task and split:
1. Validation fold: a stratified `val_fraction` of the train split is held out; the rest is the train fold. The
   test split is never seen, neither in training nor in selection.
2. LP: the head (STEPForClassification: the very embedding the linear probe of pipeline/evaluate.py reads,
   standardised, then Linear) is the probe's own solution on the train fold's frozen embeddings:
   StandardScaler + RidgeClassifierCV over `evaluate.probe_alphas`. The scaler becomes the head's fixed buffers,
   the ridge's decision function its Linear layer, multiplied by one temperature fitted to the ridge's
   cross-validated decision values (the ridge's scores are not log-odds; the temperature makes them so for the
   cross-entropy and does not change a single prediction). At step 0 the model predicts what the probe predicts.
3. FT: AdamW on cross-entropy (+ the adaptive-patching penalty), `encoder_lr` for the encoder and the larger
   `head_lr` for the head, linear warm-up then cosine decay; `epochs` passes over the train fold, at most
   `max_steps` steps. The pretrained features move little under a head that already fits (LP-FT's point).
4. Selection: the task's metric on the validation fold at step 0 and at `evaluations` evenly spaced steps; the
   best step wins, ties going to the earlier one (so step 0, pure LP, wins unless fine-tuning does better).
5. What is scored on the test split: if step 0 won, the probe refit on the whole train split (a ridge solve: the
   frozen probe itself, so the fold's data is not wasted); otherwise the fine-tuned model as selected, trained on
   the train fold only (refitting it on the whole split would double the cost and leave no check on its stopping
   step).

Scores are kept in ProbeResults (the probe table's code): means with the corrected resampled t intervals, and
paired differences of finetune-distilled against finetune-scratch and against the frozen probes on the same splits
(`step-distilled`, `step-random`: the probe table's rows, recomputed here on these splits).
"""

import copy
import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.linear_model import RidgeClassifier, RidgeClassifierCV
from sklearn.model_selection import ShuffleSplit, StratifiedKFold, StratifiedShuffleSplit, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from data_catalog.catalog import load_catalog
from pipeline.distill.loader import pad_series
from pipeline.distill.train import learning_rate
from pipeline.evaluate import ProbeResults, ProbeTask, load_task, probe_score, probe_splits, task_score
from pipeline.student import STEPEncoder, STEPForClassification
from schemas.params import FinetuneParams, Params

log = logging.getLogger(__name__)


@dataclass
class FinetuneRun:
    """One model's fine-tuning on one task and split: the model to score, and how it got there."""

    model: STEPForClassification
    selected_step: int
    steps: int
    losses: list[float] = field(default_factory=list)            # train cross-entropy per step
    validation: dict[int, float] = field(default_factory=dict)   # step -> validation metric


def validation_fold(labels: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train fold, validation fold) row indices carved from the train mask, stratified by label where every
    class has two series or more (a plain shuffle split otherwise)."""
    rows = np.flatnonzero(train)
    size = max(1, round(fraction * len(rows)))
    counts = np.bincount(labels[rows])
    stratify = counts[counts > 0].min() >= 2 and size >= (counts > 0).sum()
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed)
    if not stratify:
        splitter = ShuffleSplit(n_splits=1, test_size=size, random_state=seed)
    fit, held_out = next(splitter.split(np.zeros(len(rows)), labels[rows]))
    return np.sort(rows[fit]), np.sort(rows[held_out])


def probe_head(embeddings: np.ndarray, labels: np.ndarray, num_labels: int, alphas: list[float]
               ) -> dict[str, torch.Tensor]:
    """The linear probe of pipeline/evaluate.py fitted on (embeddings, labels), as the head's state: the scaler
    (embedding_mean, embedding_scale) and the ridge's decision function times a fitted temperature as
    classifier.weight (num_labels, width) and classifier.bias (num_labels,). Argmax of the head's logits is the
    probe's prediction; a class absent from `labels` gets a logit far below the others."""
    scaler = StandardScaler().fit(embeddings)
    standardised = scaler.transform(embeddings)
    ridge = RidgeClassifierCV(alphas=alphas).fit(standardised, labels)
    weight = ridge.coef_.reshape(-1, embeddings.shape[1])
    bias = np.asarray(ridge.intercept_, dtype=np.float64).reshape(-1)
    if len(ridge.classes_) == 2:  # one decision d: class 1 when d > 0, so logits (-d/2, d/2)
        weight, bias = np.stack([-weight[0] / 2, weight[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    temperature = fit_temperature(standardised, labels, ridge.alpha_, ridge.classes_)
    full_weight = np.zeros((num_labels, embeddings.shape[1]))
    full_bias = np.full(num_labels, -30.0)
    full_weight[ridge.classes_], full_bias[ridge.classes_] = temperature * weight, temperature * bias
    return {"embedding_mean": torch.from_numpy(scaler.mean_).float(),
            "embedding_scale": torch.from_numpy(scaler.scale_).float(),
            "classifier.weight": torch.from_numpy(full_weight).float(),
            "classifier.bias": torch.from_numpy(full_bias).float()}


def fit_temperature(standardised: np.ndarray, labels: np.ndarray, alpha: float, classes: np.ndarray) -> float:
    """The factor that makes the ridge's decision values log-odds: the one minimising the cross-entropy of its
    cross-validated decision values (up to 5 folds, so the fit is not judged on the series it was fitted to),
    within [0.5, 10]: separable folds would send it to infinity, and a head that is sure of every train series
    gives the encoder no gradient but a huge one for its first mistake. 1 where a class has a single series."""
    folds = min(5, int(np.bincount(labels)[classes].min()))
    if folds < 2:
        return 1.0
    decision = cross_val_predict(RidgeClassifier(alpha=alpha), standardised, labels, method="decision_function",
                                 cv=StratifiedKFold(folds, shuffle=True, random_state=0))
    logits = np.stack([-decision / 2, decision / 2], axis=1) if decision.ndim == 1 else decision
    target = np.searchsorted(classes, labels)

    def cross_entropy(log_temperature: float) -> float:
        scaled = math.exp(log_temperature) * logits
        scaled -= scaled.max(axis=1, keepdims=True)
        log_probability = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_probability[np.arange(len(target)), target].mean())

    return math.exp(minimize_scalar(cross_entropy, bounds=(math.log(0.5), math.log(10.0)), method="bounded").x)


def classifier_for(encoder: STEPEncoder, task: ProbeTask, pooling: str) -> STEPForClassification:
    """A STEPForClassification holding a copy of `encoder` and a head for `task` (labels named by its classes)."""
    names = task.entry.probe.class_names
    config = copy.deepcopy(encoder.config)
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.classifier_pooling = pooling
    config.classifier_channels = task.series[0].shape[0] if task.entry.fixed_montage else 0
    model = STEPForClassification(config)
    model.step.load_state_dict(encoder.state_dict())
    return model.eval()


def predict(model: STEPForClassification, task: ProbeTask, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Class predictions (len(rows),) of the model (eval mode) on the given series."""
    logits = model.predict_logits([task.series[r] for r in rows], task.sampling_rate, batch_size=batch_size)
    return logits.argmax(axis=1)


def finetune(start: STEPForClassification, task: ProbeTask, fit_rows: np.ndarray, val_rows: np.ndarray,
             config: FinetuneParams, batch_size: int = 32) -> FinetuneRun:
    """FT of a copy of `start` (encoder + LP head) on the train fold; returns the model of the step that scored
    best on the validation fold (step 0 = `start` itself), ties going to the earlier step."""
    metric = task.entry.probe.metric
    steps = min(config.max_steps, math.ceil(config.epochs * len(fit_rows) / config.batch_size))
    checkpoints = {round(steps * (i + 1) / config.evaluations) for i in range(config.evaluations)} - {0}
    val_truth = task.labels[val_rows]
    best_score = task_score(val_truth, predict(start, task, val_rows, batch_size), metric)[0]
    run = FinetuneRun(model=start, selected_step=0, steps=steps, validation={0: best_score})

    torch.manual_seed(config.seed)
    model = copy.deepcopy(start).train()
    groups = [{"params": list(model.step.parameters()), "lr": config.encoder_lr, "peak": config.encoder_lr},
              {"params": list(model.classifier.parameters()), "lr": config.head_lr, "peak": config.head_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    parameters = [p for group in groups for p in group["params"]]
    warmup = round(config.warmup_fraction * steps)
    rng = np.random.default_rng(config.seed)
    order: list[int] = []
    for step in range(steps):
        if len(order) < config.batch_size:  # epochs of shuffled train-fold rows
            order += rng.permutation(fit_rows).tolist()
        batch, order = order[: config.batch_size], order[config.batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, group["peak"], warmup, steps, 0.0)
        values, lengths = pad_series([task.series[r] for r in batch])  # (B, C, T), (B,)
        out = model(values, lengths, sampling_rate=task.sampling_rate, labels=torch.from_numpy(task.labels[batch]))
        optimizer.zero_grad(set_to_none=True)
        (out.loss + out.patching_loss).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        run.losses.append(out.loss.item())
        if step + 1 in checkpoints:
            model.eval()
            score = task_score(val_truth, predict(model, task, val_rows, batch_size), metric)[0]
            run.validation[step + 1] = score
            if score > best_score:
                best_score, run.selected_step, run.model = score, step + 1, copy.deepcopy(model)
            model.train()
    return run


def run_finetune(params: Params) -> dict:
    """LP-FT of the distilled and of a random-weight student on every task and split, with the frozen probes of
    both on the same splits; writes reports/finetune_metrics.json and reports/finetune/."""
    config = params.finetune
    catalog = load_catalog(params.prepare.catalog)
    names = config.datasets or [e.name for e in catalog.datasets if e.role == "probe"]
    distilled = STEPEncoder.from_pretrained(params.distill.output_dir).eval()
    torch.manual_seed(config.seed)
    starts = {"distilled": distilled, "scratch": STEPEncoder(distilled.config).eval()}
    probe_names = {"distilled": "step-distilled", "scratch": "step-random"}  # the probe table's rows
    pooling = params.evaluate.pooling or distilled.config.embedding_pooling
    batch_size, alphas = params.evaluate.batch_size, params.evaluate.probe_alphas

    results = ProbeResults()  # model -> task -> per-split scores, as the probe table keeps them
    curves: dict[tuple[str, str], FinetuneRun] = {}
    selected: dict[str, dict[str, list[int]]] = {}  # model -> task -> selected step per split
    started = time.perf_counter()
    for name in tqdm(names, desc="finetune", unit="task"):
        task_started = time.perf_counter()
        task = load_task(catalog.get(name), catalog, params.prepare.series_store)
        metric = task.entry.probe.metric
        splits = probe_splits(task, config.splits, params.evaluate.seed)  # evaluate's first splits, the same
        for kind, encoder in starts.items():
            frozen = encoder.embed(task.series, task.sampling_rate, batch_size=batch_size, pooling=pooling,
                                   keep_channels=task.entry.fixed_montage)  # (n, width), shared by the splits
            for split, train in enumerate(splits):
                ratio = (~train).sum() / train.sum()
                test_rows = np.flatnonzero(~train)
                truth = task.labels[test_rows]
                results.add(probe_names[kind], task,
                            *probe_score(frozen, task.labels, train, metric, alphas), ratio)

                fit_rows, val_rows = validation_fold(task.labels, train, config.val_fraction, config.seed + split)
                start = classifier_for(encoder, task, pooling)
                num_labels = start.config.num_labels
                start.load_state_dict(probe_head(frozen[fit_rows], task.labels[fit_rows], num_labels, alphas),
                                      strict=False)
                run = finetune(start, task, fit_rows, val_rows, config, batch_size)
                if run.selected_step == 0:  # pure LP won: the probe refit on the whole train split
                    run.model.load_state_dict(probe_head(frozen[train], task.labels[train], num_labels, alphas),
                                              strict=False)
                    predicted = run.model.head(torch.from_numpy(frozen[test_rows])).argmax(dim=1).numpy()
                else:
                    predicted = predict(run.model, task, test_rows, batch_size)
                results.add(f"finetune-{kind}", task, *task_score(truth, predicted, metric), ratio)
                selected.setdefault(f"finetune-{kind}", {}).setdefault(name, []).append(run.selected_step)
                if split == 0:
                    curves[(f"finetune-{kind}", name)] = run
                    if kind == "distilled" and config.save_dir:
                        run.model.save_pretrained(Path(config.save_dir) / name)
        log.info("%s (%.0f s): %s", name, time.perf_counter() - task_started,
                 {m: round(float(np.mean(s[name])), 3) for m, s in results.scores.items()})
    wall = time.perf_counter() - started

    metrics = {}
    accuracy = results.per_split(results.accuracy)
    for model_name, by_task in results.summary().items():
        metrics[model_name] = {task: round(score, 4) for task, score in by_task.items()}
        if "real_mean" in by_task:
            metrics[model_name]["real_accuracy_mean"] = round(float(np.mean(accuracy[model_name]["real_mean"])), 4)
    write_finetune_reports(Path(config.reports_dir), metrics, results, curves, selected, config, wall)
    return metrics


def write_finetune_reports(directory: Path, metrics: dict, results: ProbeResults, curves: dict[tuple, FinetuneRun],
                           selected: dict, config: FinetuneParams, wall: float) -> None:
    """finetune_metrics.json (DVC metrics), finetune/splits.json (per-split scores, intervals, the paired
    differences of finetune-distilled against every other row, the selected steps), finetune/loss.csv (train
    loss per step and validation score per checkpoint of split 0) and finetune/loss_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (directory / "finetune").mkdir(parents=True, exist_ok=True)
    (directory / "finetune_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rounded = lambda values: [round(float(v), 4) for v in values]  # noqa: E731
    differences = results.comparisons("finetune-distilled")
    record = {
        "budget": config.model_dump(),
        "scores": results.scores,
        "intervals": {m: {t: rounded(bounds) for t, bounds in by_task.items()}
                      for m, by_task in results.intervals().items()},
        # task (and mean, real_mean) -> [mean, low, high] of finetune-distilled minus the other row, per split
        "distilled_minus_scratch": {t: rounded(v) for t, v in differences["finetune-scratch"].items()},
        "finetune_distilled_minus": {m: {t: rounded(v) for t, v in by_task.items()}
                                     for m, by_task in differences.items()},
        "selected_step": selected,
        "steps_split_0": {m: {t: run.steps for (m2, t), run in curves.items() if m2 == m} for m, _ in curves},
    }
    (directory / "finetune" / "splits.json").write_text(json.dumps(record, indent=2) + "\n")
    # the wall time varies from run to run: a run record outside what DVC hashes (git-ignored), not splits.json
    (directory / "run_info").mkdir(exist_ok=True)
    (directory / "run_info" / "finetune.json").write_text(json.dumps({"wall_seconds": round(wall, 1)}) + "\n")
    with open(directory / "finetune" / "loss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "task", "step", "loss", "validation"])
        for (model, task), run in curves.items():
            for step in range(run.steps + 1):
                loss = round(run.losses[step - 1], 5) if step else ""
                validation = round(run.validation[step], 4) if step in run.validation else ""
                writer.writerow((model, task, step, loss, validation))

    tasks = sorted({task for _, task in curves})
    columns = min(4, len(tasks))
    rows = -(-len(tasks) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for axis, task in zip(axes.flat, tasks):
        for model in ("finetune-distilled", "finetune-scratch"):
            run = curves.get((model, task))
            if run is None:
                continue
            line, = axis.plot(np.arange(1, run.steps + 1), run.losses, lw=0.8, label=model.removeprefix("finetune-"))
            steps = sorted(run.validation)
            axis.plot(steps, [1 - run.validation[s] for s in steps], "o--", ms=3, lw=0.8, color=line.get_color())
        axis.set_title(task, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(tasks):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.supxlabel("step (split 0)", fontsize=8)
    figure.supylabel("train cross-entropy (lines), 1 - validation metric (dots)", fontsize=8)
    figure.tight_layout()
    figure.savefig(directory / "finetune" / "loss_curves.png", dpi=110)
    plt.close(figure)
