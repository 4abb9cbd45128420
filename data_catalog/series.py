"""The one record every reader yields: a single series with its id, values, sampling rate and metadata."""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Series:
    """One multichannel series.

    `values` is (channels, time) and float32; `sampling_rate` is in Hz (None where a file does not say and the
    catalog does not either). `metadata` carries the label, split and anything the reader knows (source file...).
    """

    id: str
    values: np.ndarray
    sampling_rate: float | None
    metadata: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.values.shape[0]

    @property
    def length(self) -> int:
        return self.values.shape[1]
