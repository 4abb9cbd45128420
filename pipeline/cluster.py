"""Extraction on a dask.distributed cluster: workers compute and write chunks, the driver lays out and finalizes.

    driver (this process)                                   each worker process
    ----------------------------------------------------    ---------------------------------------------
    segments every data set (ids, lengths)                  TeacherOnWorker.setup: load the teacher once
    asks one worker for the manifest and token grids   ->   teacher_layout(teacher, ...)
    creates / resumes the store, holds its lock
    lays out the groups, lists pending chunks
    submits one task per pending chunk (a bounded window) -> compute_chunk: read the chunk's series, encode,
                                                            write its region + statistics + done flag
    finalize: merges the per-chunk statistics, manifest

Chunks are disjoint, chunk-aligned regions with their own statistics and flag files, so workers never write the
same file and need no lock. Every chunk is computed exactly as in a single-process run (same segments, same
batches), so the store is the same. A worker that dies loses only its running task, which the scheduler gives
to another worker; a killed driver resumes, like a single-process run, at the chunks not marked done.
"""

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from itertools import islice

import dask
from distributed import Client, LocalCluster, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from tqdm import tqdm

from data_catalog.catalog import open_reader
from pipeline.chunk_encoding import ChunkTask, SegmentValues, encode_chunk, teacher_layout
from pipeline.feature_store import FeatureStore
from pipeline.teachers import load_teacher
from schemas.catalog import Catalog
from schemas.manifest import FeatureStoreManifest
from schemas.params import Params
from schemas.teachers import TeacherSpec

log = logging.getLogger(__name__)

PLUGIN_NAME = "step-pipeline-teacher"
TASKS_PER_WORKER = 3  # chunks in flight per worker: enough to keep it busy, few enough to bound driver memory


class TeacherOnWorker(WorkerPlugin):
    """Loads the teacher once per worker process, and keeps the worker's open readers and store handles."""

    def __init__(self, name: str, spec: TeacherSpec):
        self.name, self.spec = name, spec

    def setup(self, worker) -> None:
        if "MALLOC_TRIM_THRESHOLD_" in os.environ:
            log.warning("worker %s runs with MALLOC_TRIM_THRESHOLD_=%s (dask's default for workers it starts): "
                        "every large tensor is then mapped and unmapped anew, and torch on CPU ran 2.3x slower "
                        "here; see docs/cluster.md", worker.address, os.environ["MALLOC_TRIM_THRESHOLD_"])
        self.teacher = load_teacher(self.name, self.spec)
        self.values: dict[str, SegmentValues] = {}  # data set -> its reader, with the last series read cached
        self.stores: dict[str, FeatureStore] = {}  # store location -> chunk writer
        log.info("worker %s loaded teacher %s", worker.address, self.name)


def _plugin() -> TeacherOnWorker:
    return get_worker().plugins[PLUGIN_NAME]


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """A client of the cluster at `scheduler`, or of a LocalCluster of `workers` single-threaded processes.

    One thread per worker, so each runs one chunk at a time on its one copy of the teacher; dask also sets
    OMP_NUM_THREADS=1 in the processes it starts, so N workers use N cores. Dask's MALLOC_TRIM_THRESHOLD_ for
    those processes is left unset: it turns off glibc's adaptive mmap threshold, so every large tensor is
    mapped and unmapped anew (a teacher forward pass took 4.1 s instead of 1.7 s with it).
    """
    if scheduler is not None:
        with Client(scheduler) as client:
            log.info("connected to dask scheduler %s (%d worker threads)", scheduler, sum(client.nthreads().values()))
            try:
                yield client
            finally:  # the cluster outlives this run: free the workers' teachers
                with contextlib.suppress(ValueError):  # (none registered when the run failed early)
                    client.unregister_worker_plugin(PLUGIN_NAME)
        return
    no_malloc_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(no_malloc_trim), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as local, \
            Client(local) as client:
        log.info("started a local dask cluster of %d worker processes", workers)
        yield client


def load_teacher_on_workers(client: Client, name: str, spec: TeacherSpec, params: Params,
                            requests: list[tuple[str, float, list[int]]]) -> tuple[FeatureStoreManifest, dict]:
    """Load the teacher on every worker (once each) and get the manifest and token grids from one of them."""
    client.register_plugin(TeacherOnWorker(name, spec), name=PLUGIN_NAME)
    return client.submit(_teacher_layout_on_worker, name, params, requests, pure=False).result()


def _teacher_layout_on_worker(name, params, requests):
    return teacher_layout(_plugin().teacher, name, params, requests)


def compute_chunk(store_path: str, task: ChunkTask, catalog: Catalog, series_store: str, batch_size: int) -> int:
    """On a worker: encode one chunk's segments and write them into the store. Returns the segment count."""
    plugin = _plugin()
    if task.entry.name not in plugin.values:
        plugin.values[task.entry.name] = SegmentValues(open_reader(task.entry, catalog, series_store,
                                                                         inline_io=True))
    if store_path not in plugin.stores:
        plugin.stores[store_path] = FeatureStore.open_chunk_writer(store_path)
    features = encode_chunk(plugin.teacher, task.segments, plugin.values[task.entry.name], task.sampling_rate,
                            task.max_tokens, batch_size, task.entry.name)
    plugin.stores[store_path].write_chunk(task.entry.name, task.chunk, features)
    return len(task.segments)


def write_chunks_on_workers(client: Client, store: FeatureStore, tasks: list[ChunkTask], catalog: Catalog,
                            series_store: str, batch_size: int, progress: tqdm) -> float:
    """Hand the pending chunks to the workers, a bounded window at a time; returns 0 (writing is the workers')."""
    store_path = str(store.path)
    window = TASKS_PER_WORKER * max(1, sum(client.nthreads().values()))
    todo = iter(tasks)

    def submit(task: ChunkTask):
        key = f"extract-{store.manifest.teacher}-{task.entry.name}-{task.chunk}-{uuid.uuid4().hex[:8]}"
        return client.submit(compute_chunk, store_path, task, catalog, series_store, batch_size, pure=False, key=key)

    running = as_completed([submit(task) for task in islice(todo, window)])
    try:
        for future in running:
            progress.update(future.result())  # a task's error (e.g. TeacherBatchError) stops the run here
            following = next(todo, None)
            if following is not None:
                running.add(submit(following))
    except BaseException:
        client.cancel(list(running.futures))  # chunks already running finish whole (or not at all)
        raise
    return 0.0
