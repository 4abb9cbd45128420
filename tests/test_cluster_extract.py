"""Extraction on a dask.distributed cluster of 2 worker processes: same store as one process, resume, dead workers."""

import os
import signal

import numpy as np
import pytest
import yaml
from distributed import LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from typer.testing import CliRunner

from data_catalog.catalog import load_catalog
from pipeline.cli import app
from pipeline.extract import extract
from pipeline.feature_store import FeatureStore
from schemas.params import load_params
from tests.test_extract import extract_interrupted_after


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local:
        yield local


def assert_same_store(path, reference) -> None:
    """Every array of every group bitwise equal, and the same manifest statistics."""
    got, want = FeatureStore.open(path), FeatureStore.open(reference)
    assert got.manifest.complete and got.group_names() == want.group_names()
    for group in want.group_names():
        assert got.n_chunks(group) == want.n_chunks(group)
        for chunk in range(want.n_chunks(group)):
            for a, b in zip(got.read_chunk(group, chunk), want.read_chunk(group, chunk)):
                np.testing.assert_array_equal(a, b)
        for a, b in zip(got.chunk_statistics(group), want.chunk_statistics(group)):
            np.testing.assert_array_equal(a, b)
    assert got.manifest.feature_mean == want.manifest.feature_mean
    assert got.manifest.feature_std == want.manifest.feature_std


def params_with_store_dir(params_path, store_dir):
    params = load_params(params_path)
    params.extract.store_dir = str(store_dir)
    return params


@pytest.mark.parametrize("teacher", ["spectral", "silero_vad", "fracast"])
def test_cluster_store_equals_single_process_store(extracted_project, tmp_path, cluster, teacher):
    root, params_path = extracted_project
    params = params_with_store_dir(params_path, tmp_path / "features")
    catalog = load_catalog(params.prepare.catalog)
    extract(teacher, params, catalog, catalog.datasets, scheduler=cluster.scheduler_address)
    assert_same_store(tmp_path / f"features/{teacher}.zarr", root / f"data/features/{teacher}.zarr")


def count_teacher_loads() -> None:
    """In a worker process: wrap the load_teacher the worker plugin calls with a counter."""
    import pipeline.cluster

    original = pipeline.cluster.load_teacher
    pipeline.cluster.teacher_loads = 0

    def counted(*args, **kwargs):
        pipeline.cluster.teacher_loads += 1
        return original(*args, **kwargs)

    pipeline.cluster.load_teacher = counted


def teacher_loads() -> int:
    import pipeline.cluster

    return pipeline.cluster.teacher_loads


def test_each_worker_loads_the_teacher_once(extracted_project, tmp_path, cluster):
    root, params_path = extracted_project
    params = params_with_store_dir(params_path, tmp_path / "features")
    catalog = load_catalog(params.prepare.catalog)
    with cluster.get_client() as client:
        client.run(count_teacher_loads)
        extract("silero_vad", params, catalog, catalog.datasets, scheduler=cluster.scheduler_address)
        loads = client.run(teacher_loads)
    n_chunks = sum(FeatureStore.open(tmp_path / "features/silero_vad.zarr").n_chunks(g) for g in
                   FeatureStore.open(tmp_path / "features/silero_vad.zarr").group_names())
    assert n_chunks > 2 * len(loads)  # more tasks than workers, so per-task loading would show
    assert sorted(loads.values()) == [1, 1], loads


class KillWorkerOnce(WorkerPlugin):
    """SIGKILLs the worker process as it starts its second extraction task, once per test (a marker file)."""

    def __init__(self, marker: str):
        self.marker, self.started = marker, 0

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith("extract-"):
            self.started += 1
            if self.started == 2 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_shard_is_redone(extracted_project, tmp_path, cluster):
    root, params_path = extracted_project
    params = params_with_store_dir(params_path, tmp_path / "features")
    catalog = load_catalog(params.prepare.catalog)
    marker = tmp_path / "killed"
    with cluster.get_client() as client:
        client.register_plugin(KillWorkerOnce(str(marker)), name="kill-worker-once")
        try:
            extract("fracast", params, catalog, catalog.datasets, scheduler=cluster.scheduler_address)
        finally:
            client.unregister_worker_plugin("kill-worker-once")
        client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert marker.exists(), "no worker was killed: the test did not test anything"
    assert_same_store(tmp_path / "features/fracast.zarr", root / "data/features/fracast.zarr")


def test_cluster_resume_redoes_only_unfinished_chunks(extracted_project, tmp_path, cluster, monkeypatch):
    root, params_path = extracted_project
    params = params_with_store_dir(params_path, tmp_path / "features")
    catalog = load_catalog(params.prepare.catalog)
    extract_interrupted_after(3, "spectral", params, catalog, monkeypatch)  # a single-process run, cut short

    path = tmp_path / "features/spectral.zarr"
    partial = FeatureStore.open(path)
    done = {(g, c) for g in partial.group_names() for c in range(partial.n_chunks(g))} - {
        (g, c) for g in partial.group_names() for c in partial.pending_chunks(g)}
    assert len(done) == 3
    flag_times = {(g, c): (path / g / "chunk_done" / "c" / str(c)).stat().st_mtime_ns for g, c in done}

    extract("spectral", params, catalog, catalog.datasets, scheduler=cluster.scheduler_address)
    assert_same_store(path, root / "data/features/spectral.zarr")
    for (group, chunk), mtime in flag_times.items():  # finished chunks were not written again
        assert (path / group / "chunk_done" / "c" / str(chunk)).stat().st_mtime_ns == mtime


def test_cli_extract_on_a_local_cluster(extracted_project, tmp_path):
    root, params_path = extracted_project
    params = load_params(params_path).model_dump(mode="json")
    params["extract"]["store_dir"] = str(tmp_path / "features")
    local_params = tmp_path / "params.yaml"
    local_params.write_text(yaml.safe_dump(params, sort_keys=False))
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "--teacher", "spectral", "--workers", "2", "--params", str(local_params)])
    assert result.exit_code == 0, result.output
    assert_same_store(tmp_path / "features/spectral.zarr", root / "data/features/spectral.zarr")

    both = runner.invoke(app, ["extract", "--workers", "2", "--scheduler", "tcp://nowhere:1",
                               "--params", str(local_params)])
    assert both.exit_code == 2 and "not both" in both.output
