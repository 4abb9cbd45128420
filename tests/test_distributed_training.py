"""Data-parallel distillation: ranks read disjoint blocks; 2 CPU processes (gloo) stay in sync; checkpoints load
in one process."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from transformers import AutoModel

from data_catalog.catalog import load_catalog
from pipeline import STEPEncoder
from pipeline.distill.loader import DistillationData, open_training_data
from pipeline.distill.train import distill
from pipeline.feature_store import FeatureStore
from schemas.params import load_params


def training_data(root, params_path, rank, world_size) -> DistillationData:
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    entries = [e for e in catalog.datasets if e.role == "pretrain"]
    stores = {t: FeatureStore.open(root / f"data/features/{t}.zarr") for t in params.extract.teachers}
    return DistillationData(open_training_data(entries, catalog, params.prepare.series_store, stores, 8192), stores,
                            batch_size=3, shuffle_blocks=2, prefetch_blocks=0, val_fraction=0.2, seed=0, rank=rank,
                            world_size=world_size)


def test_ranks_read_disjoint_blocks_and_take_equal_steps(extracted_project):
    root, params_path = extracted_project
    ranks = [training_data(root, params_path, rank, 2) for rank in range(2)]
    single = training_data(root, params_path, 0, 1)
    for epoch in range(3):
        plans = [data.epoch_plan(epoch) for data in ranks]
        blocks = [{b for buffer, _ in plan for b in buffer} for plan in plans]
        assert not blocks[0] & blocks[1], "two ranks read the same block"
        assert len(blocks[0] | blocks[1]) >= len(single.blocks) - 2  # at most a trailing buffer is cut
        steps = [sum(len(batches) for _, batches in plan) for plan in plans]
        assert steps[0] == steps[1] > 0
        for plan, data in zip(plans, ranks):  # every batch's rows come from the blocks the rank reads
            owned = {b for buffer, _ in plan for b in buffer}
            for _, batches in plan:
                for dataset, rows in batches:
                    assert {(dataset, int(r) // data.datasets[dataset].block_size) for r in rows} <= owned
    validation = [{b for buffer, _ in data.validation_plan() for b in buffer} for data in ranks]
    assert not validation[0] & validation[1]
    assert validation[0] | validation[1] == {b for buffer, _ in single.validation_plan() for b in buffer}
    assert {b for buffer, _ in single.epoch_plan(0) for b in buffer} == set(single.blocks)  # one process: all


@pytest.mark.parametrize("alignment", ["interpolate", "force_stride"])  # force_stride: several student forwards
def test_two_process_distillation_stays_in_sync_and_loads_in_one_process(extracted_project, tmp_path, alignment):
    root, params_path = extracted_project
    params = load_params(params_path)
    params.distill = params.distill.model_copy(update={
        "output_dir": str(tmp_path / "ddp"), "checkpoint_dir": str(tmp_path / "checkpoints"),
        "reports_dir": str(tmp_path / "reports"), "max_steps": 4, "checkpoint_every": 2, "val_every": 2,
        "alignment": alignment})
    ddp_params = tmp_path / "params.yaml"
    ddp_params.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))

    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "distill", "--nproc", "2", "--params",
                          str(ddp_params)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 1 of 2" in run.stderr and "all 2 ranks hold identical weights" in run.stderr
    metrics = json.loads((tmp_path / "reports/distill/metrics.json").read_text())
    assert metrics["steps"] == 4 and np.isfinite(metrics["val_loss"]["total"])
    assert isinstance(AutoModel.from_pretrained(tmp_path / "ddp"), STEPEncoder)

    # the data-parallel checkpoint continues in a single process
    single = params.model_copy(update={"distill": params.distill.model_copy(update={"max_steps": 6})})
    resumed = distill(single, resume=True)
    assert resumed["steps"] == 6
    rows = (tmp_path / "reports/distill/train_loss.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6  # header, 4 data-parallel steps, 2 single-process steps
