"""Start-up: `step-pipeline --help` against `python -c "import transformers"`, measured side by side.

Goal: ratio = help time / import-transformers time <= 0.5, i.e. a command that needs no model does not pay for
torch and transformers. Each is a fresh subprocess (what a user waits for); runs alternate so that load on the
machine hits both alike, and the median of N runs is compared.

    python bench/startup.py [--runs 7] [--quick]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.5


def seconds_to_run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (the median is compared)")
    parser.add_argument("--quick", action="store_true", help="3 runs each (well under 2 minutes)")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs

    console_script = Path(sys.executable).with_name("step-pipeline")
    commands = {
        "import transformers": [sys.executable, "-c", "import transformers"],
        "step-pipeline --help": [str(console_script), "--help"],
    }
    for command in commands.values():  # warm the file cache once: every measured run then starts alike
        seconds_to_run(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            times[name].append(seconds_to_run(command))

    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:22s} median {medians[name]:6.2f} s   runs {' '.join(f'{v:.2f}' for v in values)}")
    ratio = medians["step-pipeline --help"] / medians["import transformers"]
    print(f"startup: ratio={ratio:.2f} (goal <= {GOAL})")


if __name__ == "__main__":
    main()
