"""Segments: the unit teachers and the student see. Long series are cut into near-equal consecutive pieces.

Both stages derive the same segments from (series ids, lengths, max_samples), so the feature stores' segment ids
always match the series the distillation reads.
"""

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    id: str            # the series id, or "series_id@start" when the series was cut
    series_index: int  # row of the series in its reader
    start: int         # first sample (inclusive)
    stop: int          # last sample (exclusive)

    @property
    def length(self) -> int:
        return self.stop - self.start


def segment_series(ids: list[str], lengths: np.ndarray, max_samples: int) -> list[Segment]:
    """Cut every series longer than `max_samples` into ceil(length / max_samples) near-equal pieces.

    Near-equal rather than fixed-size-plus-remainder so that no piece is a sliver of a few samples.
    """
    segments = []
    for index, (series_id, length) in enumerate(zip(ids, lengths)):
        length = int(length)
        if length < 1:
            raise ValueError(f"series {series_id!r}: length {length} is unknown or empty")
        pieces = math.ceil(length / max_samples)
        if pieces == 1:
            segments.append(Segment(series_id, index, 0, length))
            continue
        bounds = np.linspace(0, length, pieces + 1).round().astype(int)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            segments.append(Segment(f"{series_id}@{start}", index, int(start), int(stop)))
    return segments
