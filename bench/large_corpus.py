"""A large distillation corpus end to end: prepare, extract and distill at growing `corpus.scale`, memory per stage.

The broad corpus (the catalog's `corpus_*` sets, without the two 2**20-sample `corpus_long` series) is generated at
each scale in a fresh project, extracted by one teacher (default `spectral`, the cheap one: fracast would take
hours at 1e5 series on 2 cores) and distilled for a fixed number of steps. Each stage runs as a fresh
`step-pipeline` process, as a user runs it; its peak resident memory is that process's, from
getrusage(RUSAGE_CHILDREN) in a wrapper process per stage.

Goal (issue "A broad distillation corpus"): a corpus of 1e5 series and more extracts and distills with bounded
memory, i.e. every stage's peak RSS flat in the corpus size while its time grows linearly. Prints a table and,
as its last line, the largest corpus's peaks against the smallest's, e.g.
`large_corpus: 77500 vs 775 series: peak RSS ratio prepare=1.02 extract=1.01 distill=1.00 (goal: flat, ~1)`.

    .venv/bin/python bench/large_corpus.py [--scales 1 10 100] [--teacher spectral] [--steps 300]
                                           [--plot reports/large_corpus/large_corpus.png] [--quick]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def write_project(directory: Path, scale: float, teacher: str, steps: int) -> Path:
    """params.yaml and catalog.yaml of a project whose only data sets are the broad corpus at `scale`."""
    catalog = yaml.safe_load((ROOT / "data_catalog/catalog.yaml").read_text())
    catalog["datasets"] = [e for e in catalog["datasets"]
                           if e["name"].startswith("corpus_") and e["name"] != "corpus_long"]
    catalog["data_root"] = str(ROOT)
    (directory / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"] |= {"catalog": str(directory / "catalog.yaml"), "series_store": str(directory / "series.zarr")}
    params["corpus"]["scale"] = scale
    params["corpus"]["sources"].pop("corpus_long", None)
    params["extract"] |= {"teachers": {teacher: params["extract"]["teachers"][teacher]},
                          "store_dir": str(directory / "features")}
    # validation on 1% of the segments (5% of 1e5 series would take longer than the training steps)
    params["distill"] |= {"max_steps": steps, "val_every": max(1, steps // 3), "checkpoint_every": steps,
                          "val_fraction": 0.01, "output_dir": str(directory / "model"),
                          "checkpoint_dir": str(directory / "checkpoints"), "reports_dir": str(directory / "reports")}
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(stage: str, params: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one `step-pipeline STAGE --params PARAMS` process."""
    command = [sys.executable, "-m", "pipeline.cli", stage, "--params", str(params)]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAPPER, *command], check=True, capture_output=True, text=True,
                         env=os.environ | {"HF_HUB_OFFLINE": "1"}, cwd=ROOT)
    return time.perf_counter() - start, int(out.stdout.split()[-1]) * 1024 / 1e6  # KiB -> MB


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(scale: float, teacher: str, steps: int, directory: Path) -> dict:
    params = write_project(directory, scale, teacher, steps)
    row = {"scale": scale}
    for stage in ("prepare", "extract", "distill"):
        row[f"{stage}_s"], row[f"{stage}_mb"] = run_stage(stage, params)
    series = 0
    for entry in yaml.safe_load((directory / "catalog.yaml").read_text())["datasets"]:
        series += max(1, round(entry["source"]["count"] * scale))
    metrics = json.loads((directory / "reports/run_info/distill.json").read_text())  # the run's own figures
    row |= {"series": series, "series_gb": disk_bytes(directory / "series.zarr") / 1e9,
            "store_gb": disk_bytes(directory / "features") / 1e9,
            "segments_per_second": metrics["segments_per_second"]}
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [r["series"] for r in rows]
    figure, (memory, seconds) = plt.subplots(1, 2, figsize=(10, 4))
    for stage in ("prepare", "extract", "distill"):
        memory.plot(series, [r[f"{stage}_mb"] / 1024 for r in rows], "o-", label=stage)
        seconds.plot(series, [r[f"{stage}_s"] for r in rows], "o-", label=stage)
    memory.set(xscale="log", xlabel="corpus series", ylabel="peak RSS (GB)", title="Peak resident memory per stage", ylim=(0, None))
    seconds.set(xscale="log", yscale="log", xlabel="corpus series", ylabel="wall seconds",
                title="Time (distill: fixed steps)")
    for axes in (memory, seconds):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="*", default=[1, 10, 100])
    parser.add_argument("--teacher", default="spectral", help="a teacher of params.yaml")
    parser.add_argument("--steps", type=int, default=300, help="distillation steps at every scale")
    parser.add_argument("--plot", type=Path, help="write the figure (memory and time against corpus size) here")
    parser.add_argument("--quick", action="store_true", help="scales 0.2 and 1, 30 steps (about 2 minutes)")
    args = parser.parse_args()
    scales, steps = ([0.2, 1.0], 30) if args.quick else (sorted(args.scales), args.steps)

    rows = []
    print(f"teacher {args.teacher}, {steps} distillation steps, {os.cpu_count()} cores", flush=True)
    print(f"{'scale':>6} {'series':>7} {'prepare s':>9} {'MB':>6} {'extract s':>9} {'MB':>6} {'distill s':>9} {'MB':>6} "
          f"{'seg/s':>6} {'series GB':>9} {'store GB':>8}", flush=True)
    for scale in scales:
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(scale, args.teacher, steps, Path(tmp))
        rows.append(row)
        print(f"{scale:>6g} {row['series']:>7} {row['prepare_s']:>9.1f} {row['prepare_mb']:>6.0f} "
              f"{row['extract_s']:>9.1f} {row['extract_mb']:>6.0f} {row['distill_s']:>9.1f} {row['distill_mb']:>6.0f} "
              f"{row['segments_per_second']:>6.1f} {row['series_gb']:>9.3f} {row['store_gb']:>8.3f}", flush=True)
    if args.plot:
        plot(rows, args.plot)
        (args.plot.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    small, large = rows[0], rows[-1]
    ratios = " ".join(f"{stage}={large[f'{stage}_mb'] / small[f'{stage}_mb']:.2f}"
                      for stage in ("prepare", "extract", "distill"))
    per_series = " ".join(f"{stage}={1000 * large[f'{stage}_s'] / large['series']:.1f}"
                          for stage in ("prepare", "extract"))
    print(f"large_corpus: {large['series']} vs {small['series']} series: peak RSS ratio {ratios} (goal: flat, ~1); "
          f"ms per series at the largest: {per_series}")


if __name__ == "__main__":
    main()
