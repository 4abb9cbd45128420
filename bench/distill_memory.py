"""Resident memory of a long distillation: the shipped settings against the previous ones, side by side.

Modes, each the default distillation (params.yaml, the extracted stores) for --steps steps in a fresh process:
- shipped: params.yaml as is (glibc's malloc arenas bounded at 2, the heap trimmed between shuffle buffers;
  `distill.max_channels` channels per training segment at most);
- before: every channel of every segment (`max_channels: null`), glibc's default arenas (up to 8 per core) and
  no trimming.
The distill loop records resident memory at each validation (every steps/10 steps; reports/run_info/distill_memory.csv);
the peak is the process's own maximum resident set (getrusage), between validations too. Prints RSS at those
steps for both modes and, as its last line, each mode's peak, its growth from step steps/10 to the end and the
range it stays in from step steps/10 on, e.g. `distill_memory: shipped: peak 1.8 GB, growth +0.1 GB, 1.2-1.4 GB
from step 300; before: ... over 3000 steps (goal: peak <= 3 GB, flat)`.

    .venv/bin/python bench/distill_memory.py [--steps 3000] [--quick] [--modes shipped before]
"""

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

RUN = """
import resource, sys
import pipeline.distill.loader as loader
import pipeline.distill.train as train
if sys.argv[2] == "before":
    train.bound_allocator_arenas = lambda arenas=2: None  # glibc's default: up to 8 arenas per core
    loader.release_free_memory = lambda: None  # and the heap never trimmed
from schemas.params import load_params
train.distill(load_params(sys.argv[1]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(mode: str, steps: int, directory: Path) -> tuple[list[tuple[int, float]], float]:
    """([(step, RSS GB at that validation)], peak RSS GB of the whole run) of one mode."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["distill"] |= {"max_steps": steps, "val_every": max(1, steps // 10), "checkpoint_every": steps,
                          "output_dir": str(directory / mode / "model"),
                          "checkpoint_dir": str(directory / mode / "checkpoints"),
                          "reports_dir": str(directory / mode / "reports")}
    if mode == "before":
        params["distill"]["max_channels"] = None
    path = directory / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, "-c", RUN, str(path), mode], check=True, capture_output=True, text=True)
    with open(directory / mode / "reports/run_info/distill_memory.csv", newline="") as handle:
        curve = [(int(row["step"]), float(row["rss_gb"])) for row in csv.DictReader(handle)]
    return curve, int(out.stdout.split()[-1]) * 1024 / 1e9  # KiB -> GB, as resident_gb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--quick", action="store_true",
                        help="60 steps per mode (about 3 minutes in all on 2 cores: set-up and validations dominate)")
    parser.add_argument("--modes", nargs="+", choices=["shipped", "before"], default=["shipped", "before"],
                        help="run only some modes (the previous settings take about twice as long)")
    args = parser.parse_args()
    steps = 60 if args.quick else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        runs = {mode: run(mode, steps, Path(tmp)) for mode in args.modes}
    print("step  " + "  ".join(f"{mode:>10s}" for mode in runs))
    for rows in zip(*(curve for curve, _ in runs.values())):
        print(f"{rows[0][0]:4d}  " + "  ".join(f"{rss:7.2f} GB" for _, rss in rows))
    # growth: from step steps/10 (after the first batches of every shape) to the end
    summary = "; ".join(f"{mode}: peak {peak:.2f} GB, growth {curve[-1][1] - curve[1][1]:+.2f} GB, "
                        f"{min(r for _, r in curve[1:]):.2f}-{max(r for _, r in curve[1:]):.2f} GB from step {curve[1][0]}"
                        for mode, (curve, peak) in runs.items())
    print(f"distill_memory: {summary} over {steps} steps (goal: peak <= 3 GB, flat)")


if __name__ == "__main__":
    main()
