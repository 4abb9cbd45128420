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
   best step wins, ties going to the earlier one, and a fine-tuned step only if it beats step 0 (pure LP) by
   `min_gain`: a fine-tuned model is trained on the fold only and picked among several by the same small fold,
   so a small validation gain mostly turns into a test loss (measured, docs/finetuning.md). With fewer than
   `min_validation` series in the validation fold, FT is not run at all and the probe is kept: on 10 and 15
   validation series one series moves the metric by about `min_gain` (measured: docs/finetuning.md).
5. What the test split scores: if step 0 won, the probe refit on the whole train split (a ridge solve: the
   frozen probe itself, so the fold's series are not wasted); if a step s > 0 won, the fine-tuned model as
   validated, trained on the train fold only. Refitting FT on the whole split to step s (`finetune(...,
   val_rows=None, steps=, stop_at=)`) was measured and dropped: the refit trajectory is never validated, and on
   the random-weight student it once fell from the probe's 0.80 to 0.41 binary F1 (gwosc_like, docs/finetuning.md).

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
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from sklearn.linear_model import RidgeClassifier, RidgeClassifierCV
from sklearn.model_selection import ShuffleSplit, StratifiedKFold, StratifiedShuffleSplit, cross_val_predict
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from data_catalog.catalog import load_catalog
from pipeline.distill.loader import pad_series
from pipeline.distill.train import learning_rate
from pipeline.evaluate import (ProbeResults, ProbeTask, load_task, probe_score, probe_splits, random_twin,
                               task_score)
from pipeline.student import STEPEncoder, STEPForClassification
from pipeline.student.inputs import length_batches
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


class BlockInputs:
    """Every series' `STEPForClassification.block_inputs` under one encoder, computed once (batched by length as
    embed() batches): with `finetune.tune: blocks` the weights before the Transformer blocks stay frozen, so a
    training step, a validation check and the frozen probe's embedding all start from these instead of from the
    raw series (the patching, fine structure and front end of a 16,000-sample series cost far more than the
    blocks over its ~60 tokens)."""

    def __init__(self, model: STEPForClassification, task: ProbeTask, batch_size: int):
        self.items: list[dict[str, torch.Tensor]] = [{} for _ in task.series]
        model.eval()
        for batch in length_batches([s.shape for s in task.series], batch_size, 2**24):
            values, lengths = pad_series([task.series[i] for i in batch])  # (B, C, T), (B,)
            for i, item in zip(batch, model.block_inputs(values, lengths, task.sampling_rate)):
                self.items[i] = item

    def batch(self, rows) -> dict[str, torch.Tensor | None]:
        """Padded (B, C, N, D) tokens, (B, N) token_mask, (B, C, 2) statistics, (B, C, N, J + K) fine_structure,
        (B, C, N, 84 D) kernel_activity."""
        items = [self.items[r] for r in rows]
        counts = [item["tokens"].shape[1] for item in items]
        longest = max(counts)

        def padded(key):
            if items[0][key] is None:
                return None
            return torch.stack([F.pad(item[key], (0, 0, 0, longest - n)) for item, n in zip(items, counts)])

        return {"tokens": padded("tokens"), "token_mask": torch.arange(longest) < torch.tensor(counts)[:, None],
                "statistics": None if items[0]["statistics"] is None else torch.stack([i["statistics"] for i in items]),
                "fine_structure": padded("fine_structure"), "kernel_activity": padded("kernel_activity")}


def forward_rows(model: STEPForClassification, task: ProbeTask, rows, cache: BlockInputs | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, num_labels) logits of the given series and the patching penalty: from the raw series (end to end) or,
    with a cache, from their block inputs (no penalty: the patching is frozen)."""
    if cache is None:
        values, lengths = pad_series([task.series[r] for r in rows])  # (B, C, T), (B,)
        out = model(values, lengths, sampling_rate=task.sampling_rate)
        return out.logits, out.patching_loss
    return model.head(model.embedding_from_block_inputs(**cache.batch(rows))), torch.zeros(())


@torch.no_grad()
def predict(model: STEPForClassification, task: ProbeTask, rows: np.ndarray, batch_size: int,
            cache: BlockInputs | None = None) -> np.ndarray:
    """Class predictions (len(rows),) of the model (eval mode) on the given series."""
    if cache is None:
        logits = model.predict_logits([task.series[r] for r in rows], task.sampling_rate, batch_size=batch_size)
        return logits.argmax(axis=1)
    model.eval()
    return np.concatenate([forward_rows(model, task, rows[i: i + batch_size], cache)[0].argmax(dim=1).numpy()
                           for i in range(0, len(rows), batch_size)])


def frozen_embeddings(model: STEPForClassification, task: ProbeTask, batch_size: int, cache: BlockInputs | None
                      ) -> np.ndarray:
    """(n, width) embeddings of every series by the model's encoder as it is: embed()'s, or the same numbers
    (to float rounding) from the cache."""
    if cache is None:
        return model.step.embed(task.series, task.sampling_rate, batch_size=batch_size, pooling=model.pooling,
                                keep_channels=model.montage_channels > 0)
    with torch.no_grad():
        return np.concatenate([model.embedding_from_block_inputs(**cache.batch(range(i, min(i + batch_size,
                               len(task.series))))).numpy() for i in range(0, len(task.series), batch_size)])


def trainable_encoder_parameters(model: STEPForClassification, tune: str) -> list[torch.nn.Parameter]:
    """The encoder weights FT trains: all of them (`all`), or the Transformer blocks, the final LayerNorm and
    the embedding projection (`blocks`), the others frozen (requires_grad off)."""
    if tune == "all":
        return list(model.step.parameters())
    tuned = [model.step.blocks, model.step.final_norm, model.step.pooled_norm]
    if model.step.embedding_projection is not None:
        tuned.append(model.step.embedding_projection)
    keep = {id(p) for module in tuned for p in module.parameters()}
    for parameter in model.step.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    return [p for p in model.step.parameters() if id(p) in keep]


def budget(config: FinetuneParams, rows: int) -> int:
    """Steps for a train fold of `rows` series: `epochs` passes over it, at most `max_steps`."""
    return min(config.max_steps, math.ceil(config.epochs * rows / config.batch_size))


def finetune(start: STEPForClassification, task: ProbeTask, fit_rows: np.ndarray, val_rows: np.ndarray | None,
             config: FinetuneParams, batch_size: int = 32, cache: BlockInputs | None = None,
             steps: int | None = None, stop_at: int | None = None) -> FinetuneRun:
    """FT of a copy of `start` (encoder + LP head) on `fit_rows` over a schedule of `steps` (default: the budget
    of `fit_rows`). With `val_rows`: returns the model of the step that scored best on them (step 0 = `start`
    itself; a later step only if it beats step 0 by `config.min_gain`), ties going to the earlier step. Without:
    trains to `stop_at` (default `steps`) and returns that. With `cache` (the block inputs of `start`'s encoder),
    `config.tune` must be `blocks`."""
    if cache is not None and config.tune != "blocks":
        raise ValueError(f"finetune.tune {config.tune!r}: block inputs can be cached only when the layers before "
                         "the blocks are frozen (tune: blocks)")
    if val_rows is not None and len(val_rows) < config.min_validation:  # too few to tell FT from luck: the probe
        return FinetuneRun(model=start, selected_step=0, steps=0)
    metric = task.entry.probe.metric
    steps = steps or budget(config, len(fit_rows))
    stop_at = steps if stop_at is None else stop_at
    checkpoints = set()
    best_score = -1.0
    run = FinetuneRun(model=start, selected_step=0, steps=steps)
    if val_rows is not None:
        checkpoints = {round(steps * (i + 1) / config.evaluations) for i in range(config.evaluations)} - {0}
        val_truth = task.labels[val_rows]
        best_score = task_score(val_truth, predict(start, task, val_rows, batch_size, cache), metric)[0]
        run.validation[0] = best_score

    torch.manual_seed(config.seed)
    model = copy.deepcopy(start).train()
    encoder_parameters = trainable_encoder_parameters(model, config.tune)
    groups = [{"params": encoder_parameters, "lr": config.encoder_lr, "peak": config.encoder_lr},
              {"params": list(model.classifier.parameters()), "lr": config.head_lr, "peak": config.head_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    parameters = [p for group in groups for p in group["params"]]
    warmup = round(config.warmup_fraction * steps)
    rng = np.random.default_rng(config.seed)
    order: list[int] = []
    for step in range(stop_at):
        if len(order) < config.batch_size:  # epochs of shuffled train-fold rows
            order += rng.permutation(fit_rows).tolist()
        batch, order = order[: config.batch_size], order[config.batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, group["peak"], warmup, steps, 0.0)
        logits, patching_loss = forward_rows(model, task, batch, cache)
        loss = F.cross_entropy(logits, torch.from_numpy(task.labels[batch]))
        optimizer.zero_grad(set_to_none=True)
        (loss + patching_loss).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        run.losses.append(loss.item())
        if step + 1 in checkpoints:
            model.eval()
            score = task_score(val_truth, predict(model, task, val_rows, batch_size, cache), metric)[0]
            run.validation[step + 1] = score
            if score > best_score and score - run.validation[0] >= config.min_gain:
                best_score, run.selected_step, run.model = score, step + 1, copy.deepcopy(model)
            model.train()
    if val_rows is None:
        run.model, run.selected_step = model, stop_at
    run.model.requires_grad_(True).eval()
    return run


def run_finetune(params: Params) -> dict:
    """LP-FT of the distilled and of a random-weight student on every task and split, with the frozen probes of
    both on the same splits; writes reports/finetune_metrics.json and reports/finetune/."""
    config = params.finetune
    catalog = load_catalog(params.prepare.catalog)
    names = config.datasets or [e.name for e in catalog.datasets if e.role == "probe"]
    distilled = STEPEncoder.from_pretrained(params.distill.output_dir).eval()
    starts = {"distilled": distilled, "scratch": random_twin(distilled, params, config.seed)}
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
            template = classifier_for(encoder, task, pooling)
            cache = BlockInputs(template, task, batch_size) if config.tune == "blocks" else None
            frozen = frozen_embeddings(template, task, batch_size, cache)  # (n, width), shared by the splits
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
                run = finetune(start, task, fit_rows, val_rows, config, batch_size, cache)
                final = run.model  # a fine-tuned step won: the model validated, as trained on the train fold
                if run.selected_step == 0:  # pure LP won: the probe refit on the whole train split, the frozen probe
                    final.load_state_dict(probe_head(frozen[train], task.labels[train], num_labels, alphas),
                                          strict=False)
                    predicted = final.head(torch.from_numpy(frozen[test_rows])).argmax(dim=1).numpy()
                else:
                    predicted = predict(final, task, test_rows, batch_size, cache)
                results.add(f"finetune-{kind}", task, *task_score(truth, predicted, metric), ratio)
                selected.setdefault(f"finetune-{kind}", {}).setdefault(name, []).append(run.selected_step)
                if split == 0:
                    curves[(f"finetune-{kind}", name)] = run
                    if kind == "distilled" and config.save_dir:
                        final.save_pretrained(Path(config.save_dir) / name)
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
