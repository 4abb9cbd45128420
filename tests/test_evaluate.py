"""The probe: near 1 on separable embeddings, near chance on shuffled labels; reports written as declared."""

import json

import numpy as np

from pipeline.evaluate import ProbeTask, probe_score, write_probe_reports
from schemas.catalog import CatalogEntry


def task(labels: np.ndarray, classes: int, metric: str) -> ProbeTask:
    entry = CatalogEntry.model_validate({
        "name": "t", "domain": "other", "role": "probe", "sampling_rate": 1.0, "channels": 1, "unit": "V",
        "source": {"kind": "generator", "generator": "sleep_eeg", "seed": 0, "count": len(labels)},
        "probe": {"label": "y", "class_names": [f"c{i}" for i in range(classes)], "metric": metric},
    })
    train = np.arange(len(labels)) < len(labels) // 2
    return ProbeTask(entry, [], [], labels, train, 1.0)


def test_probe_on_separable_embeddings_scores_near_one():
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 4
    embeddings = rng.normal(size=(400, 16)) + 4.0 * np.eye(16)[labels]
    assert probe_score(embeddings, task(labels, 4, "macro_f1"), c=1.0, seed=0) > 0.97
    binary = labels % 2
    assert probe_score(embeddings[:, :2] + 3 * binary[:, None], task(binary, 2, "binary_f1"), 1.0, 0) > 0.95


def test_probe_on_shuffled_labels_scores_near_chance():
    rng = np.random.default_rng(1)
    labels = np.arange(600) % 4
    embeddings = rng.normal(size=(600, 16)) + 4.0 * np.eye(16)[labels]
    shuffled = rng.permutation(labels)
    score = probe_score(embeddings, task(shuffled, 4, "macro_f1"), c=1.0, seed=0)
    assert 0.1 < score < 0.4  # chance for 4 balanced classes is 0.25


def test_reports_json_csv_table_and_chart(tmp_path):
    scores = {"step-distilled": {"a": 0.9, "b": 0.5}, "step-random": {"a": 0.6, "b": 0.55}}
    for s in scores.values():
        s["mean"] = (s["a"] + s["b"]) / 2
    write_probe_reports(tmp_path, scores, ["a", "b"], {"a": "binary_f1", "b": "macro_f1"})
    assert json.loads((tmp_path / "probe_metrics.json").read_text())["step-distilled"]["mean"] == 0.7
    assert (tmp_path / "probes/a.csv").read_text().splitlines() == ["model,score", "step-distilled,0.9",
                                                                     "step-random,0.6"]
    table = (tmp_path / "probe_table.md").read_text()
    assert "| step-distilled | **0.900** | 0.500 | **0.700** |" in table
    assert (tmp_path / "probe_scores.png").stat().st_size > 1000
