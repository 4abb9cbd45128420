"""Distillation throughput, float32 against bf16 autocast, side by side on the default data (same batches, seed).

Each mode runs the default distillation (params.yaml, the extracted stores) for --steps steps in a fresh process,
with reports and checkpoints in a temp dir. Prints segments/s, the mean train loss over the last quarter of the
steps for each, and the ratio as the last line, e.g. `distill_throughput: ratio=1.8 (bf16 / fp32 segments/s)`.

    .venv/bin/python bench/distill_throughput.py [--steps 80] [--quick]
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

RUN = """
import json, sys
from pipeline.distill.train import distill
from schemas.params import load_params
metrics = distill(load_params(sys.argv[1]))
print("RESULT", json.dumps(metrics))
"""


def run(mode: str, steps: int, directory: Path) -> dict:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["distill"] |= {"bf16": mode == "bf16", "max_steps": steps, "val_every": steps, "warmup_steps": 10,
                          "checkpoint_every": steps, "output_dir": str(directory / mode / "model"),
                          "checkpoint_dir": str(directory / mode / "checkpoints"),
                          "reports_dir": str(directory / mode / "reports")}
    path = directory / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-c", RUN, str(path)], capture_output=True, text=True, check=True)
    metrics = json.loads(result.stdout.split("RESULT", 1)[1])
    with open(directory / mode / "reports/distill/train_loss.csv", newline="") as handle:
        losses = [float(row["total"]) for row in csv.DictReader(handle)]
    tail = losses[-max(1, len(losses) // 4):]
    return {"segments_per_second": metrics["segments_per_second"], "late_train_loss": sum(tail) / len(tail)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--quick", action="store_true", help="20 steps per mode (under 2 minutes)")
    args = parser.parse_args()
    steps = 20 if args.quick else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: run(mode, steps, Path(tmp)) for mode in ("fp32", "bf16")}
    for mode, result in results.items():
        print(f"{mode}: {result['segments_per_second']:.1f} segments/s, train loss over the last quarter "
              f"{result['late_train_loss']:.3f} ({steps} steps)")
    ratio = results["bf16"]["segments_per_second"] / results["fp32"]["segments_per_second"]
    print(f"distill_throughput: ratio={ratio:.2f} (bf16 / fp32 segments/s; goal >= 2)")


if __name__ == "__main__":
    main()
