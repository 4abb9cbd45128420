"""Stage one: stream every segment of the catalog's data sets through one teacher into its feature store.

The data path, per data set (one store group):
  reader (one series at a time) -> segments -> store chunks still pending (resume) -> for each chunk:
  batches of equal-length segments -> teacher.encode -> one (chunk_segments, max_tokens, feature) array
  -> bounded queue -> writer thread -> FeatureStore.write_chunk (features, statistics, then the done flag).
The teacher computes chunk c+1 while the writer compresses and writes chunk c, so writing hides behind compute;
memory is bounded by (queue_size + 2) chunks whatever the corpus size. A chunk is written whole or not at all,
so a killed run resumes at the first chunk not flagged done and ends with the same store as an unbroken run.
"""

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import pipeline
from data_catalog.catalog import open_reader
from data_catalog.readers import DataError, SeriesReader
from data_catalog.segments import Segment, segment_series
from pipeline.feature_store import FeatureStore
from pipeline.teachers import load_teacher
from pipeline.teachers.base import TeacherAdapter
from schemas.catalog import Catalog, CatalogEntry
from schemas.manifest import FeatureStoreManifest
from schemas.params import Params

log = logging.getLogger(__name__)


class TeacherBatchError(RuntimeError):
    """The teacher failed on a batch even at batch size 1; names the data set and segments."""


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


def lay_out_groups(store: FeatureStore, teacher: TeacherAdapter, entries: list[CatalogEntry], catalog: Catalog,
                 series_store: str, max_samples: int) -> Iterator[tuple[CatalogEntry, SeriesReader, list[Segment]]]:
    """Lay out every group in the store (segments, token counts) and yield each data set with its segments."""
    for entry in entries:
        reader = open_reader(entry, catalog, series_store)
        segments = segment_series(reader.ids, known_lengths(reader), max_samples)
        rate = float(reader[0].sampling_rate) if entry.sampling_rate is None else entry.sampling_rate
        n_tokens = np.array([teacher.num_tokens(s.length, rate) for s in segments])
        token_rates = {teacher.token_rate(rate, length) for length in {s.length for s in segments}}
        if len(token_rates) > 1:  # a teacher that decimates by a length-dependent factor, on mixed lengths
            raise DataError(
                f"data set {entry.name!r}: teacher {teacher.name!r} gives its segments different token rates "
                f"{sorted(token_rates)} (lengths {min(s.length for s in segments)}..{max(s.length for s in segments)}"
                f" are decimated differently); one store group needs one token grid: disable the teacher's "
                "decimation (e.g. fracast max_steps: null) or cut the series to one length"
            )
        store.ensure_group(entry.name, [s.id for s in segments], n_tokens, token_rates.pop(), rate)
        yield entry, reader, segments


def extract(name: str, params: Params, catalog: Catalog, entries: list[CatalogEntry], overwrite: bool = False,
            device: str | None = None, batch_size: int | None = None) -> FeatureStoreManifest:
    """Extract teacher `name` over `entries` into <store_dir>/<name>.zarr; resumes, refuses foreign stores."""
    spec = params.extract.teachers[name]
    runtime = {k: v for k, v in {"device": device, "batch_size": batch_size}.items() if v is not None}
    spec = spec.model_copy(update=runtime)
    teacher = load_teacher(name, spec)
    path = Path(params.extract.store_dir) / f"{name}.zarr"
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = store_manifest(name, teacher, params)
    started = time.perf_counter()
    with FeatureStore.create_or_open(path, manifest, params.extract.compression, overwrite=overwrite) as store:
        work = list(lay_out_groups(store, teacher, entries, catalog, params.prepare.series_store,
                                 params.segments.max_samples))
        todo = {entry.name: store.pending_chunks(entry.name) for entry, _, _ in work}
        slices = [store.chunk_slice(group, chunk) for group, chunks in todo.items() for chunk in chunks]
        total = sum(rows.stop - rows.start for rows in slices)
        writer = WriterThread(store, params.extract.queue_size)
        try:
            with tqdm(total=total, desc=f"extract {name}", unit="seg", dynamic_ncols=True) as progress:
                for entry, reader, segments in work:
                    values_of = SegmentValues(reader)
                    rate = store.manifest.groups[entry.name].sampling_rate
                    max_tokens = store.manifest.groups[entry.name].max_tokens
                    for chunk in todo[entry.name]:
                        rows = store.chunk_slice(entry.name, chunk)
                        features = encode_chunk(teacher, segments[rows], values_of, rate, max_tokens,
                                                spec.batch_size, entry.name)
                        writer.put(entry.name, chunk, features)
                        progress.update(rows.stop - rows.start)
        finally:
            writer.close()
        final = store.finalize()
    log.info("%s: %d segments in %.1f s (writer busy %.1f s) -> %s", name, total,
             time.perf_counter() - started, writer.seconds_writing, path)
    return final
