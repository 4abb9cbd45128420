"""Readers: one interface over every source, yielding `Series` one at a time.

A reader knows its series ids and lengths cheaply (file headers, store metadata) and loads values only when a
series is asked for, so memory stays bounded by one series whatever the corpus size. Large files are read
lazily: .npy is memory-mapped, Zarr/HDF5 arrays are sliced.

Files are not trusted: .npy/.npz are read with allow_pickle=False, and a Zarr input is decoded only when its
metadata names plain numeric dtypes and whitelisted codecs (numcodecs' pickle codec would run arbitrary code).
"""

import csv
import glob
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_catalog.series import Series
from data_catalog.zarr_metadata import consolidated_nodes, refused_parts
from schemas.catalog import CatalogEntry, FileSource, GeneratorSource

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A file or series is unusable; the message names it and says what is wrong."""


def check_values(values: np.ndarray, where: str, channels: int | None, non_finite: str = "reject") -> np.ndarray:
    """Validate one series' values and return them as float32 (channels, time)."""
    values = np.asarray(values)
    if values.dtype == object or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise DataError(f"{where}: values have dtype {values.dtype}, expected a real numeric dtype")
    if np.iscomplexobj(values):
        raise DataError(f"{where}: values are complex; store I/Q as two real channels")
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2:
        raise DataError(f"{where}: expected (time,) or (channels, time), got shape {values.shape}")
    if values.shape[1] == 0:
        raise DataError(f"{where}: empty series (0 samples)")
    if channels is not None and values.shape[0] != channels:
        raise DataError(f"{where}: has {values.shape[0]} channels, the catalog declares {channels}")
    original = values
    with np.errstate(over="ignore", invalid="ignore"):
        values = values.astype(np.float32, copy=False)
    bad = ~np.isfinite(values)
    if bad.any():
        overflow = bad & np.isfinite(original) if original.dtype != values.dtype else None
        if overflow is not None and overflow.any():
            raise DataError(
                f"{where}: {int(overflow.sum())} samples beyond float32's range (|x| up to "
                f"{np.abs(original[overflow]).max():.3g}); rescale them (e.g. another unit)"
            )
        if non_finite == "reject":
            raise DataError(
                f"{where}: {int(bad.sum())} non-finite samples (NaN/Inf); set non_finite: interpolate "
                "in the catalog entry to fill them"
            )
        values = _interpolate_non_finite(values, bad, where)
    return values


def _interpolate_non_finite(values: np.ndarray, bad: np.ndarray, where: str) -> np.ndarray:
    values = values.copy()
    time = np.arange(values.shape[1])
    for channel in range(values.shape[0]):
        good = ~bad[channel]
        if not good.any():
            raise DataError(f"{where}: channel {channel} has no finite sample to interpolate from")
        values[channel, ~good] = np.interp(time[~good], time[good], values[channel, good])
    return values


class SeriesReader:
    """Base reader: ids and lengths up front, values on demand. Subclasses implement `_load(i)`."""

    def __init__(self, entry: CatalogEntry, ids: list[str], lengths: list[int], metadata: list[dict]):
        self.entry = entry
        self.ids = ids
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.metadata = metadata

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Series:
        values, rate = self._load(i)
        where = f"data set {self.entry.name!r}, series {self.ids[i]!r}"
        non_finite = getattr(self.entry.source, "non_finite", "reject")
        values = check_values(values, where, self.entry.channels, non_finite)
        if self.entry.rate_unknown:  # declared unknown: kept as None, never replaced by a made-up number
            return Series(self.ids[i], values, None, dict(self.metadata[i]))
        rate = self.entry.sampling_rate if rate is None else rate
        if rate is None or not rate > 0:
            raise DataError(f"{where}: no positive sampling rate (set sampling_rate in the catalog entry, or "
                            "`sampling_rate: unknown` when nobody knows it)")
        return Series(self.ids[i], values, rate, dict(self.metadata[i]))

    def __iter__(self) -> Iterator[Series]:
        for i in range(len(self)):
            yield self[i]

    def _load(self, i: int) -> tuple[np.ndarray, float | None]:
        """Values of series i, and its sampling rate where the file states one (else None)."""
        raise NotImplementedError


def split_of(index: int, count: int, test_fraction: float | None) -> str:
    """Probe split by position: the last `test_fraction` of the series are the test split."""
    if test_fraction is None:
        return ""
    return "test" if index >= round(count * (1 - test_fraction)) else "train"


class GeneratorReader(SeriesReader):
    """Generates series on the fly (used by `prepare`; everything else reads the prepared series store)."""

    def __init__(self, entry: CatalogEntry):
        from data_catalog.generators import GENERATORS

        source: GeneratorSource = entry.source
        self.spec = GENERATORS[source.generator]
        self._cache: tuple[int, np.ndarray, int] | None = None
        count = source.count
        test_fraction = entry.probe.test_fraction if entry.probe else None
        ids = [f"{entry.name}-{i:06d}" for i in range(count)]
        # lengths of generated series are only known once generated; -1 marks "unknown"
        metadata = [{"index": i, "split": split_of(i, count, test_fraction)} for i in range(count)]
        super().__init__(entry, ids, [-1] * count, metadata)

    def generate(self, i: int) -> tuple[np.ndarray, int]:
        from data_catalog.generators import generate

        source: GeneratorSource = self.entry.source
        return generate(source.generator, i, source.seed, source.options)

    def __getitem__(self, i: int) -> Series:
        values, label = self.generate(i)
        where = f"data set {self.entry.name!r}, series {self.ids[i]!r}"
        values = check_values(values, where, self.entry.channels)
        metadata = dict(self.metadata[i], label=int(label))
        return Series(self.ids[i], values, self.entry.sampling_rate, metadata)


class SeriesStoreReader(SeriesReader):
    """Reads one data set (group) of the prepared Zarr series store: ragged series concatenated along `sample`."""

    def __init__(self, entry: CatalogEntry, store_path: str | Path, inline_io: bool = False, opened=None):
        """inline_io: a local store does its file I/O inline in zarr's event loop (what extraction asks for).
        opened: the group as series_groups.open_series_groups gave it (several readers opened at once)."""
        from data_catalog.series_groups import checked_series_group, open_series_groups  # zarr only when read

        if opened is None:
            opened = open_series_groups(store_path, [entry.name], inline_io)[0]
        arrays, small_values = checked_series_group(store_path, entry, opened)
        self.values = arrays["values"]
        self.offsets = small_values["offset"]
        lengths, labels, splits = small_values["length"], small_values["label"], small_values["split"]
        ids = [str(s) for s in small_values["series_id"]]
        metadata = [{"label": int(labels[i]), "split": str(splits[i])} for i in range(len(ids))]
        super().__init__(entry, ids, lengths, metadata)

    def _load(self, i: int) -> tuple[np.ndarray, float | None]:
        start = int(self.offsets[i])
        return self.values[:, start : start + int(self.lengths[i])], None

    def read_block(self, indices: range) -> list[Series]:
        """Several consecutive series with one contiguous read (what the distillation loader uses)."""
        start = int(self.offsets[indices.start])
        stop = int(self.offsets[indices.stop - 1] + self.lengths[indices.stop - 1])
        block = self.values[:, start:stop]
        out = []
        for i in indices:
            a = int(self.offsets[i]) - start
            values = block[:, a : a + int(self.lengths[i])]
            out.append(Series(self.ids[i], values, self.entry.sampling_rate, dict(self.metadata[i])))
        return out


# ---------------------------------------------------------------------------------------------------------------
# File-based sources


def resolve_paths(source: FileSource, data_root: Path, name: str) -> list[Path]:
    """Expand the globs; refuse any path that leaves the data root (a catalog must not read arbitrary files)."""
    root = data_root.resolve()
    paths: list[Path] = []
    for pattern in source.paths:
        full = str(root / pattern)
        matches = sorted(glob.glob(full, recursive=True)) or ([full] if not glob.has_magic(full) else [])
        for match in matches:
            path = Path(match).resolve()
            if not path.is_relative_to(root):
                raise DataError(f"data set {name!r}: path {pattern!r} resolves to {path}, outside data_root {root}")
            if not path.exists():
                raise DataError(f"data set {name!r}: file {path} does not exist")
            paths.append(path)
    if not paths:
        raise DataError(f"data set {name!r}: no file matches {source.paths} under {root}")
    return paths


# What a Zarr input may use. Anything else (object/string/structured dtypes, pickle, JSON or msgpack object codecs,
# unknown codecs) is refused before zarr decodes a byte.
ZARR_INPUT_DATA_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                         "float16", "float32", "float64", "complex64", "complex128"}  # complex: check_values names it
ZARR_INPUT_CODECS = {
    # zarr v3 codec names
    "bytes", "transpose", "blosc", "zstd", "gzip", "crc32c", "sharding_indexed",
    *(f"numcodecs.{name}" for name in ("zlib", "bz2", "lzma", "lz4", "shuffle", "delta", "fixedscaleoffset",
                                       "quantize", "bitround", "packbits", "astype", "crc32", "adler32",
                                       "fletcher32", "jenkins_lookup3")),
    # zarr v2 filter/compressor ids
    "zlib", "bz2", "lzma", "lz4", "shuffle", "delta", "fixedscaleoffset", "quantize", "bitround", "packbits",
    "astype", "crc32", "adler32", "fletcher32", "jenkins_lookup3",
}


def _zarr_array_problems(where: str, node: dict) -> list[str]:
    """Why one node's metadata (zarr v3 zarr.json or v2 .zarray) is refused; [] for groups and good arrays."""
    problems = []
    if node.get("node_type") == "array":  # v3
        data_type_name, codec_names = refused_parts(node, ZARR_INPUT_DATA_TYPES, ZARR_INPUT_CODECS)
        if data_type_name is not None:
            problems.append(f"{where}: data type {data_type_name!r} is not a plain numeric type")
        problems += [f"{where}: codec {codec_name!r} is not allowed" for codec_name in codec_names]
    elif "dtype" in node and node.get("zarr_format") == 2:  # v2
        try:
            dtype = np.dtype(node["dtype"]) if isinstance(node["dtype"], str) else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in "biufc" or dtype.fields:
            problems.append(f"{where}: dtype {node['dtype']!r} is not a plain numeric type")
        for codec in [*(node.get("filters") or []), node.get("compressor")]:
            if codec is not None and (not isinstance(codec, dict) or codec.get("id") not in ZARR_INPUT_CODECS):
                problems.append(f"{where}: codec {codec.get('id') if isinstance(codec, dict) else codec!r} "
                                "is not allowed")
    return problems


def _check_zarr_input(path: Path, key: str | None) -> None:
    """Refuse a Zarr input whose metadata (the node read, its store root, consolidated metadata) is not plainly
    numeric; reads JSON only, so nothing untrusted is decoded. Raises DataError naming the node."""

    def load(file: Path) -> dict:
        try:
            document = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{file}: corrupt Zarr metadata: {exc}") from exc
        if not isinstance(document, dict):
            raise DataError(f"{file}: corrupt Zarr metadata: not a JSON object")
        return document

    nodes: dict[str, dict] = {}
    for folder in dict.fromkeys([path, path / key if key else path]):
        for name in ("zarr.json", ".zarray"):
            if (folder / name).is_file():
                nodes[str(folder / name)] = load(folder / name)
    if (path / ".zmetadata").is_file():  # v2 consolidated metadata: what zarr may read instead of .zarray files
        for inner, node in (load(path / ".zmetadata").get("metadata") or {}).items():
            if isinstance(node, dict):
                nodes[f"{path / '.zmetadata'}[{inner}]"] = node
    root = str(path / "zarr.json")
    nodes |= {f"{root}[{inner}]": node for inner, node in consolidated_nodes(nodes.get(root, {}))}  # v3 consolidated
    problems = [problem for where, node in nodes.items() for problem in _zarr_array_problems(where, node)]
    if problems:
        raise DataError(f"{path}: refusing to read this Zarr input: " + "; ".join(problems))


def _format_of(path: Path, source: FileSource) -> str:
    if source.format:
        return source.format
    suffix = path.suffix.lower().lstrip(".")
    return {"h5": "hdf5", "hdf": "hdf5", "miniseed": "mseed", "mseed": "mseed"}.get(suffix, suffix)


def _open_array(path: Path, fmt: str, key: str | None):
    """A lazily sliceable array-like for array formats (npy memory-mapped, npz member, Zarr, HDF5)."""
    try:
        if fmt == "npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if fmt == "npz":
            archive = np.load(path, allow_pickle=False)
            if key is None:
                if len(archive.files) != 1:
                    raise DataError(f"{path}: holds arrays {archive.files}; set `key` in the catalog entry")
                key = archive.files[0]
            return archive[key]
        if fmt == "zarr":
            import zarr

            _check_zarr_input(path, key)
            node = zarr.open(str(path), mode="r")
            array = node if key is None else node[key]
            if array.dtype == object:
                raise DataError(f"{path}: array {key!r} has object dtype, which is refused")
            return array
        if fmt == "hdf5":
            import h5py

            file = h5py.File(path, "r")
            if key is None:
                names = list(file.keys())
                if len(names) != 1:
                    raise DataError(f"{path}: holds datasets {names}; set `key` in the catalog entry")
                key = names[0]
            return file[key]
    except DataError:
        raise
    except ImportError as exc:
        raise DataError(f"{path}: reading {fmt} needs an optional package ({exc.name}); pip install "
                        "'step-pipeline[readers]'") from exc
    except Exception as exc:  # corrupt or truncated files surface as many exception types
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from exc
    raise DataError(f"{path}: unsupported format {fmt!r}")


def _read_whole(path: Path, fmt: str) -> tuple[np.ndarray, float | None]:
    """Formats read one whole series per file: csv, wav/flac, edf, mseed. Returns (channels, time), rate."""
    try:
        if fmt == "csv":
            values = np.genfromtxt(path, delimiter=",", dtype=np.float64, skip_header=_csv_header_lines(path))
            return np.atleast_2d(values.T if values.ndim == 2 else values), None
        if fmt in ("wav", "flac"):
            import soundfile

            if fmt == "wav":
                _check_wav_complete(path)
            values, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            return values.T, float(rate)
        if fmt == "edf":
            import pyedflib

            with pyedflib.EdfReader(str(path)) as edf:
                rates = {edf.getSampleFrequency(i) for i in range(edf.signals_in_file)}
                if len(rates) != 1:
                    raise DataError(f"{path}: EDF channels have different rates {sorted(rates)}")
                values = np.stack([edf.readSignal(i) for i in range(edf.signals_in_file)])
                return values, float(rates.pop())
        if fmt == "mseed":
            import obspy

            stream = obspy.read(str(path))
            length = min(len(trace.data) for trace in stream)
            return np.stack([trace.data[:length] for trace in stream]), float(stream[0].stats.sampling_rate)
    except DataError:
        raise
    except ImportError as exc:
        raise DataError(f"{path}: reading {fmt} needs an optional package ({exc.name}); pip install "
                        "'step-pipeline[readers]'") from exc
    except Exception as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from exc
    raise DataError(f"{path}: unsupported format {fmt!r}")


def _check_wav_complete(path: Path) -> None:
    """Refuse a RIFF/WAVE file whose data chunk declares more bytes than the file holds: libsndfile would
    silently return the samples that are there, a shorter series than was recorded."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return  # not RIFF/WAVE (RF64, garbage...): libsndfile decides
        position = 12
        while position + 8 <= size:
            handle.seek(position)
            chunk_id, declared = handle.read(4), int.from_bytes(handle.read(4), "little")
            if chunk_id == b"data":
                present = size - position - 8
                if declared not in (0, 0xFFFFFFFF) and declared > present:  # 0 / -1: streamed, length unknown
                    raise DataError(f"{path}: truncated WAV file: its data chunk declares {declared} bytes, "
                                    f"{present} are present")
                return
            position += 8 + declared + (declared & 1)


def _csv_header_lines(path: Path) -> int:
    with open(path, newline="") as handle:
        first = handle.readline()
    try:
        [float(cell) for cell in first.strip().split(",")]
        return 0
    except ValueError:
        return 1


def _read_labels(path: Path, class_names: list[str] | None) -> dict[str, dict]:
    """series_id -> {label, split}; every label an integer class index (below len(class_names) when given)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read labels file: {exc}") from exc
    if not rows or "series_id" not in rows[0] or "label" not in rows[0]:
        raise DataError(f"{path}: labels file needs columns series_id,label[,split]")
    labels = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            label = int(row["label"])
        except (TypeError, ValueError):
            raise DataError(f"{path}: line {line}: label {row['label']!r} of series {row['series_id']!r} is not "
                            "an integer class index") from None
        if label < 0 or (class_names is not None and label >= len(class_names)):
            raise DataError(f"{path}: line {line}: label {label} of series {row['series_id']!r} is not a class "
                            f"index 0..{len(class_names) - 1 if class_names else '?'} of {class_names}")
        if row.get("split") not in (None, "", "train", "test"):
            raise DataError(f"{path}: line {line}: split {row['split']!r} of series {row['series_id']!r} is not "
                            "train, test or empty")
        labels[row["series_id"]] = {"label": label, "split": row.get("split") or ""}
    return labels


class FileReader(SeriesReader):
    """Series read in place from files; ids are file stems (plus `:k` for the k-th series of a stacked array)."""

    def __init__(self, entry: CatalogEntry, data_root: Path):
        source: FileSource = entry.source
        # (path, format, key, index in a stack or slice of a ragged concatenation)
        self.items: list[tuple[Path, str, str | None, int | slice | None]] = []
        self._ragged_open: tuple = (None, None)  # ((path, key), array) of the ragged array read last
        ids, lengths = [], []
        metadata: list[dict] = []
        for path in resolve_paths(source, data_root, entry.name):
            fmt = _format_of(path, source)
            if source.ragged:
                self._add_ragged(path, fmt, entry, ids, lengths, metadata)
            elif fmt in ("npy", "npz", "zarr", "hdf5"):
                keys = [source.key]
                if fmt == "npz" and source.key is None and not source.stacked:
                    try:
                        keys = list(np.load(path, allow_pickle=False).files)
                    except Exception as exc:
                        raise DataError(f"{path}: cannot read as npz: {exc}") from exc
                for key in keys:
                    array = _open_array(path, fmt, key)
                    stem = path.stem if key is None or len(keys) == 1 else f"{path.stem}:{key}"
                    if source.stacked:
                        if array.ndim not in (2, 3):
                            raise DataError(f"{path}: stacked array must be (series, [channels,] time), "
                                            f"got shape {array.shape}")
                        for k in range(array.shape[0]):
                            self.items.append((path, fmt, key, k))
                            ids.append(f"{stem}:{k}")
                            lengths.append(array.shape[-1])
                    else:
                        self.items.append((path, fmt, key, None))
                        ids.append(stem)
                        lengths.append(array.shape[-1])
            else:
                self.items.append((path, fmt, None, None))
                ids.append(path.stem)
                lengths.append(-1)  # known once read
        metadata += [{"source_file": str(item[0])} for item in self.items[len(metadata):]]
        if source.labels_file:
            labels = _read_labels(resolve_paths(FileSource(paths=[source.labels_file]), data_root, entry.name)[0],
                                  entry.probe.class_names if entry.probe else None)
            for series_id, meta in zip(ids, metadata):
                if series_id not in labels:
                    raise DataError(f"data set {entry.name!r}: series {series_id!r} has no row in {source.labels_file}")
                meta.update(labels[series_id])
        elif entry.role == "probe" and not source.ragged:
            raise DataError(f"data set {entry.name!r} is a probe task but its source has no labels_file")
        if entry.probe is not None:  # files without a split column: the last test_fraction are the test split
            for i, meta in enumerate(metadata):
                meta["split"] = meta.get("split") or split_of(i, len(ids), entry.probe.test_fraction)
        super().__init__(entry, ids, lengths, metadata)

    def _add_ragged(self, path: Path, fmt: str, entry: CatalogEntry, ids: list, lengths: list,
                    metadata: list) -> None:
        """Items of a file holding concatenated series (source.ragged), with their labels and official split."""
        if fmt not in ("npz", "zarr", "hdf5"):
            raise DataError(f"{path}: ragged series need an npz, Zarr or HDF5 file, not {fmt}")
        for number, part in enumerate(entry.source.ragged):
            values = _open_array(path, fmt, part.values)
            part_lengths = np.asarray(_open_array(path, fmt, part.lengths)[...])
            where = f"{path}: ragged part {part.values!r}"
            if part_lengths.ndim != 1 or not np.issubdtype(part_lengths.dtype, np.integer) or (part_lengths < 1).any():
                raise DataError(f"{where}: lengths {part.lengths!r} must be a 1-D array of positive integers")
            if int(part_lengths.sum()) != values.shape[-1]:
                raise DataError(f"{where}: lengths sum to {int(part_lengths.sum())} samples but the values hold "
                                f"{values.shape[-1]}")
            labels = None
            if part.labels is not None:
                labels = np.asarray(_open_array(path, fmt, part.labels)[...])
                classes = len(entry.probe.class_names) if entry.probe else None
                if labels.shape != part_lengths.shape or not np.issubdtype(labels.dtype, np.integer):
                    raise DataError(f"{where}: labels {part.labels!r} must be {len(part_lengths)} integers, got "
                                    f"{labels.dtype} {labels.shape}")
                bad = np.flatnonzero((labels < 0) | (labels >= (classes or np.iinfo(np.int64).max)))
                if len(bad):
                    raise DataError(f"{where}: series {bad[0]} has label {labels[bad[0]]}, not a class index "
                                    f"0..{classes - 1}")
            offsets = np.concatenate([[0], np.cumsum(part_lengths)])
            for k, length in enumerate(part_lengths):
                self.items.append((path, fmt, part.values, slice(int(offsets[k]), int(offsets[k + 1]))))
                ids.append(f"{path.stem}:{part.split or number}:{k}")
                lengths.append(int(length))
                meta = {"source_file": str(path)}
                if labels is not None:
                    meta["label"] = int(labels[k])
                if part.split is not None:
                    meta["split"] = part.split
                metadata.append(meta)

    def _load(self, i: int) -> tuple[np.ndarray, float | None]:
        path, fmt, key, index = self.items[i]
        if fmt in ("npy", "npz", "zarr", "hdf5"):
            if isinstance(index, slice):  # one series of a ragged concatenation; keep its array open (an npz
                if self._ragged_open[0] != (path, key):  # member is decompressed whole on every open)
                    self._ragged_open = ((path, key), _open_array(path, fmt, key))
                array = self._ragged_open[1]
            else:
                array = _open_array(path, fmt, key)
            try:
                if isinstance(index, slice):
                    values = np.asarray(array[..., index])
                else:
                    values = np.asarray(array[index] if index is not None else array[...])
            except Exception as exc:  # truncated files fail when the data is touched
                raise DataError(f"{path}: cannot read series {self.ids[i]!r}: {exc}") from exc
            return values, None
        values, rate = _read_whole(path, fmt)
        declared = self.entry.sampling_rate
        if rate is not None and self.entry.rate_unknown:
            raise DataError(f"{path}: states a sampling rate of {rate} Hz but the catalog declares it unknown")
        if rate is not None and declared is not None and abs(rate - declared) > 1e-6 * rate:
            raise DataError(f"{path}: sampling rate {rate} Hz differs from the catalog's {declared} Hz")
        return values, rate
