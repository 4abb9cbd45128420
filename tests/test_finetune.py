"""Fine-tuning (pipeline/finetune.py, STEPForClassification): the head reads the probe's embedding, starts as the
probe, selection uses a validation fold only, the budget scales with the task, the saved model loads with the Auto
classes, and the stage writes its reports."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import RidgeClassifierCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.distill.loader import pad_series
from pipeline.evaluate import ProbeTask, task_score
from pipeline.finetune import (BlockInputs, classifier_for, finetune, frozen_embeddings, predict, probe_head,
                               validation_fold)
from pipeline.student import STEPEncoder, STEPForClassification
from schemas.catalog import CatalogEntry
from schemas.params import FinetuneParams
from tests.project import tiny_student

ALPHAS = [0.1, 1.0, 10.0, 100.0]


def make_task(series: list[np.ndarray], labels: np.ndarray, classes: int, channel_names: list[str] | None = None
              ) -> ProbeTask:
    entry = {"name": "t", "domain": "other", "role": "probe", "sampling_rate": 100.0,
             "channels": series[0].shape[0], "unit": "V",
             "source": {"kind": "generator", "generator": "sleep_eeg", "seed": 0, "count": len(labels)},
             "probe": {"label": "y", "class_names": [f"c{i}" for i in range(classes)], "metric": "macro_f1"}}
    if channel_names:
        entry["channel_names"] = channel_names
    train = np.arange(len(labels)) < 2 * len(labels) // 3
    return ProbeTask(CatalogEntry.model_validate(entry), [], series, labels, train, 100.0)


def shapes_task(n: int = 48, channels: int = 1, seed: int = 0) -> ProbeTask:
    """Three classes of noisy waves, 129-240 samples (one embed() batch: lengths within a factor 2)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    series = []
    for label in labels:
        t = np.arange(rng.integers(129, 241))
        wave = [np.sin(2 * np.pi * t / 9), np.sign(np.sin(2 * np.pi * t / 23)), np.sin(2 * np.pi * t / 5)][label]
        series.append((wave + 0.6 * rng.normal(size=(channels, len(t)))).astype(np.float32))
    return make_task(series, labels, 3, [f"ch{i}" for i in range(channels)] if channels > 1 else None)


@pytest.fixture(scope="module")
def encoder() -> STEPEncoder:
    return tiny_student()


@pytest.mark.parametrize("channels", [1, 3])
def test_the_heads_input_is_the_probes_embedding_differentiable(encoder, channels):
    """STEPForClassification.embedding() in eval mode gives embed()'s numbers (channels averaged, or kept apart
    for a fixed montage), and a gradient reaches the encoder through it."""
    task = shapes_task(12, channels)
    pooling = encoder.config.embedding_pooling
    model = classifier_for(encoder, task, pooling)
    values, lengths = pad_series(task.series)
    vectors, penalty = model.embedding(values, lengths, task.sampling_rate)
    expected = encoder.embed(task.series, task.sampling_rate, pooling=pooling, keep_channels=channels > 1)
    assert vectors.shape == expected.shape and (channels == 1 or vectors.shape[1] > expected.shape[1] / channels)
    np.testing.assert_allclose(vectors.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    (vectors.sum() + penalty).backward()
    assert model.step.embedding_projection.weight.grad.abs().sum() > 0
    cache = BlockInputs(model, task, batch_size=5)  # from the cached block inputs (tune: blocks): the same numbers
    np.testing.assert_allclose(frozen_embeddings(model, task, 32, cache), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(frozen_embeddings(model, task, 32, None), expected)


@pytest.mark.parametrize("classes", [2, 4])
def test_probe_head_predicts_what_the_probe_predicts(classes):
    rng = np.random.default_rng(classes)
    labels = np.arange(120) % classes
    embeddings = rng.normal(size=(120, 10)) * rng.uniform(0.01, 100, size=10) + 0.7 * np.eye(10)[labels % 10]
    train = np.arange(120) < 60
    probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=ALPHAS)).fit(embeddings[train], labels[train])
    head = probe_head(embeddings[train], labels[train], classes + 1, ALPHAS)  # one class never seen in training
    logits = ((torch.from_numpy(embeddings).float() - head["embedding_mean"]) / head["embedding_scale"]
              @ head["classifier.weight"].T + head["classifier.bias"])
    np.testing.assert_array_equal(logits.argmax(dim=1).numpy(), probe.predict(embeddings))
    assert (logits[:, classes] < logits[:, :classes].min(dim=1).values).all()  # the unseen class never wins


def test_at_step_0_the_model_predicts_what_the_frozen_probe_predicts(encoder):
    task = shapes_task(48)
    pooling = encoder.config.embedding_pooling
    frozen = encoder.embed(task.series, task.sampling_rate, pooling=pooling)
    train, test = np.flatnonzero(task.train), np.flatnonzero(~task.train)
    probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=ALPHAS)).fit(frozen[train], task.labels[train])
    model = classifier_for(encoder, task, pooling)
    model.load_state_dict(probe_head(frozen[train], task.labels[train], 3, ALPHAS), strict=False)
    np.testing.assert_array_equal(predict(model, task, test, batch_size=32), probe.predict(frozen[test]))


def test_validation_fold_is_a_stratified_part_of_the_train_split():
    labels = np.array([0] * 40 + [1] * 20 + [2] * 12)
    train = np.arange(72) % 4 != 0
    fit, held_out = validation_fold(labels, train, 0.25, seed=0)
    assert set(fit) | set(held_out) == set(np.flatnonzero(train)) and not set(fit) & set(held_out)
    assert len(held_out) == round(0.25 * train.sum())
    counts = np.bincount(labels[held_out], minlength=3)  # stratified: a quarter of (30, 15, 9) each, rounded
    assert np.abs(counts - 0.25 * np.array([30, 15, 9])).max() <= 1 and counts.tolist() != [14, 0, 0]
    again = validation_fold(labels, train, 0.25, seed=0)
    assert np.array_equal(again[1], held_out)
    single = np.array([0] * 10 + [1])  # a class with one series cannot be stratified: a plain split instead
    assert len(validation_fold(single, np.ones(11, bool), 0.3, seed=0)[1]) == 3


@pytest.mark.parametrize("tune", ["all", "blocks"])
def test_finetune_selects_the_step_by_validation_and_trains_a_copy(encoder, tune):
    task = shapes_task(48)
    pooling = encoder.config.embedding_pooling
    fit, held_out = validation_fold(task.labels, task.train, 0.25, seed=0)
    frozen = encoder.embed(task.series, task.sampling_rate, pooling=pooling)
    start = classifier_for(encoder, task, pooling)
    start.load_state_dict(probe_head(frozen[fit], task.labels[fit], 3, ALPHAS), strict=False)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    config = FinetuneParams(epochs=3, max_steps=100, batch_size=8, evaluations=3, encoder_lr=1e-3, head_lr=3e-3,
                            tune=tune, min_gain=0.0, min_validation=1)
    cache = BlockInputs(start, task, 32) if tune == "blocks" else None
    run = finetune(start, task, fit, held_out, config, cache=cache)

    assert run.steps == int(np.ceil(3 * len(fit) / 8)) == len(run.losses)  # epochs over the train fold
    assert sorted(run.validation) == [0, run.steps // 3, 2 * run.steps // 3, run.steps]
    best = max(run.validation.values())
    assert run.selected_step == min(s for s, v in run.validation.items() if v == best)  # ties: the earlier step
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items())  # the start was not trained
    score = task_score(task.labels[held_out], predict(run.model, task, held_out, 32, cache), "macro_f1")[0]
    assert score == run.validation[run.selected_step]  # the model returned is the one selected
    if run.selected_step:
        state = run.model.state_dict()
        assert not torch.equal(state["step.final_norm.weight"], before["step.final_norm.weight"])
        frozen_part = torch.equal(state["step.front_end.conv1.weight"], before["step.front_end.conv1.weight"])
        assert frozen_part == (tune == "blocks")  # `blocks` leaves the layers before the blocks as they were
    else:
        assert run.model is start
    again = finetune(start, task, fit, held_out, config, cache=cache)
    assert again.losses == run.losses and again.validation == run.validation  # seeded
    capped = finetune(start, task, fit, held_out, config.model_copy(update={"max_steps": 4, "evaluations": 2}),
                      cache=cache)
    assert capped.steps == 4 and sorted(capped.validation) == [0, 2, 4]
    cautious = finetune(start, task, fit, held_out, config.model_copy(update={"min_gain": 0.05}), cache=cache)
    assert cautious.validation == run.validation  # the same training; only the choice differs
    gains = {s: v - run.validation[0] for s, v in run.validation.items() if s}
    eligible = {s: run.validation[s] for s, gain in gains.items() if gain >= 0.05}
    assert cautious.selected_step == (min(s for s, v in eligible.items() if v == max(eligible.values()))
                                      if eligible else 0)
    never = finetune(start, task, fit, held_out, config.model_copy(update={"min_gain": 1.0}), cache=cache)
    assert never.selected_step == 0 and never.model is start  # no step can beat the probe by a whole F1 point
    too_few = finetune(start, task, fit, held_out, config.model_copy(update={"min_validation": len(held_out) + 1}))
    assert too_few.model is start and too_few.steps == 0 and not too_few.losses  # the probe kept, no FT run
    # the refit: no validation, the same schedule of run.steps stopped early, the same trajectory
    refit = finetune(start, task, fit, None, config, cache=cache, steps=run.steps, stop_at=3)
    assert refit.selected_step == 3 and refit.steps == run.steps and refit.losses == run.losses[:3]
    assert refit.model is not start and not refit.validation


def test_finetune_lowers_the_train_loss(encoder):
    task = shapes_task(48)
    pooling = encoder.config.embedding_pooling
    fit, held_out = validation_fold(task.labels, task.train, 0.25, seed=0)
    start = classifier_for(encoder, task, pooling)  # an untrained head: the loss has room to fall
    config = FinetuneParams(epochs=30, max_steps=80, batch_size=8, encoder_lr=1e-3, head_lr=1e-2, evaluations=1,
                            tune="all", min_validation=1)
    losses = finetune(start, task, fit, held_out, config).losses
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_saved_classifier_loads_with_the_auto_classes(encoder, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    task = shapes_task(12)
    pooling = encoder.config.embedding_pooling
    model = classifier_for(encoder, task, pooling)
    frozen = encoder.embed(task.series, task.sampling_rate, pooling=pooling)
    model.load_state_dict(probe_head(frozen, task.labels, 3, ALPHAS), strict=False)
    with torch.no_grad():
        model.step.final_norm.weight.mul_(1.5)  # as if fine-tuned: the encoder differs from `encoder`
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}

    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, STEPForClassification) and loaded.config.id2label == {0: "c0", 1: "c1", 2: "c2"}
    expected = model.predict_logits(task.series, task.sampling_rate)
    np.testing.assert_allclose(loaded.predict_logits(task.series, task.sampling_rate), expected, rtol=1e-6)
    np.testing.assert_allclose(STEPForClassification.from_pretrained(tmp_path).predict_logits(
        task.series, task.sampling_rate), expected, rtol=1e-6)
    backbone = AutoModel.from_pretrained(tmp_path)  # the fine-tuned encoder alone
    assert isinstance(backbone, STEPEncoder)
    assert torch.equal(backbone.final_norm.weight, model.step.final_norm.weight)


@pytest.fixture(scope="module")
def distilled_project(extracted_project):
    from stages import distill as distill_stage

    root, params_path = extracted_project
    if not (root / "models/step-student/config.json").exists():
        distill_stage.run(str(params_path))
    return root, params_path


def test_finetune_stage_reports_both_models_and_the_probes_on_the_same_splits(distilled_project, tmp_path):
    from pipeline.evaluate import finetune_table
    from stages import finetune as finetune_stage

    root, params_path = distilled_project
    params = yaml.safe_load(Path(params_path).read_text())
    params["finetune"] |= {"splits": 2, "reports_dir": str(tmp_path / "reports"), "save_dir": str(tmp_path / "models"),
                           "datasets": ["probe_sleep", "probe_real"], "min_validation": 1, "min_gain": 0.0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = finetune_stage.run(str(tmp_path / "params.yaml"))

    assert set(metrics) == {"finetune-distilled", "finetune-scratch", "step-distilled", "step-random"}
    assert json.loads((tmp_path / "reports/finetune_metrics.json").read_text()) == metrics
    record = json.loads((tmp_path / "reports/finetune/splits.json").read_text())
    scores = record["scores"]
    assert all(len(per_split) == 2 for by_task in scores.values() for per_split in by_task.values())
    for task in ("probe_sleep", "probe_real"):
        distilled, scratch = np.array(scores["finetune-distilled"][task]), np.array(scores["finetune-scratch"][task])
        mean, low, high = record["distilled_minus_scratch"][task]
        assert mean == pytest.approx((distilled - scratch).mean(), abs=1e-4) and low <= mean <= high
        probe = np.array(scores["step-distilled"][task])
        assert record["finetune_distilled_minus"]["step-distilled"][task][0] == pytest.approx(
            (distilled - probe).mean(), abs=1e-4)
        for split, step in enumerate(record["selected_step"]["finetune-distilled"][task]):
            if step == 0:  # pure LP won on the validation fold: the frozen probe itself is scored
                assert distilled[split] == probe[split]
    assert set(record["finetune_distilled_minus"]) == {"finetune-scratch", "step-distilled", "step-random"}

    saved = STEPForClassification.from_pretrained(tmp_path / "models" / "probe_real")
    assert saved.config.id2label == {0: "sine", 1: "square"}
    assert (tmp_path / "reports/finetune/loss_curves.png").stat().st_size > 1000
    header = (tmp_path / "reports/finetune/loss.csv").read_text().splitlines()[0]
    assert header == "model,task,step,loss,validation"
    table = finetune_table(metrics, record)
    assert "| finetune-distilled |" in table and "| step-distilled |" in table
