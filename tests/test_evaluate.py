"""Evaluation: the probe, the repeated splits, the interval, teacher pooling, evaluate() end to end and the
fine-tuning protocol."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from pipeline import evaluate as evaluation
from pipeline.evaluate import ProbeTask, interval, probe_score, probe_splits, teacher_embeddings
from schemas.catalog import CatalogEntry

ALPHAS = [0.1, 1.0, 10.0, 100.0]


def task(labels: np.ndarray, classes: int, metric: str = "macro_f1", name: str = "t") -> ProbeTask:
    entry = CatalogEntry.model_validate({
        "name": name, "domain": "other", "role": "probe", "sampling_rate": 1.0, "channels": 1, "unit": "V",
        "source": {"kind": "generator", "generator": "sleep_eeg", "seed": 0, "count": len(labels)},
        "probe": {"label": "y", "class_names": [f"c{i}" for i in range(classes)], "metric": metric},
    })
    train = np.arange(len(labels)) < len(labels) // 2
    return ProbeTask(entry, [], [], labels, train, 1.0)


def test_probe_on_separable_embeddings_scores_near_one():
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 4
    embeddings = rng.normal(size=(400, 16)) + 4.0 * np.eye(16)[labels]
    train = np.arange(400) < 200
    score, accuracy = probe_score(embeddings, labels, train, "macro_f1", ALPHAS)
    assert score > 0.97 and accuracy > 0.97
    binary = labels % 2
    assert probe_score(embeddings[:, :2] + 5 * binary[:, None], binary, train, "binary_f1", ALPHAS)[0] > 0.95


def test_probe_on_shuffled_labels_scores_near_chance():
    rng = np.random.default_rng(1)
    labels = np.arange(600) % 4
    embeddings = rng.normal(size=(600, 16)) + 4.0 * np.eye(16)[labels]
    score, _ = probe_score(embeddings, rng.permutation(labels), np.arange(600) < 300, "macro_f1", ALPHAS)
    assert 0.1 < score < 0.4  # chance for 4 balanced classes is 0.25


def test_splits_start_with_the_declared_split_then_stratified_resplits_of_the_same_size():
    labels = np.array([0] * 30 + [1] * 10)
    probe = task(labels, 2)
    splits = probe_splits(probe, 5, seed=0)
    assert len(splits) == 5 and np.array_equal(splits[0], probe.train)
    for train in splits[1:]:
        assert (~train).sum() == (~probe.train).sum()              # the same test size
        assert labels[~train].sum() == 5                           # stratified: 10 of 40 positives -> 5 of 20
    assert len({train.tobytes() for train in splits}) == 5        # distinct splits
    again = probe_splits(probe, 5, seed=0)                         # the same for every model and every run
    assert all(np.array_equal(a, b) for a, b in zip(splits, again))
    assert not np.array_equal(probe_splits(task(labels, 2, name="other"), 5, seed=0)[1], splits[1])


def test_interval_is_the_corrected_resampled_t_interval():
    # hand-made: mean 0.6, sd 0.1, K = 3, t(0.975, 2) = 4.302653, sqrt(1/3 + 1) = 1.154701 -> half 0.496827
    low, high = interval([0.5, 0.6, 0.7], test_train_ratio=1.0)
    assert low == pytest.approx(0.6 - 0.496827, abs=1e-6) and high == pytest.approx(0.6 + 0.496827, abs=1e-6)
    assert interval([0.4], 1.0) == (0.4, 0.4)  # one split: no interval
    narrow = interval([0.5, 0.6, 0.7], test_train_ratio=0.0)
    assert narrow[1] - narrow[0] < high - low  # the correction widens it


@pytest.fixture(scope="module")
def evaluated(extracted_project):
    """The tiny project distilled for a few steps, then evaluated with every split recorded per model."""
    from stages import distill as distill_stage
    from stages import evaluate as evaluate_stage

    root, params_path = extracted_project
    if not (root / "models/step-student/config.json").exists():
        distill_stage.run(str(params_path))
    seen: list[bytes] = []  # the train mask of every probe fit, in call order (task, then model, then split)
    original = evaluation.probe_score

    def recording(embeddings, labels, train, metric, alphas):
        seen.append(train.tobytes())
        return original(embeddings, labels, train, metric, alphas)

    evaluation.probe_score = recording
    try:
        summary = evaluate_stage.run(str(params_path))
    finally:
        evaluation.probe_score = original
    return root, params_path, summary, seen


def test_evaluate_scores_every_model_on_the_same_splits_with_real_rows(evaluated):
    root, params_path, summary, seen = evaluated
    models = {"step-distilled", "step-random", "teacher:silero_vad", "teacher:fracast", "teacher:spectral",
              "teachers:all", "baseline-stats", "baseline-structure",  # the cpu-small preset has fine structure
              "baseline-minirocket"}
    assert set(summary) == models
    # every model was probed on the same 3 splits of each of the 3 tasks
    assert len(seen) == 3 * len(models) * 3
    for first in range(0, len(seen), 3 * len(models)):
        per_model = [seen[first + 3 * m: first + 3 * m + 3] for m in range(len(models))]
        assert all(m == per_model[0] for m in per_model) and len(set(per_model[0])) == 3
    splits = json.loads((root / "reports/probe_splits.json").read_text())
    for model, scores in summary.items():
        assert len(splits[model]["probe_real"]) == 3
        # `mean` over exactly the generated tasks, `real_mean` over exactly the real one
        assert scores["mean"] == pytest.approx((scores["probe_sleep"] + scores["probe_radar"]) / 2, abs=1e-9)
        assert scores["real_mean"] == pytest.approx(scores["probe_real"], abs=1e-9)
    metrics = json.loads((root / "reports/probe_metrics.json").read_text())
    assert set(metrics["step-distilled"]) == {"probe_sleep", "probe_radar", "probe_real", "mean", "real_mean"}
    intervals = json.loads((root / "reports/probe_intervals.json").read_text())
    low, high = intervals["step-distilled"]["mean"]["low"], intervals["step-distilled"]["mean"]["high"]
    assert low <= metrics["step-distilled"]["mean"] <= high
    comparisons = json.loads((root / "reports/probe_comparisons.json").read_text())
    differences = np.subtract(splits["step-distilled"]["real_mean"], splits["step-random"]["real_mean"])
    difference, low, high = comparisons["step-random"]["real_mean"]
    assert difference == pytest.approx(differences.mean(), abs=1e-4) and low <= difference <= high
    assert "step-distilled" not in comparisons
    accuracy = json.loads((root / "reports/probe_accuracy.json").read_text())
    assert set(accuracy["step-distilled"]) == {"probe_real", "real_mean"}
    table = (root / "reports/probe_table.md").read_text()
    assert "probe_real (macro f1)" in table and "accuracy" in table and "±" in table
    assert (root / "reports/probe_scores.png").stat().st_size > 1000
    assert (root / "reports/probes/real_mean.csv").read_text().startswith("model,score,low,high")


def test_teacher_rows_pool_every_token_of_every_segment_of_a_series(extracted_project):
    from data_catalog.catalog import load_catalog
    from pipeline.feature_store import FeatureStore
    from schemas.params import load_params

    root, params_path = extracted_project
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    probe = evaluation.load_task(catalog.get("probe_real"), catalog, params.prepare.series_store)
    from pipeline.student import STEPConfig
    from pipeline.student.modeling_step import signed_log

    config = STEPConfig()
    store = FeatureStore.open(root / "data/features/fracast.zarr")
    pooled = teacher_embeddings(store, probe, "mean+std+stats", config)
    ds = xr.open_zarr(root / "data/features/fracast.zarr", group="probe_real", consolidated=True)
    row = list(ds.segment_id.values).index(probe.ids[3])
    tokens = ds.features.values[row, : int(ds.n_tokens.values[row])].astype(np.float32)
    values = probe.series[3].astype(np.float64)
    statistics = signed_log(torch.tensor([values.mean(), values.std()]), config.stats_log_eps, config.stats_log_max)
    expected = np.concatenate([tokens.mean(axis=0), tokens.std(axis=0), statistics.numpy()])
    assert pooled.shape == (len(probe.ids), 2 * store.manifest.feature_dim + 2)
    np.testing.assert_allclose(pooled[3], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(teacher_embeddings(store, probe, "pooled", config)[3], tokens.mean(axis=0), rtol=1e-5)
    # `structure`: the student's pooled fine-structure inputs, given, appended to the teacher's own pooling
    structure = np.random.default_rng(0).standard_normal((len(probe.ids), 6)).astype(np.float32)
    with_structure = teacher_embeddings(store, probe, "mean+std+stats+structure", config, structure)
    np.testing.assert_allclose(with_structure[:, :-6], pooled, rtol=1e-6)
    np.testing.assert_array_equal(with_structure[:, -6:], structure)
    with pytest.raises(ValueError, match="pooled fixed inputs"):
        teacher_embeddings(store, probe, "mean+structure", config)
    with pytest.raises(ValueError, match="pooled fixed inputs"):
        teacher_embeddings(store, probe, "mean+kernels", config)
    assert probe.sampling_rate is None and probe.real  # the unknown rate reached the probe as None


def test_teachers_all_row_puts_every_teacher_row_side_by_side_with_the_structure_once(extracted_project):
    from data_catalog.catalog import load_catalog
    from pipeline.feature_store import FeatureStore, store_location
    from schemas.params import load_params
    from tests.project import tiny_student

    root, params_path = extracted_project
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    probe = evaluation.load_task(catalog.get("probe_real"), catalog, params.prepare.series_store)
    student = tiny_student()
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}
    rows = evaluation.model_embeddings(params, probe, student, student, stores)
    structure = rows["baseline-structure"]
    assert "structure" in student.config.embedding_pooling and structure.shape[1] > 0
    own = [rows[f"teacher:{t}"] for t in stores]
    for row in own:  # each teacher row ends with the same structure vectors
        np.testing.assert_array_equal(row[:, -structure.shape[1]:], structure)
    expected = np.concatenate([row[:, : -structure.shape[1]] for row in own] + [structure], axis=1)
    np.testing.assert_array_equal(rows["teachers:all"], expected)
    del stores["fracast"], stores["spectral"]  # one teacher: no `teachers:all` row
    assert "teachers:all" not in evaluation.model_embeddings(params, probe, student, student, stores)


def test_random_twin_is_seeded_and_fits_its_own_kernel_components_on_the_corpus_sample(extracted_project):
    """The random-weight row: the distilled student's config (kernel biases included), weights from the seed, and
    kernel components fitted on the same corpus sample as the distilled student's (not the distilled student's)."""
    from pipeline.distill.train import kernel_component_sample
    from pipeline.student import STEPEncoder
    from schemas.params import load_params
    from tests.project import tiny_student

    root, params_path = extracted_project
    params = load_params(params_path)
    distilled = tiny_student(seed=1)
    twin = evaluation.random_twin(distilled, params, seed=0)
    assert twin.config.to_dict() == distilled.config.to_dict()
    again = evaluation.random_twin(distilled, params, seed=0)
    for (name, a), b in zip(twin.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    torch.manual_seed(0)
    by_hand = STEPEncoder(distilled.config).eval()
    by_hand.fit_kernel_components(kernel_component_sample(params))
    torch.testing.assert_close(twin.kernel_component_axes, by_hand.kernel_component_axes)
    assert not torch.allclose(twin.kernel_component_axes, distilled.kernel_component_axes)


# Fine-tuning itself: tests/test_finetune.py.


def test_update_readme_fills_the_results_and_finetune_blocks(evaluated, tmp_path):
    from pipeline.evaluate import update_readme
    from stages import finetune as finetune_stage

    root, params_path, _, _ = evaluated
    if not (root / "reports/finetune_metrics.json").exists():
        finetune_stage.run(str(params_path))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start -->\nSTALE\n<!-- results:end -->\nmiddle\n"
                      "<!-- finetune:start -->\nSTALE\n<!-- finetune:end -->\nend\n")
    update_readme(readme, root / "reports")
    text = readme.read_text()
    assert "STALE" not in text and text.startswith("# x\n") and "\nmiddle\n" in text and text.endswith("end\n")
    assert "| step-distilled |" in text and "validation loss at step 0" in text
    assert "| finetune-scratch |" in text and "steps of 4 series" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- results:start -->"):
        update_readme(readme, root / "reports")


def test_minirocket_row_fits_on_the_declared_train_split_of_series_resampled_to_one_length(monkeypatch):
    """baseline-minirocket: ragged series are resampled to the longest length, the transform is fitted (biases, no
    labels) on the declared train split only, and every series is transformed."""
    from pipeline import minirocket

    rng = np.random.default_rng(0)
    series = [rng.normal(size=(2, n)).astype(np.float32) for n in (40, 64, 50, 64, 33, 64)]
    task = evaluation.ProbeTask(entry=None, ids=[str(i) for i in range(6)], series=series, labels=np.arange(6) % 2,
                                train=np.array([True, True, True, False, False, False]), sampling_rate=None)
    fitted_on = []
    original_fit = minirocket.MiniRocket.fit
    monkeypatch.setattr(minirocket.MiniRocket, "fit", lambda self, x: fitted_on.append(x) or original_fit(self, x))
    features = evaluation.minirocket_embeddings(task, 840, seed=0)
    assert features.shape == (6, 840) and np.all((features >= 0) & (features <= 1))
    assert fitted_on[0].shape == (3, 2, 64)  # the three train series, at the longest length
    np.testing.assert_allclose(fitted_on[0][1], series[1])  # a series already at that length is kept as it is
    np.testing.assert_allclose(fitted_on[0][0][:, [0, -1]], series[0][:, [0, -1]], rtol=1e-6)  # ends kept
    evaluation.minirocket_embeddings(task, 840, seed=0, max_length=48)  # long sets are resampled to the cap
    assert fitted_on[1].shape == (3, 2, 48)
