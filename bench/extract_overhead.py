"""Extraction overhead: `extract` against a bare loop of the same teacher forward passes, per default teacher.

Goal: ratio <= 1.15, i.e. reading, batching, statistics, compression and writing hide behind teacher compute.
Also prints the store's bytes per token. Runs on a copy of the default catalog's pretraining sets (the long
records left out), each at --count series, prepared in a temp dir; params' `corpus` sizing is bypassed so the
corpus stays the same whatever the default run's size. The last line sums it up:
`extract_overhead: silero_vad=1.10 spectral=1.12 fracast=0.88 (goal <= 1.15)`.

    python bench/extract_overhead.py [--count 64] [--teachers silero_vad fracast spectral] [--quick]
"""

import argparse
import logging
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
from stages import prepare as prepare_stage

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.15
QUICK_COUNT = 12
QUICK_TEACHERS = ["silero_vad", "spectral"]  # the cheap ones, whose fixed costs show; fracast takes minutes


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=64, help="series per pretraining data set")
    parser.add_argument("--teachers", nargs="*", default=None)
    parser.add_argument("--quick", action="store_true", help=f"--count {QUICK_COUNT} and, unless --teachers says "
                        f"otherwise, only {' '.join(QUICK_TEACHERS)}: a smoke run under 2 minutes (fixed costs weigh "
                        "more on so few series)")
    args = parser.parse_args()
    count = QUICK_COUNT if args.quick else args.count
    teachers = args.teachers or (QUICK_TEACHERS if args.quick else None)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog = yaml.safe_load((ROOT / "data_catalog/catalog.yaml").read_text())
        catalog["datasets"] = [d for d in catalog["datasets"] if d["role"] == "pretrain" and "long" not in d["name"]]
        for d in catalog["datasets"]:
            d["source"]["count"] = count
        (tmp / "catalog.yaml").write_text(yaml.safe_dump(catalog))
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        if "corpus" in params:  # the catalog's counts and lengths, as set above
            params["corpus"] = {"scale": 1.0, "sources": {}}
        params["prepare"] |= {"catalog": str(tmp / "catalog.yaml"), "series_store": str(tmp / "series.zarr")}
        params["extract"]["store_dir"] = str(tmp / "features")
        (tmp / "params.yaml").write_text(yaml.safe_dump(params))
        prepare_stage.run(str(tmp / "params.yaml"))
        params = load_params(tmp / "params.yaml")
        cat = load_catalog(params.prepare.catalog)
        entries = list(cat.datasets)

        rows, ratios = [], {}
        for name in teachers or list(params.extract.teachers):
            load, bare = bare_loop(name, params, cat, entries)
            start = time.perf_counter()
            extract(name, params, cat, entries, overwrite=True)
            full = time.perf_counter() - start
            store = FeatureStore.open(tmp / "features" / f"{name}.zarr")
            tokens = sum(int(np.asarray(store.read_chunk(g, c)[1]).sum()) for g in store.group_names()
                         for c in range(store.n_chunks(g)))
            size = sum(f.stat().st_size for f in (tmp / "features" / f"{name}.zarr").rglob("*") if f.is_file())
            ratios[name] = (full - load) / bare
            rows.append(f"{name:12s} {full:10.2f} {load:7.2f} {bare:8.2f} {ratios[name]:6.2f} "
                        f"{size / tokens:12.1f} {tokens:9d}")
        print(f"{'teacher':12s} {'extract s':>10s} {'load s':>7s} {'bare s':>8s} {'ratio':>6s} {'bytes/token':>12s} "
              f"{'tokens':>9s}   (ratio = (extract - model load) / bare forward passes; goal <= {GOAL})")
        print("\n".join(rows))
        print("extract_overhead: " + " ".join(f"{name}={ratio:.2f}" for name, ratio in ratios.items())
              + f" (goal <= {GOAL})")


if __name__ == "__main__":
    main()
