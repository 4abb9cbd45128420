"""A tiny but complete project (catalog, params, data paths) in a temp dir, shared by the stage tests."""

from pathlib import Path

import numpy as np
import yaml

TINY_STUDENT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                "front_end_channels": 16, "patch_points": 16}


def tiny_student(seed: int = 0, **overrides):
    """A random-weight cpu-small student at TINY_STUDENT's size, its kernel components fitted (as distillation
    fits them on the corpus) on 32 fixed random series, ready to embed."""
    import torch

    from pipeline.student import STEPConfig, STEPEncoder

    torch.manual_seed(seed)
    model = STEPEncoder(STEPConfig.from_preset("cpu-small", **{**TINY_STUDENT, **overrides})).eval()
    if model.config.kernel_components:
        rng = np.random.default_rng(seed)
        model.fit_kernel_components([rng.standard_normal((1, int(n))).astype(np.float32)
                                     for n in rng.integers(64, 2048, size=32)])
    return model


def write_real_set(path: Path, seed: int = 0) -> None:
    """A small ragged .npz in the vendored UCR layout: 2 classes (sine / square bursts), 15-60 samples, no rate."""
    rng = np.random.default_rng(seed)
    parts = {}
    for split, count in (("train", 16), ("test", 16)):
        labels = np.arange(count) % 2
        series = []
        for label in labels:
            t = np.arange(rng.integers(15, 61))
            wave = np.sin(2 * np.pi * t / 8)
            series.append((np.sign(wave) if label else wave) + 0.1 * rng.normal(size=len(t)))
        parts |= {f"{split}_values": np.concatenate(series)[None].astype(np.float32),
                  f"{split}_lengths": np.array([len(s) for s in series]), f"{split}_y": labels}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **parts)


def real_probe_entry() -> dict:
    """A `files` probe task over write_real_set's file (relative to the catalog's data_root), rate unknown."""
    return {"name": "probe_real", "domain": "other", "role": "probe", "sampling_rate": "unknown", "channels": 1,
            "unit": "arbitrary",
            "source": {"kind": "files", "paths": ["real.npz"], "ragged": [
                {"values": "train_values", "lengths": "train_lengths", "labels": "train_y", "split": "train"},
                {"values": "test_values", "lengths": "test_lengths", "labels": "test_y", "split": "test"}]},
            "probe": {"label": "shape", "class_names": ["sine", "square"], "metric": "macro_f1"}}


def tiny_catalog() -> dict:
    def generated(name, generator, seed, count, rate, channels, unit, role="pretrain", probe=None, **options):
        entry = {"name": name, "domain": "other", "role": role, "sampling_rate": rate, "channels": channels,
                 "unit": unit, "source": {"kind": "generator", "generator": generator, "seed": seed, "count": count,
                                          "options": options}}
        if probe:
            entry["probe"] = probe
        return entry

    sleep_probe = {"label": "stage", "class_names": ["W", "N1", "N2", "N3", "REM"], "metric": "macro_f1"}
    radar_probe = {"label": "pulse", "metric": "macro_f1",
                   "class_names": ["rectangular", "linear_fm", "barker_13", "frank", "costas"]}
    return {"data_root": "raw", "datasets": [
        generated("pre_sleep", "sleep_eeg", 11, 20, 100.0, 1, "V"),
        generated("pre_radar", "radar_pulses", 12, 12, 2e6, 2, "V"),
        generated("pre_long", "long_records", 13, 1, 100.0, 1, "counts", length=30000),
        generated("probe_sleep", "sleep_eeg", 14, 20, 100.0, 1, "V", role="probe", probe=sleep_probe),
        generated("probe_radar", "radar_pulses", 15, 20, 2e6, 2, "V", role="probe", probe=radar_probe),
    ]}


def tiny_params(root: Path) -> dict:
    return {
        "prepare": {"catalog": str(root / "catalog.yaml"), "series_store": str(root / "data/series.zarr"),
                    "chunk_samples": 8192},
        "segments": {"max_samples": 8192},
        "corpus": {"scale": 1.0, "sources": {}},
        "extract": {"store_dir": str(root / "data/features"), "datasets": None,
                    "compression": {"chunk_segments": 8},
                    "teachers": {"silero_vad": {"kind": "silero_vad"}, "fracast": {"kind": "fracast"},
                                 "spectral": {"kind": "spectral"}}},
        "student": {"preset": "cpu-small", "overrides": TINY_STUDENT},
        "distill": {"max_steps": 6, "batch_size": 4, "val_every": 3, "checkpoint_every": 2, "warmup_steps": 2,
                    "val_fraction": 0.2, "device": "cpu", "output_dir": str(root / "models/step-student"),
                    "checkpoint_dir": str(root / "models/checkpoints"), "reports_dir": str(root / "reports")},
        "evaluate": {"splits": 3, "reports_dir": str(root / "reports")},
        "finetune": {"max_steps": 4, "batch_size": 4, "evaluations": 2, "reports_dir": str(root / "reports")},
    }


def write_project(root: Path, params: dict | None = None) -> Path:
    """Write catalog.yaml and params.yaml under `root`; returns the params path."""
    root.mkdir(parents=True, exist_ok=True)
    catalog = tiny_catalog()  # plus a real-data task read in place from a ragged file, rate unknown
    catalog["data_root"] = str(root / "raw")
    catalog["datasets"].append(real_probe_entry())
    write_real_set(root / "raw" / "real.npz")
    (root / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params or tiny_params(root), sort_keys=False))
    return path
