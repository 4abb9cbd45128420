"""Resident memory of a long distillation, with glibc's malloc arenas bounded (shipped) and unbounded (before).

Each mode runs the default distillation (params.yaml, the extracted stores) for --steps steps in a fresh process,
validating every steps/10 steps; the distill loop records resident memory at each validation (reports/distill/
memory.csv). Prints RSS at those steps for both modes, side by side, and as its last line the peak of each and
the growth from the first tenth of the run to its end, e.g.
`distill_memory: peak bounded=1.9 GB unbounded=2.6 GB; growth bounded=+0.1 GB unbounded=+0.8 GB (goal: peak <= 3 GB,
flat)`.

    .venv/bin/python bench/distill_memory.py [--steps 600] [--quick]
"""

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

RUN = """
import sys
import pipeline.distill.train as train
if sys.argv[2] == "unbounded":
    train.bound_allocator_arenas = lambda arenas=2: None  # glibc's default: up to 8 arenas per core
from schemas.params import load_params
train.distill(load_params(sys.argv[1]))
"""


def run(mode: str, steps: int, directory: Path) -> list[tuple[int, float]]:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["distill"] |= {"max_steps": steps, "val_every": max(1, steps // 10), "checkpoint_every": steps,
                          "output_dir": str(directory / mode / "model"),
                          "checkpoint_dir": str(directory / mode / "checkpoints"),
                          "reports_dir": str(directory / mode / "reports")}
    path = directory / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-c", RUN, str(path), mode], check=True, capture_output=True)
    with open(directory / mode / "reports/distill/memory.csv", newline="") as handle:
        return [(int(row["step"]), float(row["rss_gb"])) for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true",
                        help="60 steps per mode (about 4 minutes in all on 2 cores: set-up and validations dominate)")
    args = parser.parse_args()
    steps = 60 if args.quick else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        curves = {mode: run(mode, steps, Path(tmp)) for mode in ("bounded", "unbounded")}
    print("step  " + "  ".join(f"{mode:>9s}" for mode in curves))
    for (step, bounded), (_, unbounded) in zip(curves["bounded"], curves["unbounded"]):
        print(f"{step:4d}  {bounded:7.2f} GB  {unbounded:7.2f} GB")
    peak = {mode: max(rss for _, rss in curve) for mode, curve in curves.items()}
    growth = {mode: curve[-1][1] - curve[1][1] for mode, curve in curves.items()}  # from step steps/10 to the end
    print(f"distill_memory: peak bounded={peak['bounded']:.2f} GB unbounded={peak['unbounded']:.2f} GB; growth "
          f"bounded={growth['bounded']:+.2f} GB unbounded={growth['unbounded']:+.2f} GB over {steps} steps "
          "(goal: peak <= 3 GB, flat)")


if __name__ == "__main__":
    main()
