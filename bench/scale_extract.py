"""Scale-out of extraction: one process vs Dask LocalClusters of 1 and 2 workers, and time as the corpus grows.

Each run is a fresh `step-pipeline extract` process (as a user runs it), so times include start-up: Python and
torch imports, the teacher load, and for Dask the cluster start. Peak memory is the largest resident set of any
process of the run (the driver or a worker), from getrusage(RUSAGE_CHILDREN).

Goals: with 2 workers, time grows linearly with the corpus and peak memory stays flat. On this 2-core machine
one process already uses both cores through torch's threads, so 2 workers cannot be expected to beat it by
much; the worker speed-up (1 -> 2 workers) is the number that says whether the cluster path scales.

    python bench/scale_extract.py [--base 128] [--teacher fracast] [--sizes 1 2 4 8] [--compare-size 4]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=128, help="series in the 1x corpus")
    parser.add_argument("--teacher", default="fracast", help="a teacher of params.yaml")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--compare-size", type=int, default=4, help="corpus size of the workers comparison")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = sorted(set(args.sizes) | {args.compare_size})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params_path = write_project(tmp, args.base, sizes, args.teacher)
        print(f"teacher {args.teacher}, {os.cpu_count()} cores; corpus 1x = {args.base} EEG series of 3000 samples")

        growth = {}
        for size in args.sizes:
            growth[size] = run_extract(params_path, f"eeg_{size}x", tmp / f"grow_{size}", workers=2)
        compare = {}
        for label, workers in (("1 process", None), ("1 worker", 1), ("2 workers", 2)):
            compare[label] = run_extract(params_path, f"eeg_{args.compare_size}x", tmp / f"cmp_{workers}", workers)

    print("\nCorpus growth, 2 Dask workers (goal: time linear, peak memory flat)")
    print(f"{'size':>5} {'series':>7} {'seconds':>8} {'x 1x':>6} {'ms/series':>10} {'peak MB':>8}")
    first_size = args.sizes[0]
    for size, (seconds, peak) in growth.items():
        print(f"{size:>4}x {args.base * size:>7} {seconds:>8.1f} {seconds / growth[first_size][0]:>6.2f} "
              f"{1000 * seconds / (args.base * size):>10.1f} {peak:>8.0f}")
    if len(growth) > 1:
        (s0, (t0, _)), (s1, (t1, _)) = list(growth.items())[0], list(growth.items())[-1]
        marginal = 1000 * (t1 - t0) / (args.base * (s1 - s0))
        print(f"marginal cost {marginal:.1f} ms/series ({s0}x -> {s1}x); fixed start-up ~"
              f"{t0 - marginal * args.base * s0 / 1000:.1f} s")

    print(f"\nWorkers on the {args.compare_size}x corpus ({args.base * args.compare_size} series)")
    for label, (seconds, peak) in compare.items():
        print(f"{label:>10}: {seconds:7.1f} s, peak {peak:6.0f} MB")
    one, two, single = compare["1 worker"][0], compare["2 workers"][0], compare["1 process"][0]
    print(f"speed-up 1 -> 2 workers: {one / two:.2f}x; 2 workers vs 1 process (torch threads): {single / two:.2f}x")


if __name__ == "__main__":
    main()
