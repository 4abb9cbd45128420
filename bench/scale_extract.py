"""Scale-out of extraction: one process vs Dask LocalClusters of 1 and 2 workers, and time as the corpus grows.

Each run is a fresh `step-pipeline extract` process (as a user runs it), so times include start-up: Python and
torch imports, the teacher load, and for Dask the cluster start. Peak memory is the largest resident set of any
process of the run (the driver or a worker), from getrusage(RUSAGE_CHILDREN).

Goals: with 2 workers, time grows linearly with the corpus and peak memory stays flat. On this 2-core machine
one process already uses both cores through torch's threads, so 2 workers cannot be expected to beat it by
much; the worker speed-up (1 -> 2 workers) is the number that says whether the cluster path scales.

    python bench/scale_extract.py [--base 128] [--teacher fracast] [--sizes 1 2 4 8]
"""

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from stages import prepare as prepare_stage

ROOT = Path(__file__).resolve().parents[1]


def write_project(tmp: Path, base: int, sizes: list[int], teacher: str) -> Path:
    """A catalog with one EEG data set per corpus size (base x size series of 30 s at 100 Hz), prepared."""
    datasets = [{"name": f"eeg_{size}x", "domain": "neuroscience", "role": "pretrain", "sampling_rate": 100.0,
                 "channels": 1, "unit": "V",
                 "source": {"kind": "generator", "generator": "sleep_eeg", "seed": 500 + size, "count": base * size}}
                for size in sizes]
    (tmp / "catalog.yaml").write_text(yaml.safe_dump({"data_root": "raw", "datasets": datasets}, sort_keys=False))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"] |= {"catalog": str(tmp / "catalog.yaml"), "series_store": str(tmp / "series.zarr")}
    params["extract"]["teachers"] = {teacher: params["extract"]["teachers"][teacher]}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    prepare_stage.run(str(path))
    return path


def run_extract(params_path: Path, dataset: str, store_dir: Path, workers: int | None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of the largest process) of one `step-pipeline extract` run."""
    params = yaml.safe_load(params_path.read_text())
    params["extract"]["store_dir"] = str(store_dir)
    run_params = store_dir.with_suffix(".yaml")
    run_params.write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, "-m", "pipeline.cli", "extract", "--dataset", dataset, "--params", str(run_params)]
    command += ["--workers", str(workers)] if workers else []
    start = time.perf_counter()
    # A wrapper process per run, so RUSAGE_CHILDREN (the largest descendant: driver or worker) is this run's only
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *command], check=True, capture_output=True, text=True,
                         env=os.environ | {"HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    return seconds, int(out.stdout.split()[-1]) / 1024


def marginal(times: dict[int, tuple[float, float]], base: int) -> tuple[float, float]:
    """(ms per series, start-up seconds) from the smallest and largest corpus of a mode."""
    (s0, (t0, _)), (s1, (t1, _)) = min(times.items()), max(times.items())
    per_series = (t1 - t0) / (base * (s1 - s0))
    return 1000 * per_series, t0 - per_series * base * s0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=128, help="series in the 1x corpus")
    parser.add_argument("--teacher", default="fracast", help="a teacher of params.yaml")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 2, 4, 8])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = sorted(args.sizes)
    ends = [sizes[0], sizes[-1]]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params_path = write_project(tmp, args.base, sizes, args.teacher)
        print(f"teacher {args.teacher}, {os.cpu_count()} cores; corpus 1x = {args.base} EEG series of 3000 samples")
        modes = {"2 workers": (2, sizes), "1 worker": (1, ends), "1 process": (None, ends)}
        times = {mode: {size: run_extract(params_path, f"eeg_{size}x", tmp / f"{mode.replace(' ', '_')}_{size}",
                                          workers)
                        for size in mode_sizes}
                 for mode, (workers, mode_sizes) in modes.items()}

    print("\nCorpus growth, 2 Dask workers (goal: time linear, peak memory flat)")
    print(f"{'size':>5} {'series':>7} {'seconds':>8} {'x 1x':>6} {'ms/series':>10} {'peak MB':>8}")
    growth = times["2 workers"]
    for size, (seconds, peak) in growth.items():
        print(f"{size:>4}x {args.base * size:>7} {seconds:>8.1f} {seconds / growth[sizes[0]][0]:>6.2f} "
              f"{1000 * seconds / (args.base * size):>10.1f} {peak:>8.0f}")

    print(f"\nModes, {sizes[0]}x and {sizes[-1]}x corpus: marginal cost per series (the slope) and fixed start-up "
          "(the intercept: imports, teacher load, cluster start)")
    per_series = {}
    for mode, mode_times in times.items():
        per_series[mode], startup = marginal(mode_times, args.base)
        first, last = mode_times[sizes[0]], mode_times[sizes[-1]]
        print(f"{mode:>10}: {first[0]:6.1f} s -> {last[0]:6.1f} s, {per_series[mode]:5.1f} ms/series, start-up "
              f"{startup:5.1f} s, peak {max(first[1], last[1]):5.0f} MB")
    print(f"speed-up of the per-series cost, 1 -> 2 workers: {per_series['1 worker'] / per_series['2 workers']:.2f}x; "
          f"2 workers vs 1 process (torch on all cores): {per_series['1 process'] / per_series['2 workers']:.2f}x")


if __name__ == "__main__":
    main()
