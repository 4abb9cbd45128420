"""Encoding one store chunk with a teacher: what a single process (pipeline/extract.py) and a Dask worker
(pipeline/cluster.py) both run, so that both import it and neither imports the other.

A chunk's segments are read (one contiguous read per chunk where the reader can), grouped by exact length into
batches, encoded, and laid into one (chunk_segments, max_tokens, feature) array, NaN beyond each segment's tokens.
"""

import logging
from dataclasses import dataclass

import numpy as np

import pipeline
from data_catalog.readers import DataError, SeriesReader
from data_catalog.segments import Segment
from pipeline.teachers.base import TeacherAdapter
from schemas.catalog import CatalogEntry
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

    def read(self, segments: list[Segment]) -> dict[int, np.ndarray]:
        """{series index: values} of the series behind `segments`, with one contiguous read where the reader can;
        {} where it cannot (each series is then read when first asked for). Touches no state of this object, so
        a reader thread can read the next chunk while this one is encoded."""
        if not hasattr(self.reader, "read_block"):
            return {}
        first, last = segments[0].series_index, segments[-1].series_index
        return {first + k: s.values for k, s in enumerate(self.reader.read_block(range(first, last + 1)))}

    def preload(self, segments: list[Segment], values: dict[int, np.ndarray] | None = None) -> None:
        """Make the series behind `segments` ready: `values` from an earlier read(segments), else read now."""
        self._cache = self.read(segments) if values is None else values

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
                 max_tokens: int, batch_size: int, dataset: str,
                 read_ahead: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """(len(segments), max_tokens, feature) float32, NaN beyond each segment's tokens.

    Segments are grouped by exact length, so a batch never pads (the long set has one odd-length last piece).
    read_ahead: values_of.read(segments), done beforehand (in a reader thread); else they are read here.
    """
    out = np.full((len(segments), max_tokens, teacher.feature_dim), np.nan, dtype=np.float32)
    values_of.preload(segments, read_ahead)
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


@dataclass(frozen=True)
class ChunkTask:
    """One store chunk to compute: the unit of work, of resume and of distribution over workers."""

    entry: CatalogEntry
    chunk: int
    segments: list[Segment]
    sampling_rate: float | None
    max_tokens: int


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
