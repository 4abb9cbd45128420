"""Distillation from cached stores against online distillation (teachers run on every batch).

Same student, data, batches and steps. Each mode runs in its own process so its peak RSS is its own:
  cached         batches from the feature stores (what `step-pipeline distill` does)
  online         the same batches, targets computed by the teachers loaded in memory
  loader         the cached loader alone, no training (must outpace the student >= 5x)
  force_stride   cached, alignment=force_stride (`cached` uses the params' alignment, interpolate by default)
Goals: cached >= 3x faster than online, cached peak RSS free of teacher weights, loader >= 5x the student.

    python bench/distill_cached_vs_online.py [--steps 20] [--count 48]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def setup(tmp: Path, count: int) -> Path:
    """A scaled-down default corpus (bench/corpus.py: pretraining sets only, `count` series each), prepared and
    extracted with the default teachers."""
    from bench.corpus import generated_corpus
    from stages import extract as extract_stage

    params_path = generated_corpus(tmp, count)
    params = yaml.safe_load(params_path.read_text())
    params.setdefault("distill", {}).update({"output_dir": str(tmp / "model"), "checkpoint_dir": str(tmp / "ck"),
                                             "reports_dir": str(tmp / "reports"), "val_fraction": 0.0,
                                             "device": "cpu"})
    params_path.write_text(yaml.safe_dump(params))
    extract_stage.run(str(params_path))
    return params_path


def run_mode(mode: str, params_path: str, steps: int) -> dict:
    """One mode, in this process: returns steps/s (or segments/s for the loader) and peak RSS."""
    import torch

    from data_catalog.catalog import load_catalog
    from pipeline.distill.loader import Batch, DistillationData, open_training_data
    from pipeline.distill.objective import DistillationObjective, TeacherHeads
    from pipeline.feature_store import FeatureStore, store_location
    from pipeline.student import STEPConfig, STEPEncoder
    from schemas.params import load_params

    params = load_params(params_path)
    config = params.distill
    catalog = load_catalog(params.prepare.catalog)
    entries = [e for e in catalog.datasets if e.role == "pretrain"]
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}
    data = DistillationData(open_training_data(entries, catalog, params.prepare.series_store, stores,
                                               params.segments.max_samples),
                            stores, config.batch_size, config.shuffle_blocks, config.prefetch_blocks, 0.0, 0)
    plan = [item for epoch in range(50) for item in data.epoch_plan(epoch)]

    def batches():
        return data.batches(plan)

    if mode == "loader":
        start, seen = time.perf_counter(), 0
        for i, batch in enumerate(batches()):
            seen += len(batch.segment_ids)
            if i + 1 == steps * 4:
                break
        return {"segments_per_s": seen / (time.perf_counter() - start), "rss_mb": peak_rss_mb()}

    teachers = {}
    if mode == "online":
        from pipeline.teachers import load_teacher

        teachers = {t: load_teacher(t, params.extract.teachers[t]) for t in params.extract.teachers}

    torch.manual_seed(0)
    student_config = STEPConfig.from_preset(params.student.preset, **params.student.overrides)
    model = STEPEncoder(student_config)
    heads = TeacherHeads(student_config.hidden_size, {t: s.manifest.feature_dim for t, s in stores.items()})
    alignment = "force_stride" if mode == "force_stride" else config.alignment
    objective = DistillationObjective(heads, {t: 1.0 for t in stores}, alignment, 1.0, 1.0, 1.0, 0.1)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=1e-3)

    def online_targets(batch: Batch) -> Batch:
        """Replace the cached targets with the teachers' outputs on the same raw segments."""
        for name, teacher in teachers.items():
            outputs = []
            for values, length in zip(batch.values.numpy(), batch.lengths.tolist()):
                outputs.append(teacher.encode(values[None, :, :length], batch.sampling_rate)[0])
            tokens = torch.zeros(len(outputs), max(len(o) for o in outputs), outputs[0].shape[1])
            for i, o in enumerate(outputs):
                tokens[i, : len(o)] = torch.from_numpy(o)
            batch.targets[name] = (tokens - data.mean[name]) / data.std[name]
            batch.n_tokens[name] = torch.tensor([len(o) for o in outputs])
        return batch

    start, seen, done = None, 0, 0
    for batch in batches():
        if mode == "online":
            batch = online_targets(batch)
        loss, _ = objective(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += 1
        if done == 2:  # the first steps warm up allocators and threads
            start, seen = time.perf_counter(), 0
        elif done > 2:
            seen += len(batch.segment_ids)
        if done == steps + 2:
            break
    elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "segments_per_s": seen / elapsed, "rss_mb": peak_rss_mb(),
            "teacher_modules_loaded": any(m.startswith(("silero_vad", "fracast")) for m in sys.modules)}


def params_alignment(params_path) -> str:
    return yaml.safe_load(Path(params_path).read_text())["distill"]["alignment"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--count", type=int, default=48, help="series per pretraining data set")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # child process
        print(json.dumps(run_mode(args.mode, args.params, args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        params_path = setup(Path(tmp), args.count)
        alignment = params_alignment(params_path)
        results = {}
        for mode in ("cached", "online", "loader", "force_stride"):
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--params", str(params_path),
                                  "--steps", str(args.steps)], capture_output=True, text=True, check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    cached, online, loader, forced = (results[m] for m in ("cached", "online", "loader", "force_stride"))
    print(f"cached  : {cached['steps_per_s']:.2f} steps/s, peak RSS {cached['rss_mb']:.0f} MB, "
          f"teacher packages imported: {cached['teacher_modules_loaded']}")
    print(f"online  : {online['steps_per_s']:.2f} steps/s, peak RSS {online['rss_mb']:.0f} MB")
    print(f"speed-up cached / online: {cached['steps_per_s'] / online['steps_per_s']:.2f}x (goal >= 3)")
    print(f"loader  : {loader['segments_per_s']:.0f} segments/s vs student {cached['segments_per_s']:.1f} "
          f"segments/s: {loader['segments_per_s'] / cached['segments_per_s']:.1f}x (goal >= 5)")
    print(f"step time: force_stride {1 / forced['steps_per_s']:.3f} s vs {alignment} "
          f"{1 / cached['steps_per_s']:.3f} s")


if __name__ == "__main__":
    main()
