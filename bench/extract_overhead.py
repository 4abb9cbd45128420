"""Extraction overhead: `extract` against a bare loop of the same teacher forward passes, per default teacher.

Goal: ratio <= 1.15, i.e. reading, batching, statistics, compression and writing hide behind teacher compute.
Also prints the store's bytes per token. Runs on a scaled-down copy of the default catalog prepared in a temp dir.

    python bench/extract_overhead.py [--count 64] [--teachers silero_vad fracast spectral]
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from data_catalog.catalog import load_catalog, open_reader
from data_catalog.segments import segment_series
from pipeline.extract import extract, known_lengths
from pipeline.feature_store import FeatureStore
from pipeline.teachers import load_teacher
from schemas.params import load_params
from stages import prepare as prepare_stage

ROOT = Path(__file__).resolve().parents[1]


def bare_loop(name, params, catalog, entries) -> tuple[float, float]:
    """Only the teacher's forward passes, on the same equal-length batches `extract` makes.

    Returns (seconds loading the teacher, seconds in forward passes); `extract` pays the load too."""
    spec = params.extract.teachers[name]
    start = time.perf_counter()
    teacher = load_teacher(name, spec)
    load_seconds = time.perf_counter() - start
    seconds = 0.0
    for entry in entries:
        reader = open_reader(entry, catalog, params.prepare.series_store)
        segments = segment_series(reader.ids, known_lengths(reader), params.segments.max_samples)
        values = {}
        for s in segments:
            values.setdefault(s.length, []).append(reader[s.series_index].values[:, s.start : s.stop])
        for same_length in values.values():
            for i in range(0, len(same_length), spec.batch_size):
                batch = np.stack(same_length[i : i + spec.batch_size])
                start = time.perf_counter()
                teacher.encode(batch, float(entry.sampling_rate))
                seconds += time.perf_counter() - start
    return load_seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=64, help="series per pretraining data set")
    parser.add_argument("--teachers", nargs="*", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog = yaml.safe_load((ROOT / "data_catalog/catalog.yaml").read_text())
        catalog["datasets"] = [d for d in catalog["datasets"] if d["role"] == "pretrain" and "long" not in d["name"]]
        for d in catalog["datasets"]:
            d["source"]["count"] = args.count
        (tmp / "catalog.yaml").write_text(yaml.safe_dump(catalog))
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["prepare"] |= {"catalog": str(tmp / "catalog.yaml"), "series_store": str(tmp / "series.zarr")}
        params["extract"]["store_dir"] = str(tmp / "features")
        (tmp / "params.yaml").write_text(yaml.safe_dump(params))
        prepare_stage.run(str(tmp / "params.yaml"))
        params = load_params(tmp / "params.yaml")
        cat = load_catalog(params.prepare.catalog)
        entries = list(cat.datasets)

        rows = []
        for name in args.teachers or list(params.extract.teachers):
            load, bare = bare_loop(name, params, cat, entries)
            start = time.perf_counter()
            extract(name, params, cat, entries, overwrite=True)
            full = time.perf_counter() - start
            store = FeatureStore.open(tmp / "features" / f"{name}.zarr")
            tokens = sum(int(np.asarray(store.read_chunk(g, c)[1]).sum()) for g in store.group_names()
                         for c in range(store.n_chunks(g)))
            size = sum(f.stat().st_size for f in (tmp / "features" / f"{name}.zarr").rglob("*") if f.is_file())
            rows.append(f"{name:12s} {full:10.2f} {load:7.2f} {bare:8.2f} {(full - load) / bare:6.2f} "
                        f"{size / tokens:12.1f} {tokens:9d}")
        print(f"{'teacher':12s} {'extract s':>10s} {'load s':>7s} {'bare s':>8s} {'ratio':>6s} {'bytes/token':>12s} "
              f"{'tokens':>9s}   (ratio = (extract - model load) / bare forward passes; goal <= 1.15)")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
