"""Stage two on a tiny project: trains from stores alone, refuses stale stores, resumes exactly, writes reports."""

import csv
import dataclasses
import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from pipeline import STEPEncoder
from pipeline.distill.loader import StoreCoverageError
from pipeline.distill.train import distill
from schemas.params import load_params


def params_in(root, params_path, **distill_updates):
    params = load_params(params_path)
    params.distill = params.distill.model_copy(update=distill_updates)
    return params


def test_distill_trains_without_any_teacher(extracted_project, monkeypatch):
    """No teacher adapter may be imported or built: importing pipeline.teachers during distill fails the test."""
    root, params_path = extracted_project
    for name in [m for m in sys.modules if m.startswith("pipeline.teachers")]:
        monkeypatch.delitem(sys.modules, name)

    class NoTeachers:
        def find_spec(self, name, path=None, target=None):
            if name.startswith("pipeline.teachers") or name in ("silero_vad", "fracast"):
                raise AssertionError(f"distillation imported {name}")
            return None

    monkeypatch.setattr(sys, "meta_path", [NoTeachers(), *sys.meta_path])
    metrics = distill(params_in(root, params_path))
    assert metrics["steps"] == 6
    assert set(metrics["val_loss"]) == {"total", "silero_vad", "fracast", "spectral"}
    assert all(np.isfinite(v) for v in metrics["val_loss"].values())
    output = root / "models/step-student"
    assert (output / "model.safetensors").exists() and (output / "config.json").exists()
    card = (output / "README.md").read_text()
    assert "silero_vad" in card and "pre_long" in card
    loaded = AutoModel.from_pretrained(output)
    assert isinstance(loaded, STEPEncoder)
    # the embedding's kernel components were fitted on the trained student, on the fixed corpus sample, and saved
    from pipeline.distill.train import kernel_component_sample

    assert loaded.config.kernel_components == 16 and bool(loaded.kernel_component_scale.any())
    refit = AutoModel.from_pretrained(output)
    refit.kernel_component_scale.zero_()
    refit.fit_kernel_components(kernel_component_sample(params_in(root, params_path)))
    for name in ("kernel_component_mean", "kernel_component_scale", "kernel_component_axes"):
        torch.testing.assert_close(getattr(refit, name), getattr(loaded, name), rtol=1e-5, atol=1e-6)
    reports = root / "reports/distill"
    assert json.loads((reports / "metrics.json").read_text())["steps"] == 6
    assert (reports / "train_loss.csv").read_text().count("\n") == 7
    assert (reports / "loss_curves.png").stat().st_size > 1000


def test_resume_after_kill_matches_uninterrupted_run(extracted_project, tmp_path, monkeypatch):
    root, params_path = extracted_project
    # 14 steps span more than one epoch (about 8 batches each), so the resume crosses an epoch boundary
    full = params_in(root, params_path, output_dir=str(tmp_path / "full"), checkpoint_dir=str(tmp_path / "ck_full"),
                     reports_dir=str(tmp_path / "rep_full"), max_steps=14, val_every=7)
    distill(full)

    killed = params_in(root, params_path, output_dir=str(tmp_path / "killed"), checkpoint_dir=str(tmp_path / "ck_killed"),
                       reports_dir=str(tmp_path / "rep_killed"), max_steps=14, val_every=7)
    from pipeline.distill import train

    original = train.save_checkpoint

    def save_then_die(directory, model, heads, optimizer, step, history):
        original(directory, model, heads, optimizer, step, history)
        if step == 10:
            raise KeyboardInterrupt("simulated kill after the step-10 checkpoint")

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill(killed)
    monkeypatch.setattr(train, "save_checkpoint", original)
    distill(killed, resume=True)

    a, b = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "killed/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    assert (tmp_path / "rep_full/distill/train_loss.csv").read_text() == (
        tmp_path / "rep_killed/distill/train_loss.csv").read_text()


def test_epochs_of_different_lengths_are_located_exactly(extracted_project):
    """Epochs differ in batch count (partial batches per buffer); every global step maps to exactly one batch."""
    root, params_path = extracted_project
    params = load_params(params_path)
    from data_catalog.catalog import load_catalog
    from pipeline.distill.loader import DistillationData, open_training_data
    from pipeline.feature_store import FeatureStore

    catalog = load_catalog(params.prepare.catalog)
    entries = [e for e in catalog.datasets if e.role == "pretrain"]
    stores = {t: FeatureStore.open(root / f"data/features/{t}.zarr") for t in params.extract.teachers}
    data = DistillationData(open_training_data(entries, catalog, params.prepare.series_store, stores, 8192),
                            stores, batch_size=3, shuffle_blocks=2, prefetch_blocks=0, val_fraction=0.2, seed=0)
    lengths = [sum(len(b) for _, b in data.epoch_plan(e)) for e in range(6)]
    assert len(set(lengths)) > 1, "the test needs epochs of different lengths"
    expected = [(e, k) for e, n in enumerate(lengths) for k in range(n)]
    assert [data.locate(step) for step in range(len(expected))] == expected


def test_read_ahead_holds_at_most_a_buffer_and_the_prefetched_blocks(extracted_project, monkeypatch):
    """The background loader reads `prefetch_blocks` store chunks ahead of the buffer in use, not whole buffers,
    hands the heap's free pages back between buffers, and yields exactly the batches the synchronous loader yields
    (targets standardised per batch from float16)."""
    import gc
    import time
    import weakref

    from pipeline.distill import loader as loader_module

    trims = []
    monkeypatch.setattr(loader_module, "release_free_memory", lambda: trims.append(1))
    root, params_path = extracted_project
    params = load_params(params_path)
    from data_catalog.catalog import load_catalog
    from pipeline.distill.loader import DistillationData, open_training_data
    from pipeline.feature_store import FeatureStore

    catalog = load_catalog(params.prepare.catalog)
    entries = [e for e in catalog.datasets if e.role == "pretrain"]
    stores = {t: FeatureStore.open(root / f"data/features/{t}.zarr") for t in params.extract.teachers}
    datasets = open_training_data(entries, catalog, params.prepare.series_store, stores, 8192)

    def loader(prefetch):
        return DistillationData(datasets, stores, batch_size=3, shuffle_blocks=2, prefetch_blocks=prefetch,
                                val_fraction=0.2, seed=0)

    class Block(dict):  # a dict that a WeakSet can hold
        __hash__ = object.__hash__

    alive, peak = weakref.WeakSet(), 0
    ahead = loader(1)
    read_block = ahead.read_block

    def tracked(dataset, block):
        out = Block(read_block(dataset, block))
        alive.add(out)
        return out

    ahead.read_block = tracked
    plan = ahead.epoch_plan(0) + ahead.epoch_plan(1)
    assert len(plan) > 2 and all(len(buffer) == 2 for buffer, _ in plan[:-1]), "the test needs several full buffers"
    prefetched = []
    for batch in ahead.batches(plan):
        time.sleep(0.01)  # a training step: the reader runs ahead as far as it may
        gc.collect()
        peak = max(peak, len(alive))
        prefetched.append(batch)
    assert peak <= 2 + 1 + 1, f"{peak} blocks held at once: more than a buffer (2) + prefetch (1) + one being read"
    assert len(trims) == len(plan), "the heap is trimmed once per shuffle buffer"

    synchronous = list(loader(0).batches(plan))
    assert [b.segment_ids for b in prefetched] == [b.segment_ids for b in synchronous]
    for a, b in zip(prefetched, synchronous, strict=True):
        assert torch.equal(a.values, b.values)
        assert all(torch.equal(a.targets[t], b.targets[t]) and a.targets[t].dtype == torch.float32 for t in a.targets)


@pytest.mark.parametrize("alignment", ["interpolate", "force_stride"])
def test_alignments_and_crops_train(extracted_project, tmp_path, alignment):
    root, params_path = extracted_project
    params = params_in(root, params_path, alignment=alignment, max_steps=3, output_dir=str(tmp_path / "m"),
                       checkpoint_dir=str(tmp_path / "c"), reports_dir=str(tmp_path / "r"))
    params.distill.crop.enabled = True
    metrics = distill(params)
    assert np.isfinite(metrics["val_loss"]["total"])


def test_stale_store_is_refused(extracted_project, tmp_path):
    root, params_path = extracted_project
    params = load_params(params_path)
    spec = params.extract.teachers["spectral"]
    params.extract.teachers["spectral"] = spec.model_copy(update={"window_seconds": spec.window_seconds * 2})
    with pytest.raises(StoreCoverageError, match="spectral.*stale store after a teacher change"):
        distill(params)


def test_store_segmented_otherwise_is_refused(extracted_project, tmp_path):
    root, params_path = extracted_project
    params = load_params(params_path)
    params.segments.max_samples = 4096  # the stores were cut at 8192
    with pytest.raises(StoreCoverageError, match="segmented with"):
        distill(params)


def test_data_set_missing_from_a_store_is_refused(extracted_project, tmp_path):
    root, params_path = extracted_project
    params = load_params(params_path)
    shutil.copytree(root / "data/features", tmp_path / "features")
    shutil.rmtree(tmp_path / "features/fracast.zarr/pre_radar")
    params.extract.store_dir = str(tmp_path / "features")
    with pytest.raises((StoreCoverageError, ValueError, KeyError), match="pre_radar"):
        distill(params)


def test_first_validation_loss_is_taken_before_training(extracted_project, tmp_path):
    root, params_path = extracted_project
    distill(params_in(root, params_path, output_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"),
                      reports_dir=str(tmp_path / "r")))
    rows = (tmp_path / "r/distill/val_loss.csv").read_text().splitlines()
    assert rows[1].startswith("0,")  # step 0: the untrained student


def test_validation_loss_per_source_and_memory_are_reported(extracted_project, tmp_path):
    """Every training data set with held-out segments gets its own validation loss (and they average to the
    overall one, weighted by segments); resident memory is recorded at every validation."""
    root, params_path = extracted_project
    metrics = distill(params_in(root, params_path, output_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"),
                                reports_dir=str(tmp_path / "r")))

    rows = list(csv.DictReader(open(tmp_path / "r/distill/val_loss_by_source.csv")))
    final = [r for r in rows if int(r["step"]) == metrics["steps"]]
    assert {r["dataset"] for r in final} == set(metrics["val_loss_by_source"]) and len(final) >= 1
    for row in final:
        assert metrics["val_loss_by_source"][row["dataset"]] == pytest.approx(float(row["total"]), abs=1e-5)
    overall = metrics["val_loss"]["total"]
    per_source = [float(r["total"]) for r in final]
    assert min(per_source) - 1e-6 <= overall <= max(per_source) + 1e-6  # a weighted mean of the sources'
    # what varies from run to run is in the run record, outside what DVC hashes
    written = json.loads((tmp_path / "r/distill/metrics.json").read_text())
    assert not {"wall_seconds", "segments_per_second", "peak_rss_gb"} & set(written)
    assert not (tmp_path / "r/distill/memory.csv").exists()
    run_record = json.loads((tmp_path / "r/run_info/distill.json").read_text())
    assert run_record["wall_seconds"] > 0 and run_record["segments_per_second"] > 0 and run_record["host"]
    memory = list(csv.DictReader(open(tmp_path / "r/run_info/distill_memory.csv")))
    assert [int(r["step"]) for r in memory] == [0, 3, 6] and all(float(r["rss_gb"]) > 0.05 for r in memory)
    assert run_record["peak_rss_gb"] == max(float(r["peak_rss_gb"]) for r in memory)  # the process's own maximum
    assert all(float(r["peak_rss_gb"]) >= float(r["rss_gb"]) - 0.01 for r in memory)  # a peak is never below now
    assert [float(r["peak_rss_gb"]) for r in memory] == sorted(float(r["peak_rss_gb"]) for r in memory)
    assert (tmp_path / "r/distill/val_loss_by_source.png").stat().st_size > 1000


@pytest.mark.parametrize("pooling", ["mean+std", "mean+std+max"])
def test_summary_loss_trains_its_own_heads(extracted_project, tmp_path, pooling):
    root, params_path = extracted_project
    metrics = distill(params_in(root, params_path, output_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"),
                                reports_dir=str(tmp_path / "r"), summary_weight=1.0, summary_pooling=pooling))
    assert np.isfinite(metrics["val_loss"]["total"])
    weights = load_file(tmp_path / "c/latest/weights.safetensors")
    head = weights["heads.summary_heads.spectral.1.weight"]  # (moments F, moments H): one block per pooled moment
    moments = len(pooling.split("+"))
    student = STEPEncoder.from_pretrained(tmp_path / "m")
    assert head.shape == (moments * 28, moments * (student.config.embedding_size or student.config.hidden_size))


def test_summary_loss_with_max_pooling_reads_the_targets_maximum():
    """Two teacher token sequences with the same mean and std but another maximum (one tall peak against two
    plateaus): mean+std summary targets cannot tell them apart, mean+std+max targets can."""
    from pipeline.distill.objective import DistillationObjective, TeacherHeads
    from pipeline.student.modeling_step import STEPEncoderOutput

    torch.manual_seed(0)
    out = STEPEncoderOutput(last_hidden_state=torch.randn(1, 1, 4, 8), token_mask=torch.ones(1, 4, dtype=torch.bool))
    plateaus = torch.tensor([-1.0, -1.0, 1.0, 1.0])[None, :, None]  # (B, N, F): mean 0, std 1, max 1
    peak = torch.tensor([3 ** 0.5, -(3 ** -0.5), -(3 ** -0.5), -(3 ** -0.5)])[None, :, None]  # mean 0, std 1, max 1.73
    losses = {}
    for pooling in ("mean+std", "mean+std+max"):
        heads = TeacherHeads(8, {"t": 1}, summary=True, summary_moments=len(pooling.split("+")))
        objective = DistillationObjective(heads, {"t": 1.0}, "interpolate", 0.0, 1.0, 1.0, 0.0, 1.0,
                                          summary_pooling=pooling)
        losses[pooling] = [objective.summary_loss(out, SimpleNamespace(n_tokens={"t": torch.tensor([4])},
                                                                       targets={"t": target}))["summary"].item()
                           for target in (plateaus, peak)]
    assert losses["mean+std"][0] == pytest.approx(losses["mean+std"][1], abs=1e-6)
    assert abs(losses["mean+std+max"][0] - losses["mean+std+max"][1]) > 1e-3


def test_structure_loss_trains_its_own_head_and_needs_fine_structure(extracted_project, tmp_path):
    root, params_path = extracted_project
    params = params_in(root, params_path, output_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"),
                       reports_dir=str(tmp_path / "r"), structure_weight=1.0)
    params.student.overrides |= {"structure_lags": 0, "structure_bands": 0, "embedding_pooling": "mean+std+max+stats"}
    with pytest.raises(ValueError, match="structure_weight.*structure_bands"):
        distill(params)
    params.student.overrides |= {"structure_lags": 2, "structure_bands": 3}
    metrics = distill(params)

    final = list(csv.DictReader(open(tmp_path / "r/distill/val_loss.csv")))[-1]
    assert float(final["structure"]) > 0 and np.isfinite(metrics["val_loss"]["total"])
    head = load_file(tmp_path / "c/latest/weights.safetensors")["heads.structure_head.1.weight"]
    assert head.shape[0] == 2 + 3  # one output per lag and per band


def test_structure_loss_is_zero_when_the_head_reads_the_inputs_back():
    from pipeline.distill.objective import DistillationObjective, TeacherHeads
    from pipeline.student.modeling_step import STEPEncoderOutput

    heads = TeacherHeads(hidden_size=4, feature_dims={}, structure_dim=4)
    objective = DistillationObjective(heads, {}, "interpolate", 1.0, 1.0, 1.0, 0.1, structure_weight=1.0)
    fine_structure = torch.randn(2, 3, 5, 4)  # (B, C, N, J + K)
    with torch.no_grad():  # LayerNorm off (weight 1, bias 0 already; eps aside), Linear = 8 * identity
        heads.structure_head[0].weight.fill_(1.0)
        heads.structure_head[1].weight.copy_(8 * torch.eye(4))
        heads.structure_head[1].bias.zero_()
    tokens = torch.nn.functional.layer_norm(fine_structure, (4,))  # what the LayerNorm gives back
    out = STEPEncoderOutput(last_hidden_state=tokens, token_mask=torch.ones(2, 5, dtype=torch.bool),
                            fine_structure=tokens)
    assert objective.structure_loss(out).item() == pytest.approx(0.0, abs=1e-6)
    out.fine_structure = tokens + 0.5 / 8  # half a log unit off everywhere: smooth-L1(0.5, beta 1) = 0.125
    assert objective.structure_loss(out).item() == pytest.approx(0.125, rel=1e-4)
    out.token_mask = torch.tensor([[True] * 5, [True, False, False, False, False]])
    out.fine_structure[1, :, 1:] += 10.0  # errors at padded tokens do not count
    assert objective.structure_loss(out).item() == pytest.approx(0.125, rel=1e-4)


def test_alignment_interpolates_on_token_centre_times_not_indices():
    from pipeline.distill.objective import tokens_at

    # student: S = 10 samples, 10 tokens centred at 5, 15, ..., 95 (T = 100), token n holds the value n
    tokens = torch.arange(10, dtype=torch.float32)[None, :, None]  # (1, 10, 1)
    # a teacher grid of 4 tokens of 30 samples covers 120 > T: centres 15, 45, 75, 105 (the last past the end)
    centres = torch.tensor([[15.0, 45.0, 75.0, 105.0]])
    out = tokens_at(tokens, torch.tensor([10]), torch.tensor([10.0]), centres)
    np.testing.assert_allclose(out[0, :, 0], [1.0, 4.0, 7.0, 9.0])  # index-based resampling would give 1.1, 3.9...
    # a pooled grid whose last group is partial: centre of the members' centres
    out = tokens_at(tokens, torch.tensor([10]), torch.tensor([10.0]), torch.tensor([[30.0, 82.5]]))
    np.testing.assert_allclose(out[0, :, 0], [2.5, 7.75])


def test_batches_carry_target_token_centres_in_samples(extracted_project):
    from data_catalog.catalog import load_catalog
    from pipeline.distill.loader import DistillationData, open_training_data
    from pipeline.feature_store import FeatureStore, store_location

    root, params_path = extracted_project
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}
    datasets = open_training_data([catalog.get("pre_sleep")], catalog, params.prepare.series_store, stores,
                                  params.segments.max_samples)
    data = DistillationData(datasets, stores, 4, 2, 0, 0.0, 0)
    batch = next(iter(data.batches(data.epoch_plan(0))))
    for teacher, centres in batch.token_centres.items():
        samples_per_token = 100.0 / datasets[0].token_rate[teacher]  # pre_sleep is 100 Hz
        n = int(batch.n_tokens[teacher][0])
        np.testing.assert_allclose(centres[0, :n], (np.arange(n) + 0.5) * samples_per_token, rtol=1e-9)


def test_batches_of_a_fixed_montage_train_the_channel_identities(extracted_project):
    from data_catalog.catalog import load_catalog
    from pipeline.distill.loader import DistillationData, open_training_data
    from pipeline.distill.objective import DistillationObjective, TeacherHeads
    from pipeline.feature_store import FeatureStore, store_location
    from pipeline.student import STEPConfig

    root, params_path = extracted_project
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}
    radar = catalog.get("pre_radar")  # two channels; declared here as a fixed I/Q montage
    entries = [radar, radar.model_copy(update={"channel_names": ["I", "Q"]})]
    student = STEPEncoder(STEPConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                     patch_points=8, front_end_channels=4, montage_channels=2))
    dims = {t: s.manifest.feature_dim for t, s in stores.items()}
    objective = DistillationObjective(TeacherHeads(16, dims), dict.fromkeys(dims, 1.0), "interpolate", 1.0, 1.0, 1.0,
                                      0.0)
    for entry, montage in zip(entries, [False, True]):
        datasets = open_training_data([entry], catalog, params.prepare.series_store, stores,
                                      params.segments.max_samples)
        data = DistillationData(datasets, stores, 4, 2, 0, 0.0, 0)
        batch = next(iter(data.batches(data.epoch_plan(0))))
        assert batch.fixed_montage is montage and batch.to(torch.device("cpu")).fixed_montage is montage
        student.zero_grad()
        objective(student, batch)[0].backward()
        grad = student.channel_embedding.weight.grad
        assert (grad is not None and bool(grad.abs().sum() > 0)) is montage


def test_training_batches_show_a_seeded_channel_subset_and_validation_every_channel(extracted_project, tmp_path):
    from data_catalog.catalog import load_catalog
    from pipeline.distill.loader import DistillationData, open_training_data
    from pipeline.feature_store import FeatureStore, store_location

    root, params_path = extracted_project
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}
    radar = catalog.get("pre_radar").model_copy(update={"channel_names": ["I", "Q"]})  # two channels, a montage
    datasets = open_training_data([radar], catalog, params.prepare.series_store, stores, params.segments.max_samples)

    def batches(max_channels, seed):
        data = DistillationData(datasets, stores, 4, 2, 0, 0.0, 0, max_channels=max_channels)
        return list(data.batches(data.epoch_plan(0), augment_seed=seed))

    whole, subset, again = batches(None, 5), batches(1, 5), batches(1, 5)
    other_seed = batches(1, 6)
    assert all(b.values.shape[1] == 2 and b.fixed_montage for b in whole)
    picked = []
    for w, s, a in zip(whole, subset, again):
        assert s.values.shape[1] == 1 and not s.fixed_montage  # a subset is not the montage's order any more
        assert torch.equal(s.values, a.values)  # a function of (seed, batch index): resumes draw the same
        for k in range(len(s.segment_ids)):
            matches = [c for c in range(2) if torch.equal(s.values[k, 0], w.values[k, c])]
            assert matches, "a subset channel must be one of the segment's own channels"
            picked.append(matches[0])
        for teacher in w.targets:  # targets stay those of all channels
            assert torch.equal(s.targets[teacher], w.targets[teacher])
    assert set(picked) == {0, 1}
    assert any(not torch.equal(s.values, o.values) for s, o in zip(subset, other_seed))
    assert all(b.values.shape[1] == 2 for b in batches(1, None))  # validation (no seed): every channel
    assert all(b.values.shape[1] == 2 for b in batches(2, 5))  # not more channels than max_channels: unchanged

    params = params_in(root, params_path, max_channels=1, max_steps=2, output_dir=str(tmp_path / "m"),
                       checkpoint_dir=str(tmp_path / "c"), reports_dir=str(tmp_path / "r"))
    assert np.isfinite(distill(params)["val_loss"]["total"])
    params.student.overrides |= {"montage_channels": 2}
    with pytest.raises(ValueError, match="max_channels.*montage_channels"):
        distill(params)


def test_per_source_standardisation_uses_each_data_sets_own_spread(extracted_project, tmp_path):
    from data_catalog.catalog import load_catalog
    from pipeline.distill.loader import SOURCE_MIN_SCALE, DistillationData, open_training_data
    from pipeline.distill.objective import DistillationObjective, TeacherHeads, token_loss, token_mask
    from pipeline.feature_store import FeatureStore, store_location

    root, params_path = extracted_project
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}
    entries = [e for e in catalog.datasets if e.role == "pretrain"]
    datasets = open_training_data(entries, catalog, params.prepare.series_store, stores, params.segments.max_samples)
    corpus = DistillationData(datasets, stores, 4, 2, 0, 0.0, 0)
    source = DistillationData(datasets, stores, 4, 2, 0, 0.0, 0, target_standardisation="source")
    assert next(iter(corpus.batches(corpus.epoch_plan(0)))).target_scale is None
    for name in ("pre_sleep", "pre_radar"):  # every valid token of the data set, standardised over the corpus
        tokens = []
        for chunk in range(stores["spectral"].n_chunks(name)):
            features, counts, _ = stores["spectral"].read_chunk(name, chunk)
            tokens += [f[:n] for f, n in zip(np.asarray(features, np.float64), counts)]
        tokens = (np.concatenate(tokens) - corpus.mean["spectral"].numpy()) / corpus.std["spectral"].numpy()
        assert np.allclose(source.source_loc[name]["spectral"], tokens.mean(0), atol=1e-3)
        assert np.allclose(source.source_scale[name]["spectral"], np.maximum(tokens.std(0), SOURCE_MIN_SCALE),
                           atol=1e-3)

    batch = next(iter(source.batches(source.epoch_plan(0))))
    assert set(batch.target_scale) == set(stores)
    from pipeline.student import STEPConfig
    torch.manual_seed(0)
    student = STEPEncoder(STEPConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                     patch_points=8, front_end_channels=4))
    dims = {t: s.manifest.feature_dim for t, s in stores.items()}
    objective = DistillationObjective(TeacherHeads(16, dims), dict.fromkeys(dims, 1.0), "interpolate", 1.0, 1.0, 1.0,
                                      0.0)
    with torch.no_grad():
        _, parts = objective(student, batch)
        _, corpus_parts = objective(student, dataclasses.replace(batch, target_loc=None, target_scale=None))
        out = student(batch.values, batch.lengths, sampling_rate=batch.sampling_rate)
        from pipeline.distill.objective import tokens_at
        tokens = tokens_at(out.last_hidden_state.mean(1), out.num_tokens, out.strides,
                           batch.token_centres["spectral"])
        target = batch.targets["spectral"]
        prediction = objective.heads("spectral", tokens[:, : target.shape[1]])
        loc, scale = batch.target_loc["spectral"], batch.target_scale["spectral"]
        mask = token_mask(batch.n_tokens["spectral"], target.shape[1])
        expected = token_loss((prediction - loc) / scale, (target - loc) / scale, mask, 1.0, 1.0, 1.0)
    assert parts["spectral"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["spectral"].item() != pytest.approx(corpus_parts["spectral"].item(), rel=1e-3)

    params = params_in(root, params_path, target_standardisation="source", max_steps=2,
                       output_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"), reports_dir=str(tmp_path / "r"))
    assert np.isfinite(distill(params)["val_loss"]["total"])


def test_series_deviations_ignore_padding_and_each_series_offset():
    from pipeline.distill.objective import series_deviations, token_loss, token_mask

    torch.manual_seed(0)
    tokens = torch.randn(2, 5, 3)  # (B, N, F)
    mask = token_mask(torch.tensor([5, 3]), 5)
    deviations = series_deviations(tokens, mask)
    assert torch.allclose(deviations[0], tokens[0] - tokens[0].mean(0))
    assert torch.allclose(deviations[1, :3], tokens[1, :3] - tokens[1, :3].mean(0))  # padding is not in the mean
    padded = tokens.clone()
    padded[1, 3:] = 1e6
    assert torch.allclose(series_deviations(padded, mask)[1, :3], deviations[1, :3])
    shifted = tokens + torch.tensor([[[5.0, -2.0, 1.0]], [[-3.0, 0.5, 7.0]]])  # another level per series
    loss = lambda a, b: token_loss(series_deviations(a, mask), series_deviations(b, mask), mask, 1.0, 1.0, 1.0)
    assert loss(shifted, tokens).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(tokens.flip(1), tokens).item() > 0.1  # what changes within a series still counts


def test_deviation_targets_train_and_leave_each_series_offset_to_the_summary(extracted_project, tmp_path):
    from pipeline.distill.objective import DistillationObjective, TeacherHeads

    torch.manual_seed(0)
    tokens = torch.randn(2, 1, 4, 8)  # (B, C, N, H)
    heads = TeacherHeads(8, {"t": 3})
    target = heads("t", tokens.mean(1)).detach()
    student = lambda *args, **kwargs: SimpleNamespace(  # noqa: E731
        last_hidden_state=tokens, num_tokens=torch.tensor([4, 4]), strides=torch.tensor([10.0, 10.0]),
        patching_loss=torch.tensor(0.0))
    batch = SimpleNamespace(values=None, lengths=None, sampling_rate=None, fixed_montage=None, target_scale=None,
                            n_tokens={"t": torch.tensor([4, 4])}, token_centres={"t": torch.tensor([[5.0, 15, 25, 35]] * 2)},
                            targets={"t": target + torch.tensor([2.0, -1.0, 0.5])})  # every token moved alike
    losses = {kind: DistillationObjective(heads, {"t": 1.0}, "interpolate", 1.0, 1.0, 1.0, 0.0,
                                          token_target=kind)(student, batch)[1]["t"].item()
              for kind in ("tokens", "deviations")}
    assert losses["deviations"] == pytest.approx(0.0, abs=1e-5) and losses["tokens"] > 0.1

    root, params_path = extracted_project
    params = params_in(root, params_path, token_target="deviations", max_steps=2, output_dir=str(tmp_path / "m"),
                       checkpoint_dir=str(tmp_path / "c"), reports_dir=str(tmp_path / "r"))
    assert np.isfinite(distill(params)["val_loss"]["total"])


def test_a_non_finite_loss_stops_before_the_update_naming_the_batch(extracted_project, tmp_path, monkeypatch):
    from pipeline.distill import train

    root, params_path = extracted_project
    params = params_in(root, params_path, output_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"),
                       reports_dir=str(tmp_path / "r"), checkpoint_every=2)
    calls = []
    forward = train.StudentWithObjective.forward

    def nan_on_the_fourth_step(self, batch):
        loss, parts = forward(self, batch)
        calls.append(batch.dataset)
        return (loss * float("nan"), parts) if len(calls) == 4 else (loss, parts)

    monkeypatch.setattr(train.StudentWithObjective, "forward", nan_on_the_fourth_step)
    with pytest.raises(train.NonFiniteLossError) as error:
        distill(params)
    message = str(error.value)
    assert message.startswith("step 4: loss nan") and f"on data set '{calls[3]}', segments [" in message
    assert "no update was applied" in message and str(tmp_path / "c/latest") in message
    weights = load_file(tmp_path / "c/latest/weights.safetensors")  # step 2's checkpoint, untouched and finite
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "m").exists()


def test_relation_loss_asks_for_the_teachers_neighbourhoods_within_the_batch():
    from pipeline.distill.objective import relation_loss

    torch.manual_seed(0)
    target = torch.randn(6, 8)
    twins = torch.cat([target[:1], target[:1]])  # two series the teacher cannot tell apart
    exact = relation_loss(target, target, 0.1).item()
    swapped = relation_loss(target[[1, 0, 2, 3, 4, 5]], target, 0.1).item()  # two predictions traded places
    assert exact < swapped  # the minimum is the teacher's own arrangement
    assert relation_loss(twins, twins, 0.1).item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    assert relation_loss(target[:1], target[:1], 0.1).item() == 0.0  # nothing to relate in a batch of one
    scaled = relation_loss(3.0 * target, target, 0.1).item()  # cosine: only directions matter
    assert scaled == pytest.approx(exact, abs=1e-5)


def test_relation_loss_trains_and_is_reported(extracted_project, tmp_path):
    root, params_path = extracted_project
    params = params_in(root, params_path, relation_weight=1.0, summary_weight=0.0, max_steps=2,
                       output_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"),
                       reports_dir=str(tmp_path / "r"))
    metrics = distill(params)
    final = list(csv.DictReader(open(tmp_path / "r/distill/val_loss.csv")))[-1]
    assert float(final["relation"]) > 0 and "summary" not in final and np.isfinite(metrics["val_loss"]["total"])


def test_embedding_projection_is_trained_by_the_summary_loss_and_needs_it(extracted_project, tmp_path):
    root, params_path = extracted_project
    dirs = dict(output_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"), reports_dir=str(tmp_path / "r"))
    params = params_in(root, params_path, max_steps=3, **dirs)
    params.student.overrides["embedding_size"] = 4
    distill(params)
    weights = load_file(tmp_path / "c/latest/weights.safetensors")
    summary = [v for k, v in weights.items() if k.startswith("heads.summary_heads.") and k.endswith(".1.weight")]
    assert summary and all(w.shape[1] == 2 * 4 for w in summary)  # mean+std of the 4 projected numbers
    student = STEPEncoder.from_pretrained(tmp_path / "m")
    torch.manual_seed(0)
    fresh = STEPEncoder(student.config)
    assert student.config.embedding_size == 4
    assert not torch.allclose(student.embedding_projection.weight, fresh.embedding_projection.weight)

    params = params_in(root, params_path, max_steps=1, summary_weight=0.0, **dirs)
    params.student.overrides["embedding_size"] = 4
    with pytest.raises(ValueError, match="embedding_size.*summary"):
        distill(params)


def test_padding_bench_counts_padded_tokens_and_attention_of_every_batch():
    from bench.distill_throughput import padding_overhead
    from pipeline.student import STEPConfig

    # fixed 16-sample stride: 160 and 320 samples make 10 and 20 tokens; one 2-channel batch, one 1-channel batch
    model = STEPEncoder(STEPConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                   front_end_channels=8, patch_points=8, adaptive_patching=False, fixed_stride=16))
    batches = [SimpleNamespace(dataset="a", lengths=torch.tensor([160, 320]), values=torch.zeros(2, 2, 320),
                               sampling_rate=None),
               SimpleNamespace(dataset="b", lengths=torch.tensor([320]), values=torch.zeros(1, 1, 320),
                               sampling_rate=100.0)]
    data = SimpleNamespace(epoch_plan=lambda epoch: [], batches=lambda plan, augment_seed: iter(batches))
    tokens, attention, by_dataset = padding_overhead(data, model)
    # padded: 2 x 2 x 20 + 20 = 100 tokens, 2 x 2 x 400 + 400 = 2000; valid: 2 x 30 + 20 = 80, 2 x 500 + 400 = 1400
    assert tokens == pytest.approx(100 / 80) and attention == pytest.approx(2000 / 1400)
    assert by_dataset == pytest.approx({"a": 80 / 60, "b": 1.0})
