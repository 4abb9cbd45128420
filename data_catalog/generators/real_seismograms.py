"""Segments of real seismograms: the example and test records that ship inside the obspy package.

obspy (installed with the project's `readers` and `dev` extras, which `make` installs) bundles recordings of real
stations for its own tests: Etna, Japanese Hi-net (WIN), K-NET, New Zealand (CRLZ), the Bavarian network's RJOB
example (`obspy.read()` with no argument) and others. The 100 Hz ones (17 traces, about 1.5e5 samples, 30 s to
5.5 min each) are read once per process; item i is a segment of log-uniform length at a random position of a
trace drawn in proportion to its length among those long enough, in the digitiser's counts as recorded (offsets
included). Nothing here is a probe series: the probe tasks are generated or UCR sets. Without obspy the generator
says how to install it.
"""

import functools
import warnings
from pathlib import Path

import numpy as np

from data_catalog.generators import GeneratorSpec, random_length

SAMPLING_RATE = 100.0
FILES = (  # relative to the obspy package; every trace at 100 Hz
    "io/dmx/tests/data/131114_090600.dmx",  # Etna stations
    "io/mseed/tests/data/wrong_blockette_numbers_specified.mseed",  # SK.MODS HHZ
    "io/nied/tests/data/test.knet",  # K-NET strong motion
    "io/seisan/tests/data/D1360930.203",
    "io/sh/tests/data/QFILE-TEST-ASC.ASC",  # WET HHZ
    "io/win/tests/data/10030302.00",  # Hi-net WIN
    "io/win/tests/data/1070533011_1701260003.win",
    "io/y/tests/data/YAYT_BHZ_20021223.124800",
    "signal/tests/data/BW.UH4._.EHZ.D.2010.147.cut.slist.gz",
    "signal/tests/data/CRLZ.HHZ.10.NZ.SAC",  # NZ.CRLZ HHZ
)
DEFAULT_OPTIONS = {"min_length": 256, "max_length": 4096, "lengths_per_octave": 2}


@functools.lru_cache(maxsize=1)
def traces() -> tuple[np.ndarray, ...]:
    """Every finite 100 Hz trace of at least 1000 samples in FILES and obspy's example stream (float64)."""
    try:
        import obspy
    except ImportError as exc:
        raise ImportError("generator real_seismograms needs obspy: pip install -e '.[readers]' "
                          "(or leave the real-seismogram entries out of the catalog)") from exc
    root = Path(obspy.__file__).parent
    streams = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        streams.append(obspy.read())  # the RJOB example, 3 components
        for name in FILES:
            if (root / name).exists():
                streams.append(obspy.read(str(root / name)))
    out = []
    for stream in streams:
        for trace in stream:
            data = np.asarray(trace.data, dtype=np.float64)
            if trace.stats.sampling_rate == SAMPLING_RATE and len(data) >= 1000 and np.isfinite(data).all():
                out.append(data)
    if not out:
        raise RuntimeError(f"obspy {obspy.__version__} under {root}: none of the expected test records found")
    return tuple(out)


def make(rng: np.random.Generator, label: int, options: dict) -> np.ndarray:
    """One segment (1, length) in counts; `label` unused. The record is drawn among those at least `length` long
    (so a set's lengths stay in their declared range); beyond the longest record, the longest record capped."""
    records = traces()
    length = random_length(rng, options)
    sizes = np.array([len(r) for r in records], dtype=np.float64)
    weights = np.where(sizes >= length, sizes, 0.0)
    if not weights.any():
        weights = (sizes == sizes.max()).astype(np.float64)
    record = records[rng.choice(len(records), p=weights / weights.sum())]
    length = min(length, len(record))
    start = rng.integers(0, len(record) - length + 1)
    return record[start : start + length][None].astype(np.float32)


SPEC = GeneratorSpec(
    name="real_seismograms",
    description="segments of the real 100 Hz seismograms obspy ships as example and test data, in counts, "
    "unlabelled",
    sampling_rate=SAMPLING_RATE,
    channels=1,
    unit="counts",
    class_names=(),
    default_options=DEFAULT_OPTIONS,
    make=make,
)
