"""The paper's protocol: fine-tune the encoder end to end on each task, against the same architecture from scratch.

For every probe task, two models with the same architecture and config are trained with one budget
(`finetune.steps` AdamW steps of `finetune.batch_size` series, linear warm-up then cosine decay, a linear
classification head on the pooled embedding, cross-entropy plus the adaptive-patching penalty):
- `finetune-distilled`: starts from the distilled student's weights;
- `finetune-scratch`: starts from random weights (seeded).
Both are scored on the test split(s) of `pipeline.evaluate.probe_splits` (the first `finetune.splits` of them)
with the task's metric and accuracy; with more than one split, the means get the probe table's intervals and the
distilled-minus-scratch difference its paired interval (the same ProbeResults code). The loop is as plain as the
distillation loop; the train-loss curves are written so that one can see whether the budget let the from-scratch
model's loss flatten.
"""

import copy
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data_catalog.catalog import load_catalog
from pipeline.distill.loader import pad_series
from pipeline.distill.train import learning_rate
from pipeline.evaluate import ProbeResults, ProbeTask, load_task, probe_splits, task_score
from pipeline.student import STEPEncoder
from schemas.params import FinetuneParams, Params

log = logging.getLogger(__name__)


def finetune(encoder: STEPEncoder, task: ProbeTask, train: np.ndarray, config: FinetuneParams
             ) -> tuple[STEPEncoder, torch.nn.Linear, list[float]]:
    """A copy of `encoder` and a new head trained on the rows of `train`; returns them and the loss per step."""
    torch.manual_seed(config.seed)
    model = copy.deepcopy(encoder).train()
    head = torch.nn.Linear(model.config.hidden_size, len(task.entry.probe.class_names))
    parameters = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    rows = np.flatnonzero(train)
    order: list[int] = []
    losses = []
    for step in range(config.steps):
        if len(order) < config.batch_size:  # epochs of shuffled train rows
            order += rng.permutation(rows).tolist()
        batch, order = order[: config.batch_size], order[config.batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.lr, config.warmup_steps, config.steps, 0.0)
        values, lengths = pad_series([task.series[r] for r in batch])  # (B, C, T), (B,)
        out = model(values, lengths, sampling_rate=task.sampling_rate, fixed_montage=task.entry.fixed_montage)
        loss = torch.nn.functional.cross_entropy(head(out.pooled), torch.from_numpy(task.labels[batch]))
        optimizer.zero_grad(set_to_none=True)
        (loss + out.patching_loss).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), head.eval(), losses


@torch.no_grad()
def predict(model: STEPEncoder, head: torch.nn.Linear, task: ProbeTask, rows: np.ndarray) -> np.ndarray:
    """Class predictions (len(rows),) of the fine-tuned model on the given series."""
    embeddings = model.embed([task.series[r] for r in rows], task.sampling_rate, pooling="pooled",
                             keep_channels=task.entry.fixed_montage)  # (n, hidden): `pooled` averages channels anyway
    return head(torch.from_numpy(embeddings)).argmax(dim=-1).numpy()


def run_finetune(params: Params) -> dict:
    """Fine-tune the distilled and a random-weight student on every task; write reports/finetune_metrics.json."""
    config = params.finetune
    catalog = load_catalog(params.prepare.catalog)
    names = config.datasets or [e.name for e in catalog.datasets if e.role == "probe"]
    distilled = STEPEncoder.from_pretrained(params.distill.output_dir)
    torch.manual_seed(config.seed)
    starts = {"finetune-distilled": distilled, "finetune-scratch": STEPEncoder(distilled.config)}

    results = ProbeResults()  # model -> task -> per-split scores, as the probe table keeps them
    curves: dict[tuple[str, str], list[float]] = {}
    started = time.perf_counter()
    for name in tqdm(names, desc="finetune", unit="task"):
        task = load_task(catalog.get(name), catalog, params.prepare.series_store)
        for split, train in enumerate(probe_splits(task, config.splits, params.evaluate.seed)[: config.splits]):
            truth = task.labels[~train]
            for model_name, start in starts.items():
                model, head, losses = finetune(start, task, train, config)
                predicted = predict(model, head, task, np.flatnonzero(~train))
                score, correct = task_score(truth, predicted, task.entry.probe.metric)
                results.add(model_name, task, score, correct, (~train).sum() / train.sum())
                if split == 0:
                    curves[(model_name, name)] = losses
        log.info("%s: %s", name, {m: round(float(np.mean(s[name])), 3) for m, s in results.scores.items()})
    wall = time.perf_counter() - started

    metrics = {}
    accuracy = results.per_split(results.accuracy)
    for model_name, by_task in results.summary().items():
        metrics[model_name] = {task: round(score, 4) for task, score in by_task.items()}
        if "real_mean" in by_task:
            metrics[model_name]["real_accuracy_mean"] = round(float(np.mean(accuracy[model_name]["real_mean"])), 4)
    write_finetune_reports(Path(config.reports_dir), metrics, results, curves, config, wall)
    return metrics


def write_finetune_reports(directory: Path, metrics: dict, results: ProbeResults, curves: dict,
                           config: FinetuneParams, wall: float) -> None:
    """finetune_metrics.json (DVC metrics), finetune/splits.json (per-split scores, intervals, the paired
    distilled-minus-scratch difference), finetune/loss.csv and finetune/loss_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (directory / "finetune").mkdir(parents=True, exist_ok=True)
    (directory / "finetune_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rounded = lambda values: [round(float(v), 4) for v in values]  # noqa: E731
    record = {
        "budget": config.model_dump(),
        "wall_seconds": round(wall, 1),
        "scores": results.scores,
        "intervals": {m: {t: rounded(bounds) for t, bounds in by_task.items()}
                      for m, by_task in results.intervals().items()},
        # task (and mean, real_mean) -> [mean, low, high] of finetune-distilled minus finetune-scratch
        "distilled_minus_scratch": {t: rounded(v) for t, v in
                                    results.comparisons("finetune-distilled")["finetune-scratch"].items()},
    }
    (directory / "finetune" / "splits.json").write_text(json.dumps(record, indent=2) + "\n")
    with open(directory / "finetune" / "loss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "task", "step", "loss"])
        for (model, task), losses in curves.items():
            writer.writerows((model, task, step + 1, round(loss, 5)) for step, loss in enumerate(losses))

    tasks = sorted({task for _, task in curves})
    columns = min(4, len(tasks))
    rows = -(-len(tasks) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    window = max(1, config.steps // 30)
    for axis, task in zip(axes.flat, tasks):
        for model in metrics:
            losses = np.asarray(curves[(model, task)])
            smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
            axis.plot(np.arange(len(smoothed)) + window, smoothed, label=model.removeprefix("finetune-"))
        axis.set_title(task, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(tasks):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.supxlabel("step", fontsize=8)
    figure.supylabel(f"train cross-entropy (moving mean of {window})", fontsize=8)
    figure.tight_layout()
    figure.savefig(directory / "finetune" / "loss_curves.png", dpi=110)
    plt.close(figure)
