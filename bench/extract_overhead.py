"""Extraction overhead: `extract` against a bare loop of the same teacher forward passes, per teacher.

Goal: ratio <= 1.15 for the cheap teachers, i.e. reading, batching, statistics, compression and writing hide
behind teacher compute. Also prints the store's bytes per token.

Corpus: by default the default run's own (params.yaml and the series store `dvc repro prepare` wrote, every
catalog data set `extract` reads: the issue's "default corpus"); the stores go to a temp dir. `--count N` uses
a copy of the catalog's pretraining sets instead (the long records left out), each at N series, prepared in a
temp dir. Wall times on this shared 2-core machine vary by up to 30% from one run to the next, so the bare loop
and `extract` run alternately `--repeats` times and the ratio reported is the median of the paired ratios. The
last line sums it up: `extract_overhead: silero_vad=1.10 spectral=1.12 (goal <= 1.15)`.

    python bench/extract_overhead.py [--repeats 3] [--count 64] [--teachers silero_vad spectral fracast] [--quick]
"""

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from data_catalog.catalog import load_catalog
from pipeline.extract import extract, segment_datasets
from pipeline.feature_store import FeatureStore
from pipeline.teachers import load_teacher
from schemas.params import load_params

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.15
QUICK_COUNT = 12
CHEAP_TEACHERS = ["silero_vad", "spectral"]  # whose fixed costs show; fracast's forward passes take minutes


def bare_loop(name, params, catalog, entries) -> tuple[float, float]:
    """Only the teacher's forward passes, on the same equal-length batches `extract` makes.

    Returns (seconds loading the teacher, seconds in forward passes); `extract` pays the load too."""
    spec = params.extract.teachers[name]
    start = time.perf_counter()
    teacher = load_teacher(name, spec)
    load_seconds = time.perf_counter() - start
    seconds = 0.0
    for dataset in segment_datasets(entries, catalog, params.prepare.series_store, params.segments.max_samples):
        values = {}
        for s in dataset.segments:
            values.setdefault(s.length, []).append(dataset.reader[s.series_index].values[:, s.start : s.stop])
        for same_length in values.values():
            for i in range(0, len(same_length), spec.batch_size):
                batch = np.stack(same_length[i : i + spec.batch_size])
                start = time.perf_counter()
                teacher.encode(batch, dataset.sampling_rate)
                seconds += time.perf_counter() - start
    return load_seconds, seconds


def default_corpus(tmp: Path) -> Path:
    """params.yaml as shipped, its prepared series store (paths made absolute), stores under tmp; its params."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    series_store = ROOT / params["prepare"]["series_store"]
    if not (series_store / "zarr.json").exists():
        raise SystemExit(f"{series_store} is missing: run `dvc repro prepare` first (or use --count N)")
    params["prepare"] |= {"catalog": str(ROOT / params["prepare"]["catalog"]), "series_store": str(series_store)}
    params["extract"]["store_dir"] = str(tmp / "features")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp / "params.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None,
                        help="series per pretraining data set of a generated corpus (default: the default corpus)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating bare / extract runs per teacher")
    parser.add_argument("--teachers", nargs="*", default=None, help=f"default: {' '.join(CHEAP_TEACHERS)}")
    parser.add_argument("--quick", action="store_true", help=f"--count {QUICK_COUNT} --repeats 1: a smoke run "
                        "under 2 minutes (fixed costs weigh more on so few series)")
    args = parser.parse_args()
    count = QUICK_COUNT if args.quick else args.count
    repeats = 1 if args.quick else args.repeats
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if count is None:
            params_path = default_corpus(tmp)
        else:
            sys.path.insert(0, str(ROOT))  # run as a script: bench/ itself is on the path, not the project root
            from bench.corpus import generated_corpus

            params_path = generated_corpus(tmp, count)
        params = load_params(params_path)
        cat = load_catalog(params.prepare.catalog)
        wanted = params.extract.datasets or [entry.name for entry in cat.datasets]  # as the extract stage
        entries = [cat.get(name) for name in wanted]

        rows, ratios = [], {}
        for name in args.teachers or CHEAP_TEACHERS:
            pairs = []  # (extract s, load s, bare s) per repeat
            for _ in range(repeats):
                load, bare = bare_loop(name, params, cat, entries)
                start = time.perf_counter()
                extract(name, params, cat, entries, overwrite=True)
                pairs.append((time.perf_counter() - start, load, bare))
            paired = [(full - load) / bare for full, load, bare in pairs]
            ratios[name] = statistics.median(paired)
            store = FeatureStore.open(tmp / "features" / f"{name}.zarr")
            tokens = sum(int(np.asarray(store.read_chunk(g, c)[1]).sum()) for g in store.group_names()
                         for c in range(store.n_chunks(g)))
            size = sum(f.stat().st_size for f in (tmp / "features" / f"{name}.zarr").rglob("*") if f.is_file())
            full, load, bare = (statistics.median(column) for column in zip(*pairs))
            rows.append(f"{name:12s} {full:10.2f} {load:7.2f} {bare:8.2f} {ratios[name]:6.2f}  "
                        f"{' '.join(f'{r:.2f}' for r in paired):18s} {size / tokens:12.1f} {tokens:9d}")
        corpus = "the default corpus" if count is None else f"generated, {count} series per pretraining set"
        print(f"{corpus}, {repeats} alternating repeats; ratio = median over repeats of (extract - model load) / "
              f"bare forward passes; times are medians; goal <= {GOAL}")
        print(f"{'teacher':12s} {'extract s':>10s} {'load s':>7s} {'bare s':>8s} {'ratio':>6s}  {'per repeat':18s} "
              f"{'bytes/token':>12s} {'tokens':>9s}")
        print("\n".join(rows))
        print("extract_overhead: " + " ".join(f"{name}={ratio:.2f}" for name, ratio in ratios.items())
              + f" (goal <= {GOAL})")


if __name__ == "__main__":
    main()
