"""Stage one: stream every segment of the catalog's data sets through one teacher into its feature store.

The data path, per data set (one store group):
  reader (one series at a time) -> segments -> store chunks still pending (resume) -> for each chunk:
  batches of equal-length segments -> teacher.encode -> one (chunk_segments, max_tokens, feature) array
  -> bounded queue -> writer thread -> FeatureStore.write_chunk (features, statistics, then the done flag).
The teacher computes chunk c+1 while the writer compresses and writes chunk c, so writing hides behind compute;
memory is bounded by (queue_size + 2) chunks whatever the corpus size. A chunk is written whole or not at all,
so a killed run resumes at the first chunk not flagged done and ends with the same store as an unbroken run.

A store chunk is also the unit of distribution: with --workers/--scheduler, pipeline/cluster.py hands each pending
chunk to a Dask worker, which runs the same encode_chunk and writes the chunk itself.
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

import pipeline
from data_catalog.catalog import open_reader
from data_catalog.readers import DataError, SeriesReader
from data_catalog.segments import Segment, segment_series
from pipeline.feature_store import FeatureStore, store_location
from pipeline.teachers import load_teacher
from pipeline.teachers.base import TeacherAdapter
from schemas.catalog import Catalog, CatalogEntry
from schemas.manifest import FeatureStoreManifest
from schemas.params import Params

log = logging.getLogger(__name__)


class TeacherBatchError(RuntimeError):
    """The teacher failed on a batch even at batch size 1; names the data set and segments."""


class ExtractionIOError(RuntimeError):
    """Reading or writing failed with an OS error (disk full, permissions); names the store and the file."""


def known_lengths(reader: SeriesReader) -> np.ndarray:
    """Series lengths; formats whose header does not say (csv, wav...) are read once to find out."""
    lengths = reader.lengths.copy()
    for i in np.flatnonzero(lengths < 0):
        lengths[i] = reader[int(i)].length
    return lengths


def store_manifest(name: str, teacher: TeacherAdapter, params: Params) -> FeatureStoreManifest:
    """What the store must have been made with; a store with other identity fields is refused."""
    spec = params.extract.teachers[name]
    described = teacher.describe()
    return FeatureStoreManifest(
        teacher=name,
        kind=spec.kind,
        model_id=str(described.get("model_id", spec.kind)),
        revision=described.get("revision"),
        weights_sha256=described.get("weights_sha256"),
        layer=described.get("layer"),
        native_rate=teacher.native_rate,
        feature_dim=teacher.feature_dim,
        config=spec.feature_config(),
        segment=params.segments.model_dump(),
        package_version=pipeline.__version__,
    )


class SegmentValues:
    """Values of segments, reading each series once even when it was cut into many segments.

    `preload` reads the series behind a chunk of segments with one contiguous read where the reader can
    (the series store: one Zarr read per chunk instead of one per series, ~5x less overhead).
    """

    def __init__(self, reader: SeriesReader):
        self.reader = reader
        self._cache: dict[int, np.ndarray] = {}

    def preload(self, segments: list[Segment]) -> None:
        first, last = segments[0].series_index, segments[-1].series_index
        if hasattr(self.reader, "read_block"):
            self._cache = {first + k: s.values for k, s in enumerate(self.reader.read_block(range(first, last + 1)))}
        else:
            self._cache = {}

    def __call__(self, segment: Segment) -> np.ndarray:
        if segment.series_index not in self._cache:
            self._cache = {segment.series_index: self.reader[segment.series_index].values}
        return self._cache[segment.series_index][:, segment.start : segment.stop]


def encode_with_retry(teacher: TeacherAdapter, values: list[np.ndarray], rate: float, ids: list[str],
                      dataset: str) -> list[np.ndarray]:
    """Encode equal-length segments; on failure (e.g. out of memory) halve the batch, down to one segment."""
    try:
        features = teacher.encode(np.stack(values), rate)
    except Exception as exc:  # any teacher failure: retry smaller, then name the segments
        if len(values) == 1:
            raise TeacherBatchError(
                f"teacher {teacher.name!r} failed on data set {dataset!r}, segment {ids[0]!r}: {exc}"
            ) from exc
        half = len(values) // 2
        log.warning("teacher %s failed on a batch of %d (%s); retrying as two halves", teacher.name,
                    len(values), exc)
        return (encode_with_retry(teacher, values[:half], rate, ids[:half], dataset)
                + encode_with_retry(teacher, values[half:], rate, ids[half:], dataset))
    if not np.isfinite(features).all():
        raise TeacherBatchError(f"teacher {teacher.name!r} returned non-finite features for data set "
                                f"{dataset!r}, segments {ids[0]!r}..{ids[-1]!r}")
    return list(features)


def encode_chunk(teacher: TeacherAdapter, segments: list[Segment], values_of: SegmentValues, rate: float,
                 max_tokens: int, batch_size: int, dataset: str) -> np.ndarray:
    """(len(segments), max_tokens, feature) float32, NaN beyond each segment's tokens.

    Segments are grouped by exact length, so a batch never pads (the long set has one odd-length last piece).
    """
    out = np.full((len(segments), max_tokens, teacher.feature_dim), np.nan, dtype=np.float32)
    values_of.preload(segments)
    by_length: dict[int, list[int]] = {}
    for row, segment in enumerate(segments):
        by_length.setdefault(segment.length, []).append(row)
    for rows in by_length.values():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            values = [values_of(segments[row]) for row in batch]
            features = encode_with_retry(teacher, values, rate, [segments[r].id for r in batch], dataset)
            for row, tokens in zip(batch, features):
                out[row, : tokens.shape[0]] = tokens
    return out


@dataclass
class WriterThread:
    """Writes finished chunks in the background; re-raises the writer's error in the main thread."""

    store: FeatureStore
    queue_size: int

    def __post_init__(self):
        self.queue: queue.Queue = queue.Queue(maxsize=self.queue_size)
        self.error: BaseException | None = None
        self.seconds_writing = 0.0
        self.thread = threading.Thread(target=self._run, name="feature-store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
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


@dataclass(frozen=True)
class ChunkTask:
    """One store chunk to compute: the unit of work, of resume and of distribution over workers."""

    entry: CatalogEntry
    chunk: int
    segments: list[Segment]
    sampling_rate: float | None
    max_tokens: int


def segment_datasets(entries: list[CatalogEntry], catalog: Catalog, series_store: str,
                     max_samples: int) -> list[DatasetSegments]:
    """Open each data set's reader and cut its series into segments (ids and lengths only, no values)."""
    datasets = []
    for entry in entries:
        reader = open_reader(entry, catalog, series_store)
        segments = segment_series(reader.ids, known_lengths(reader), max_samples)
        if entry.rate_unknown:
            rate = None
        else:
            rate = float(reader[0].sampling_rate) if entry.sampling_rate is None else entry.sampling_rate
        datasets.append(DatasetSegments(entry, reader, segments, rate))
    return datasets


def teacher_layout(teacher: TeacherAdapter, name: str, params: Params,
                   requests: list[tuple[str, float, list[int]]]) -> tuple[FeatureStoreManifest, dict]:
    """What only the teacher knows: the store manifest and, per data set, its token grid.

    requests: (data set, sampling rate, distinct segment lengths). Returns (manifest,
    {data set: ({length: n_tokens}, token_rate)}). On a cluster this runs on a worker, so the driver
    never loads the teacher.
    """
    layouts = {}
    for dataset, rate, lengths in requests:
        token_rates = {teacher.token_rate(rate, length) for length in lengths}
        if len(token_rates) > 1:  # a teacher that decimates by a length-dependent factor, on mixed lengths
            raise DataError(
                f"data set {dataset!r}: teacher {teacher.name!r} gives its segments different token rates "
                f"{sorted(token_rates)} (lengths {min(lengths)}..{max(lengths)} are decimated differently); one "
                "store group needs one token grid: disable the teacher's decimation (e.g. fracast max_steps: "
                "null) or cut the series to one length"
            )
        layouts[dataset] = ({length: teacher.num_tokens(length, rate) for length in lengths}, token_rates.pop())
    return store_manifest(name, teacher, params), layouts


def lay_out_groups(store: FeatureStore, datasets: list[DatasetSegments], layouts: dict) -> list[ChunkTask]:
    """Lay out every group in the store (segments, token counts) and list the chunks still to compute."""
    tasks = []
    for dataset in datasets:
        tokens_of_length, token_rate = layouts[dataset.entry.name]
        n_tokens = np.array([tokens_of_length[s.length] for s in dataset.segments])
        store.ensure_group(dataset.entry.name, [s.id for s in dataset.segments], n_tokens, token_rate,
                           dataset.sampling_rate)
        max_tokens = store.manifest.groups[dataset.entry.name].max_tokens
        for chunk in store.pending_chunks(dataset.entry.name):
            rows = store.chunk_slice(dataset.entry.name, chunk)
            tasks.append(ChunkTask(dataset.entry, chunk, dataset.segments[rows], dataset.sampling_rate, max_tokens))
    return tasks


def write_chunks_here(teacher: TeacherAdapter, store: FeatureStore, tasks: list[ChunkTask],
                      datasets: list[DatasetSegments], batch_size: int, queue_size: int,
                      progress: tqdm) -> float:
    """Compute the chunks in this process, writing behind a bounded queue; returns seconds spent writing."""
    values_of = {d.entry.name: SegmentValues(d.reader) for d in datasets}
    writer = WriterThread(store, queue_size)
    try:
        for task in tasks:
            features = encode_chunk(teacher, task.segments, values_of[task.entry.name], task.sampling_rate,
                                    task.max_tokens, batch_size, task.entry.name)
            writer.put(task.entry.name, task.chunk, features)
            progress.update(len(task.segments))
    finally:
        writer.close()
    return writer.seconds_writing


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
    spec = spec.model_copy(update=runtime)
    path = store_location(params.extract.store_dir, name)
    datasets = segment_datasets(entries, catalog, params.prepare.series_store, params.segments.max_samples)
    requests = [(d.entry.name, d.sampling_rate, sorted({s.length for s in d.segments})) for d in datasets]
    started = time.perf_counter()

    if scheduler is None and workers is None:
        teacher = load_teacher(name, spec)
        manifest, layouts = teacher_layout(teacher, name, params, requests)

        def write_chunks(store, tasks, progress):
            return write_chunks_here(teacher, store, tasks, datasets, spec.batch_size, params.extract.queue_size,
                                     progress)

        return _extract_into(path, manifest, layouts, datasets, params, overwrite, write_chunks, started)

    from pipeline import cluster  # dask.distributed is imported only when asked for

    with cluster.dask_client(scheduler, workers) as client:
        manifest, layouts = cluster.load_teacher_on_workers(client, name, spec, params, requests)

        def write_chunks(store, tasks, progress):
            return cluster.write_chunks_on_workers(client, store, tasks, catalog, params.prepare.series_store,
                                                   spec.batch_size, progress)

        return _extract_into(path, manifest, layouts, datasets, params, overwrite, write_chunks, started)


def _extract_into(path: str, manifest: FeatureStoreManifest, layouts: dict, datasets: list[DatasetSegments],
                  params: Params, overwrite: bool, write_chunks, started: float) -> FeatureStoreManifest:
    """Open (or resume) the store, compute its pending chunks with `write_chunks`, finalize."""
    try:
        with FeatureStore.create_or_open(path, manifest, params.extract.compression, overwrite=overwrite) as store:
            tasks = lay_out_groups(store, datasets, layouts)
            total = sum(len(task.segments) for task in tasks)
            with tqdm(total=total, desc=f"extract {manifest.teacher}", unit="seg", dynamic_ncols=True) as progress:
                seconds_writing = write_chunks(store, tasks, progress)
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
