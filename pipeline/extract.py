"""Stage one: stream every segment of the catalog's data sets through one teacher into its feature store.

The data path, per data set (one store group):
  reader (one series at a time) -> segments -> store chunks still pending (resume) -> for each chunk:
  reader thread (reads chunk c+1's series) -> batches of equal-length segments -> teacher.encode -> one
  (chunk_segments, max_tokens, feature) array -> bounded queue -> writer thread -> FeatureStore.write_chunk
  (features, statistics, then the done flag).
The teacher computes chunk c while the reader thread reads chunk c+1 and the writer compresses and writes chunk
c-1, so reading and writing overlap compute; the layouts of the groups new to the store are written by the writer
thread too, all in one batch ahead of the first chunk. Each zarr call costs a handoff to zarr's event-loop thread,
so both threads make few (see FeatureStore.ensure_groups / write_chunk). Memory is bounded by (queue_size + 3)
chunks whatever the corpus size. A chunk is written whole or not at all, so a killed run resumes at the first chunk
not flagged done and ends with the same store as an unbroken run.

A store chunk is also the unit of distribution: with --workers/--scheduler, pipeline/cluster.py hands each pending
chunk to a Dask worker, which runs the same encode_chunk (pipeline/chunk_encoding.py) and writes the chunk itself.
"""

import logging
import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from data_catalog.catalog import open_readers
from data_catalog.readers import SeriesReader
from data_catalog.segments import Segment, segment_series
from pipeline.chunk_encoding import (  # known_lengths, SegmentValues, TeacherBatchError: also imported from here
    ChunkTask,
    SegmentValues,
    TeacherBatchError,
    encode_chunk,
    known_lengths,
    teacher_layout,
)
from pipeline.feature_store import FeatureStore, store_location
from pipeline.teachers import load_teacher
from pipeline.teachers.base import TeacherAdapter
from schemas.catalog import Catalog, CatalogEntry
from schemas.manifest import FeatureStoreManifest
from schemas.params import Params
from schemas.teachers import TeacherSpec

log = logging.getLogger(__name__)


class ExtractionIOError(RuntimeError):
    """Reading or writing failed with an OS error (disk full, permissions); names the store and the file."""


@dataclass(frozen=True)
class GroupLayout:
    """One data set's group as FeatureStore.ensure_groups lays it out (or checks it)."""

    name: str
    segment_ids: list[str]
    n_tokens: np.ndarray  # (segment,) valid tokens of each
    token_rate: float
    sampling_rate: float | None


def lay_out(store: FeatureStore, layouts: list[GroupLayout]) -> None:
    """Lay out (or check) these groups with one batched FeatureStore.ensure_groups: a few zarr calls in all."""
    if layouts:
        store.ensure_groups([(g.name, g.segment_ids, g.n_tokens, g.token_rate, g.sampling_rate) for g in layouts])


@dataclass
class WriterThread:
    """Writes finished chunks in the background; re-raises the writer's error in the main thread.

    The groups in `new_groups` are laid out by this thread first, all in one batch (lay_out), behind the first
    chunk's compute; so a stopped run (it failed, say) leaves every group laid out. A run killed during the
    layout resumes like any other (ensure_groups redoes a layout cut short).
    """

    store: FeatureStore
    queue_size: int
    new_groups: list[GroupLayout] = field(default_factory=list)

    def __post_init__(self):
        self.queue: queue.Queue = queue.Queue(maxsize=self.queue_size)
        self.error: BaseException | None = None
        self.seconds_writing = 0.0
        self.thread = threading.Thread(target=self._run, name="feature-store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            start = time.perf_counter()
            lay_out(self.store, self.new_groups)
            self.seconds_writing += time.perf_counter() - start
        except BaseException as exc:  # surfaced by put()/close() in the main thread
            self.error = exc
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    start = time.perf_counter()
                    self.store.write_chunk(*item)
                    self.seconds_writing += time.perf_counter() - start
                except BaseException as exc:  # surfaced by put()/close() in the main thread
                    self.error = exc

    def put(self, group: str, chunk: int, features: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((group, chunk, features))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


@dataclass
class DatasetSegments:
    """A data set cut into segments: what the driver knows before any teacher runs."""

    entry: CatalogEntry
    reader: SeriesReader
    segments: list[Segment]
    sampling_rate: float | None  # None: unknown (the catalog says so); teachers take the samples as they are


def segment_datasets(entries: list[CatalogEntry], catalog: Catalog, series_store: str,
                     max_samples: int) -> list[DatasetSegments]:
    """Open each data set's reader and cut its series into segments (ids and lengths only, no values)."""
    datasets = []
    for entry, reader in zip(entries, open_readers(entries, catalog, series_store, inline_io=True)):
        segments = segment_series(reader.ids, known_lengths(reader), max_samples)
        if entry.rate_unknown:
            rate = None
        else:
            rate = float(reader[0].sampling_rate) if entry.sampling_rate is None else entry.sampling_rate
        datasets.append(DatasetSegments(entry, reader, segments, rate))
    return datasets


def plan_chunks(store: FeatureStore, datasets: list[DatasetSegments],
                layouts: dict) -> tuple[list[ChunkTask], list[GroupLayout]]:
    """The chunks still to compute, and the layouts of the groups new to the store (for the caller to write).

    A group the store already has is checked against the request here (a mismatch is refused before any teacher
    runs) and gives its pending chunks. A group new to it has every chunk pending; its request is checked here
    too, but its layout is left to the caller, who can write it behind compute (all new groups in one batch).
    """
    tasks, new_groups, existing = [], [], []
    chunk_segments = store.manifest.compression.chunk_segments
    for dataset in datasets:
        tokens_of_length, token_rate = layouts[dataset.entry.name]
        n_tokens = np.array([tokens_of_length[s.length] for s in dataset.segments])
        layout = GroupLayout(dataset.entry.name, [s.id for s in dataset.segments], n_tokens, token_rate,
                             dataset.sampling_rate)
        if layout.name in store.manifest.groups:
            existing.append(layout)
        else:  # never laid out whole, so no chunk of it was written (ensure_groups records a group last)
            store.check_group_request(layout.name, layout.segment_ids, n_tokens, token_rate, layout.sampling_rate)
            new_groups.append(layout)
    lay_out(store, existing)  # checks them: a mismatch is refused here
    pending = store.pending_chunks_of([layout.name for layout in existing])
    for dataset in datasets:
        name = dataset.entry.name
        max_tokens = max(layouts[name][0][s.length] for s in dataset.segments)
        chunks = pending[name] if name in pending else range(math.ceil(len(dataset.segments) / chunk_segments))
        for chunk in chunks:
            rows = slice(chunk * chunk_segments, (chunk + 1) * chunk_segments)  # the last chunk may be shorter
            tasks.append(ChunkTask(dataset.entry, chunk, dataset.segments[rows], dataset.sampling_rate, max_tokens))
    return tasks, new_groups


def write_chunks_here(teacher: TeacherAdapter, store: FeatureStore, new_groups: list[GroupLayout],
                      tasks: list[ChunkTask], datasets: list[DatasetSegments], batch_size: int, queue_size: int,
                      progress: tqdm) -> float:
    """Compute the chunks in this process: each chunk's series read ahead by a reader thread, the new groups'
    layouts and the chunks written behind a bounded queue by a writer thread. Returns seconds spent writing."""
    values_of = {d.entry.name: SegmentValues(d.reader) for d in datasets}
    writer = WriterThread(store, queue_size, new_groups)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="series-reader") as reader:

            def read(task: ChunkTask):
                return reader.submit(values_of[task.entry.name].read, task.segments)

            upcoming = read(tasks[0]) if tasks else None
            for index, task in enumerate(tasks):
                read_ahead = upcoming.result()  # a read error (DataError, OSError) surfaces here, for this chunk
                upcoming = read(tasks[index + 1]) if index + 1 < len(tasks) else None
                features = encode_chunk(teacher, task.segments, values_of[task.entry.name], task.sampling_rate,
                                        task.max_tokens, batch_size, task.entry.name, read_ahead)
                writer.put(task.entry.name, task.chunk, features)
                progress.update(len(task.segments))
    finally:
        writer.close()
    return writer.seconds_writing


def fitted_on_corpus(name: str, spec: TeacherSpec, catalog: Catalog, params: Params) -> TeacherSpec:
    """The spec with its data-fitted constants filled in: MiniRocket's biases, from a fixed sample of the catalog's
    pretraining corpus (`pipeline.minirocket.corpus_sample`), before any store is written (other kinds are returned
    as they are).

    The same corpus always gives the same biases, so a resumed or repeated extraction matches its store, and a
    store fitted on another corpus is refused (the biases' hash is in its manifest).
    """
    if spec.kind != "minirocket" or spec.biases is not None:
        return spec
    from pipeline.minirocket import corpus_sample, fit_corpus_biases

    started = time.perf_counter()
    sample = corpus_sample(catalog, params.prepare.series_store, params.segments.max_samples, spec.fit_series,
                           f"teacher {name!r}'s MiniRocket biases")
    biases = fit_corpus_biases(spec, sample)
    log.info("%s: MiniRocket biases fitted on %d corpus segments in %.1f s", name, len(sample),
             time.perf_counter() - started)
    return spec.model_copy(update={"biases": biases})


def extract(name: str, params: Params, catalog: Catalog, entries: list[CatalogEntry], overwrite: bool = False,
            device: str | None = None, batch_size: int | None = None, scheduler: str | None = None,
            workers: int | None = None) -> FeatureStoreManifest:
    """Extract teacher `name` over `entries` into <store_dir>/<name>.zarr; resumes, refuses foreign stores.

    By default everything runs in this process. With `scheduler` (a dask.distributed address) or `workers`
    (a LocalCluster of that many processes) the chunks are computed and written by Dask workers, each
    loading the teacher once; this process lays out the store, holds its lock and finalizes it. Both give
    the same store.
    """
    spec = params.extract.teachers[name]
    runtime = {k: v for k, v in {"device": device, "batch_size": batch_size}.items() if v is not None}
    spec = fitted_on_corpus(name, spec.model_copy(update=runtime), catalog, params)
    path = store_location(params.extract.store_dir, name)
    datasets = segment_datasets(entries, catalog, params.prepare.series_store, params.segments.max_samples)
    requests = [(d.entry.name, d.sampling_rate, sorted({s.length for s in d.segments})) for d in datasets]
    started = time.perf_counter()

    if scheduler is None and workers is None:
        teacher = load_teacher(name, spec)
        manifest, layouts = teacher_layout(teacher, name, params, requests)

        def write_chunks(store, new_groups, tasks, progress):
            return write_chunks_here(teacher, store, new_groups, tasks, datasets, spec.batch_size,
                                     params.extract.queue_size, progress)

        return _extract_into(path, manifest, layouts, datasets, params, overwrite, write_chunks, started)

    from pipeline import cluster  # dask.distributed is imported only when asked for

    with cluster.dask_client(scheduler, workers) as client:
        manifest, layouts = cluster.load_teacher_on_workers(client, name, spec, params, requests)

        def write_chunks(store, new_groups, tasks, progress):
            lay_out(store, new_groups)  # laid out before any worker opens the store
            return cluster.write_chunks_on_workers(client, store, tasks, catalog, params.prepare.series_store,
                                                   spec.batch_size, progress)

        return _extract_into(path, manifest, layouts, datasets, params, overwrite, write_chunks, started)


def _extract_into(path: str, manifest: FeatureStoreManifest, layouts: dict, datasets: list[DatasetSegments],
                  params: Params, overwrite: bool, write_chunks, started: float) -> FeatureStoreManifest:
    """Open (or resume) the store, compute its pending chunks with `write_chunks`, finalize."""
    try:
        with FeatureStore.create_or_open(path, manifest, params.extract.compression, overwrite=overwrite) as store:
            tasks, new_groups = plan_chunks(store, datasets, layouts)
            total = sum(len(task.segments) for task in tasks)
            with tqdm(total=total, desc=f"extract {manifest.teacher}", unit="seg", dynamic_ncols=True) as progress:
                seconds_writing = write_chunks(store, new_groups, tasks, progress)
            final = store.finalize()
    except OSError as exc:  # disk full, no permission, a lost mount: say where, and that nothing done is lost
        if isinstance(exc, FileNotFoundError):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        raise ExtractionIOError(
            f"extracting {manifest.teacher} into {path} failed: {exc.strerror or exc}{where}. The chunks already "
            "marked done are kept: free space or fix permissions, then rerun `step-pipeline extract` to resume."
        ) from exc
    log.info("%s: %d segments in %.1f s (writing %.1f s) -> %s", manifest.teacher, total,
             time.perf_counter() - started, seconds_writing, path)
    return final
