"""What distillation leaves for people: metrics (JSON) and loss curves (CSV, PNG) for DVC, and a model card.

Everything DVC hashes is a function of the data, the params and the code, so a rerun reproduces it byte for byte.
What varies from run to run (wall time, throughput, resident memory, host, date) goes to a run record,
`<reports_dir>/run_info/`, which no stage declares and git ignores.
"""

import csv
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_info_dir(directory: Path) -> Path:
    """Where distillation's run record goes: `run_info/` beside `distill/` in the reports directory."""
    return directory.parent / "run_info"


def write_run_record(directory: Path, history: dict, wall_seconds: float, seen: int) -> dict:
    """run_info/distill.json (wall time, throughput, peak memory, host, finish time) and run_info/distill_memory.csv
    (resident memory at each validation): the figures that differ between two runs of the same params."""
    run_info = run_info_dir(directory)
    run_info.mkdir(parents=True, exist_ok=True)
    _write_csv(run_info / "distill_memory.csv", history.get("memory", []))
    record = {
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "wall_seconds": round(wall_seconds, 1),
        "segments_per_second": round(seen / wall_seconds, 2) if wall_seconds > 0 else None,
        # the process's own maximum (getrusage) where recorded; a checkpoint from before that has only samples
        "peak_rss_gb": max((r.get("peak_rss_gb", r["rss_gb"]) for r in history.get("memory", [])), default=None),
    }
    (run_info / "distill.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_reports(directory: Path, history: dict, teachers: list[str], wall_seconds: float, seen: int) -> dict:
    """metrics.json (dvc metrics), train_loss.csv / val_loss.csv (dvc plots) and loss_curves.png; the validation
    loss per training data set (val_loss_by_source.csv/.png); and the run record (write_run_record).
    Returns the metrics, with the run record's figures added (they are not written to metrics.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_csv(directory / "train_loss.csv", history["train"])
    _write_csv(directory / "val_loss.csv", history["val"])
    _write_csv(directory / "val_loss_by_source.csv", history.get("val_by_source", []))
    last_step = history["val"][-1]["step"] if history["val"] else None
    final_by_source = {row["dataset"]: round(row["total"], 5) for row in history.get("val_by_source", [])
                       if row["step"] == last_step}
    last_train = history["train"][-1]
    tail = history["train"][-20:]  # the last step alone is noisy: report the mean over the last 20 steps
    metrics = {
        "steps": last_train["step"],
        "train_loss": {name: round(sum(r[name] for r in tail) / len(tail), 5) for name in ["total", *teachers]},
        "val_loss": {name: round(history["val"][-1][name], 5) for name in ["total", *teachers]}
        if history["val"] else {},
        "first_val_loss": {name: round(history["val"][0][name], 5) for name in ["total", *teachers]}
        if history["val"] else {},
        "val_loss_by_source": final_by_source,
    }
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run_record = write_run_record(directory, history, wall_seconds, seen)

    figure, axes = plt.subplots(1, len(teachers) + 1, figsize=(4 * (len(teachers) + 1), 3.2), sharex=True)
    for axis, name in zip(axes, ["total", *teachers]):
        axis.plot([r["step"] for r in history["train"]], [r[name] for r in history["train"]], lw=0.8,
                  alpha=0.7, label="train")
        axis.plot([r["step"] for r in history["val"]], [r[name] for r in history["val"]], "o-", label="validation")
        axis.set_title(name)
        axis.set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(directory / "loss_curves.png", dpi=110)
    plt.close(figure)
    if final_by_source:
        plot_loss_by_source(directory / "val_loss_by_source.png", final_by_source, last_step)
    return metrics | {name: value for name, value in run_record.items() if name not in ("finished", "host")}


def plot_loss_by_source(path: Path, losses: dict[str, float], step: int) -> None:
    """Horizontal bars of the final validation loss per training data set, worst on top."""
    names = sorted(losses, key=losses.get)
    figure, axis = plt.subplots(figsize=(6, 0.25 * len(names) + 1))
    axis.barh(names, [losses[n] for n in names])
    axis.set_xlabel(f"validation loss at step {step} (all teachers)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_model_card(output: Path, params, stores: dict, datasets: list[str], metrics: dict) -> None:
    """README.md beside the weights: teachers, store config hashes, data, params, steps, final losses."""
    teacher_rows = "\n".join(
        f"| {name} | {s.manifest.kind} | {s.manifest.model_id} | {s.manifest.feature_dim} | "
        f"`{s.manifest.config_hash}` | {metrics['val_loss'].get(name, float('nan')):.4f} |"
        for name, s in stores.items()
    )
    card = f"""---
library_name: transformers
tags: [time-series, scientific-data, distillation, step]
---
# STEP student encoder

A STEP encoder (learnable adaptive patching, statistics compensation, axial attention) distilled by
step-pipeline from cached teacher features. Load it with

```python
import pipeline  # registers the STEP classes with transformers' Auto classes
from transformers import AutoModel
model = AutoModel.from_pretrained("{output}")
embeddings = model.embed([series])  # list of (time,) or (channels, time) arrays -> (n, hidden)
```

## Teachers
| teacher | kind | model | feature dim | store config hash | final validation loss |
|---|---|---|---|---|---|
{teacher_rows}

## Training
- data sets: {", ".join(datasets)}
- steps: {metrics["steps"]} (wall time, throughput and memory of the run: `run_info/distill.json` in the reports
  directory, kept out of the model so that a rerun reproduces it byte for byte)
- final losses (validation): {json.dumps(metrics["val_loss"])}
- student: {json.dumps(params.student.model_dump())}
- distill params: {json.dumps(params.distill.model_dump(mode="json"))}
"""
    (output / "README.md").write_text(card)
