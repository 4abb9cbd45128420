"""Bad inputs: each is met by a clear error naming the file / series / field, or by a documented, tested handling.

What test_catalog.py, test_feature_store.py, test_extract.py, test_cli.py and test_student.py already cover
(NaN/Inf refused or interpolated, empty series, complex and pickled .npy, truncated .npy, garbage .wav, a path
outside data_root, probe sets without labels, bad params.yaml, stores from another configuration, untrusted
feature stores) is not repeated. Handling documented in docs/failure-behaviour.md:
- constant, all-zero, 1-sample, integer and boolean series are accepted (as float32): teachers and the
  student give finite features and embeddings;
- a 1e7-sample series is read memory-mapped and cut into near-equal segments of at most segments.max_samples;
- a Zarr chunk file that is missing reads as the array's fill value (Zarr's own rule: chunks equal to the fill
  value need not be stored); with a NaN fill value that is refused like any NaN.
Every case counts as a bad input tried in the FAULT SUMMARY line.
"""

import json
import os
import shutil
import struct
import sys

import numpy as np
import pytest
import yaml
import zarr

from data_catalog.catalog import load_catalog
from data_catalog.readers import DataError, FileReader
from data_catalog.segments import segment_series
from schemas.catalog import CatalogEntry
from schemas.loading import ConfigError
from tests.fault_summary import record


def entry(name="mine", channels=2, rate=100.0, role="pretrain", probe=None, **source) -> CatalogEntry:
    document = {"name": name, "domain": "other", "role": role, "sampling_rate": rate, "channels": channels,
                "unit": "V", "source": {"kind": "files", **source}}
    if probe:
        document["probe"] = probe
    return CatalogEntry.model_validate(document)


def refused(match: str, read) -> None:
    """`read()` raises DataError matching `match`; counts the bad input."""
    with pytest.raises(DataError, match=match):
        read()
    record(bad_inputs=1)


# ------------------------------------------------------------------------------------------------- degenerate series


@pytest.fixture(scope="module")
def tiny_student():
    from tests.project import tiny_student

    return tiny_student()


def test_constant_zero_one_sample_integer_and_boolean_series_give_finite_features(tmp_path, tiny_student):
    """Through the reader, extraction (spectral, silero_vad) into a store and the student's embedding."""
    from pipeline.extract import extract
    from pipeline.feature_store import FeatureStore
    from schemas.params import Params
    from tests.project import tiny_params

    raw = tmp_path / "raw"
    raw.mkdir()
    series = {
        "constant": np.full((1, 3000), 3.7, np.float32),
        "zeros": np.zeros((1, 3000), np.float32),
        "one_sample": np.array([[1.5]], np.float32),
        "integers": (np.arange(3000, dtype=np.int64) % 17)[None],
        "booleans": (np.arange(2000) % 3 == 0)[None],
        "huge_offset": (1e6 + 1e-3 * np.random.default_rng(0).standard_normal((1, 3000))),  # below float32 steps
    }
    for name, values in series.items():
        np.save(raw / f"{name}.npy", values)
    catalog_document = {"data_root": str(raw), "datasets": [
        {"name": "odd", "domain": "other", "role": "pretrain", "sampling_rate": 100.0, "channels": 1, "unit": "V",
         "source": {"kind": "files", "paths": ["*.npy"]}}]}
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog_document))
    catalog = load_catalog(tmp_path / "catalog.yaml")
    params = Params.model_validate(tiny_params(tmp_path))
    reader = FileReader(catalog.get("odd"), raw)
    assert [s.values.dtype for s in reader] == [np.float32] * len(series)

    for teacher in ("spectral", "silero_vad"):
        manifest = extract(teacher, params, catalog, [catalog.get("odd")])
        assert np.isfinite(manifest.feature_mean).all() and np.isfinite(manifest.feature_std).all()
        store = FeatureStore.open(tmp_path / f"data/features/{teacher}.zarr")
        features, n_tokens, ids = store.read_chunk("odd", 0)
        assert sorted(ids) == sorted(series) and n_tokens.min() >= 1
        for row, n in enumerate(n_tokens):
            assert np.isfinite(features[row, :n]).all(), f"{teacher}: {ids[row]} has non-finite features"
    embeddings = tiny_student.embed([s.values for s in reader])
    # mean+std+max (embedding 64), stats (2), structure (mean, std, max of 8 lags + 8 bands), 16 kernel components
    assert embeddings.shape == (len(series), 3 * 64 + 2 + 3 * 16 + 16) and np.isfinite(embeddings).all()
    record(bad_inputs=len(series))


def test_ten_million_sample_series_is_read_lazily_segmented_extracted_and_embedded(tmp_path, tiny_student):
    import resource

    length = 10_000_000
    big = np.lib.format.open_memmap(tmp_path / "long.npy", mode="w+", dtype=np.float32, shape=(1, length))
    big[0] = np.sin(np.arange(length, dtype=np.float32) * np.float32(0.01))
    big.flush()
    del big
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reader = FileReader(entry(channels=1, paths=["long.npy"]), tmp_path)
    assert list(reader.lengths) == [length]  # from the header, nothing read
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 20  # MB
    segments = segment_series(reader.ids, reader.lengths, 8192)
    assert len(segments) == 1221 and max(s.length for s in segments) <= 8192
    assert segments[0].start == 0 and segments[-1].stop == length
    assert all(a.stop == b.start for a, b in zip(segments, segments[1:]))  # contiguous: no sample lost or doubled
    assert len({s.id for s in segments}) == len(segments)
    series = reader[0]
    assert series.values.shape == (1, length)
    embedding = tiny_student.embed([series.values])
    assert np.isfinite(embedding).all()

    # and through extraction: every segment once in the store, every token finite (~3 s)
    from pipeline.extract import extract
    from pipeline.feature_store import FeatureStore
    from schemas.params import Params
    from tests.project import tiny_params

    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"data_root": str(tmp_path), "datasets": [
        entry(name="long", channels=1, paths=["long.npy"]).model_dump(mode="json")]}))
    catalog = load_catalog(tmp_path / "catalog.yaml")
    params = Params.model_validate(tiny_params(tmp_path))
    params.extract.compression.chunk_segments = 128
    extract("spectral", params, catalog, catalog.datasets)
    store = FeatureStore.open(tmp_path / "data/features/spectral.zarr")
    ids, n_tokens = store.segments("long")
    assert list(ids) == [s.id for s in segments] and store.pending_chunks("long") == []
    for chunk in range(store.n_chunks("long")):
        features, counts, _ = store.read_chunk("long", chunk)
        assert all(np.isfinite(f[:n]).all() for f, n in zip(features, counts))
    record(bad_inputs=1)


# ------------------------------------------------------------------------------------------------- sampling rate


def test_sampling_rate_missing_or_not_positive(tmp_path):
    import obspy
    import soundfile

    catalog = {"data_root": str(tmp_path), "datasets": [
        {"name": "mine", "domain": "other", "role": "pretrain", "channels": 2, "unit": "V",
         "source": {"kind": "files", "paths": ["x.npy"]}}]}
    path = tmp_path / "catalog.yaml"
    positive = r"must be a positive number of Hz, `unknown` or null \(got "
    for rate, message in ((None, "Field required"), (0, positive + "0"), (-250.0, positive + "-250"),
                          ("fast", positive + "'fast'")):
        if rate is not None:
            catalog["datasets"][0]["sampling_rate"] = rate
        path.write_text(yaml.safe_dump(catalog))
        with pytest.raises(ConfigError, match=rf"catalog\.yaml: datasets\.0\.sampling_rate: .*{message}"):
            load_catalog(path)
        record(bad_inputs=1)

    # sampling_rate: null means "the file states it": fine for WAV, refused for a header-less .npy
    np.save(tmp_path / "x.npy", np.zeros((2, 50), np.float32))
    refused(r"series 'x': no positive sampling rate", lambda: FileReader(entry(rate=None, paths=["x.npy"]),
                                                                            tmp_path)[0])
    soundfile.write(tmp_path / "x.wav", np.zeros((100, 2), np.float32), 250, subtype="FLOAT")
    assert FileReader(entry(rate=None, paths=["x.wav"]), tmp_path)[0].sampling_rate == 250.0

    # a header that says 0 Hz
    trace = obspy.Trace(np.zeros(100, np.float32), header={"sampling_rate": 0.0})
    obspy.Stream([trace, trace.copy()]).write(str(tmp_path / "zero.mseed"), format="MSEED")
    refused(r"series 'zero': no positive sampling rate",
            lambda: FileReader(entry(rate=None, paths=["zero.mseed"]), tmp_path)[0])
    refused(r"zero\.mseed: sampling rate 0\.0 Hz differs from the catalog's 100\.0 Hz",
            lambda: FileReader(entry(paths=["zero.mseed"]), tmp_path)[0])
    header = bytearray((tmp_path / "x.wav").read_bytes())
    fmt = header.index(b"fmt ")
    header[fmt + 12 : fmt + 16] = struct.pack("<I", 0)  # the fmt chunk's sample rate
    (tmp_path / "zero.wav").write_bytes(bytes(header))
    refused(r"zero\.wav: cannot read as wav", lambda: FileReader(entry(rate=None, paths=["zero.wav"]), tmp_path)[0])


# ------------------------------------------------------------------------------------------------- dtypes, channels


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([["a", "b"], ["c", "d"]]), r"values have dtype <U1, expected a real numeric dtype"),
        (np.array([[1 + 2j, 3j], [0j, 1j]]), r"values are complex; store I/Q as two real channels"),
        (np.full((2, 4), 1e40), r"8 samples beyond float32's range \(\|x\| up to 1e\+40\)"),  # not inf
        (np.zeros((2, 3), dtype="datetime64[s]"), r"values have dtype datetime64\[s\]"),
    ],
)
def test_wrong_dtypes_are_refused_naming_the_series(tmp_path, values, message):
    np.save(tmp_path / "bad.npy", values)
    refused(rf"series 'bad': {message}", lambda: FileReader(entry(paths=["bad.npy"]), tmp_path)[0])


def test_integer_and_boolean_files_are_read_as_float32(tmp_path):
    np.save(tmp_path / "i.npy", np.array([[-3, 0, 7], [1, 2, 3]], dtype=np.int16))
    np.save(tmp_path / "b.npy", np.array([[True, False, True], [False, False, True]]))
    values = FileReader(entry(paths=["i.npy"]), tmp_path)[0].values
    assert values.dtype == np.float32 and values.tolist() == [[-3, 0, 7], [1, 2, 3]]
    assert FileReader(entry(paths=["b.npy"]), tmp_path)[0].values.tolist() == [[1, 0, 1], [0, 0, 1]]
    record(bad_inputs=2)


def test_channel_count_other_than_the_catalogs_is_refused(tmp_path):
    import soundfile

    soundfile.write(tmp_path / "mono.wav", np.zeros((100, 1), np.float32), 100, subtype="FLOAT")
    zarr.create_array(str(tmp_path / "stack.zarr"), data=np.zeros((3, 1, 40), np.float32))
    np.savetxt(tmp_path / "three.csv", np.zeros((20, 3)), delimiter=",")
    for name, options in (("mono.wav", {}), ("stack.zarr", {"stacked": True}), ("three.csv", {})):
        reader = FileReader(entry(paths=[name], **options), tmp_path)
        found = 3 if name == "three.csv" else 1
        refused(rf"series '{reader.ids[0]}': has {found} channels, the catalog declares 2", lambda: reader[0])


def test_all_nan_channel_cannot_be_interpolated(tmp_path):
    np.save(tmp_path / "gap.npy", np.array([[np.nan, np.nan, np.nan], [1.0, 2.0, 3.0]]))
    refused(r"series 'gap': channel 0 has no finite sample to interpolate from",
            lambda: FileReader(entry(paths=["gap.npy"], non_finite="interpolate"), tmp_path)[0])


# ------------------------------------------------------------------------------------------------- corrupt files


def test_truncated_and_empty_wav_files(tmp_path):
    import soundfile

    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (1000, 2)).astype(np.float32)
    soundfile.write(tmp_path / "full.wav", audio, 100, subtype="FLOAT")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])  # libsndfile alone would return 494 frames
    refused(r"cut\.wav: truncated WAV file: its data chunk declares 8000 bytes, 3956 are present",
            lambda: FileReader(entry(paths=["cut.wav"]), tmp_path)[0])
    soundfile.write(tmp_path / "empty.wav", np.zeros((0, 2), np.float32), 100, subtype="FLOAT")
    refused(r"series 'empty': empty series", lambda: FileReader(entry(paths=["empty.wav"]), tmp_path)[0])
    (series,) = FileReader(entry(paths=["full.wav"]), tmp_path)  # the intact file still reads whole
    assert series.length == 1000


@pytest.fixture
def good_zarr(tmp_path):
    zarr.create_array(str(tmp_path / "good.zarr"), data=np.ones((2, 100), np.float32), chunks=(2, 50),
                      fill_value=np.nan)
    return tmp_path / "good.zarr"


def broken_copy(good, name):
    shutil.copytree(good, good.parent / name)
    return good.parent / name


def test_corrupt_zarr_inputs_are_refused_naming_the_file(good_zarr):
    root = good_zarr.parent

    def read(name):
        return lambda: FileReader(entry(paths=[name], format="zarr"), root)[0]

    broken = broken_copy(good_zarr, "json.zarr")
    (broken / "zarr.json").write_text((good_zarr / "zarr.json").read_text()[:40])
    refused(r"json\.zarr/zarr\.json: corrupt Zarr metadata", read("json.zarr"))

    broken = broken_copy(good_zarr, "chunk.zarr")
    chunk = broken / "c/0/1"
    chunk.write_bytes(chunk.read_bytes()[:10])
    refused(r"chunk\.zarr: cannot read series 'chunk'", read("chunk.zarr"))

    broken = broken_copy(good_zarr, "missing.zarr")
    (broken / "c/0/1").unlink()  # reads as the fill value, NaN here: refused like any NaN
    refused(r"series 'missing': 100 non-finite samples", read("missing.zarr"))


def write_v2_array(path, dtype="<f4", filters=None, compressor=None, chunk=b""):
    path.mkdir()
    (path / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [2, 4], "chunks": [2, 4], "dtype": dtype, "fill_value": 0, "order": "C",
        "filters": filters, "compressor": compressor, "dimension_separator": "."}))
    (path / "0.0").write_bytes(chunk)


class RunsCode:
    """What a malicious pickle in a chunk would do on decode: create a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_untrusted_zarr_inputs_are_refused_before_decoding(tmp_path, good_zarr):
    import pickle

    marker = tmp_path / "code-ran"
    payload = pickle.dumps(RunsCode(marker))

    def read(name):
        return lambda: FileReader(entry(paths=[name], format="zarr"), tmp_path)[0]

    write_v2_array(tmp_path / "pickle.zarr", filters=[{"id": "pickle", "protocol": 5}], chunk=payload)
    refused(r"pickle\.zarr/\.zarray: codec 'pickle' is not allowed", read("pickle.zarr"))
    write_v2_array(tmp_path / "object.zarr", dtype="|O", filters=[{"id": "vlen-utf8"}], chunk=payload)
    refused(r"object\.zarr/\.zarray: dtype '\|O' is not a plain numeric type.*codec 'vlen-utf8'", read("object.zarr"))
    write_v2_array(tmp_path / "unknown.zarr", compressor={"id": "my-codec"})
    refused(r"codec 'my-codec' is not allowed", read("unknown.zarr"))
    # a harmless .zarray, but consolidated metadata (which zarr may read instead) naming the pickle codec
    write_v2_array(tmp_path / "consolidated.zarr", chunk=np.zeros((2, 4), np.float32).tobytes())
    node = json.loads((tmp_path / "consolidated.zarr/.zarray").read_text()) | {"filters": [{"id": "pickle"}]}
    (tmp_path / "consolidated.zarr/.zmetadata").write_text(json.dumps({"zarr_consolidated_format": 1,
                                                                        "metadata": {".zarray": node}}))
    refused(r"\.zmetadata\[\.zarray\]: codec 'pickle' is not allowed", read("consolidated.zarr"))

    strings = broken_copy(good_zarr, "strings.zarr")
    metadata = json.loads((strings / "zarr.json").read_text()) | {"data_type": "string", "fill_value": ""}
    (strings / "zarr.json").write_text(json.dumps(metadata))
    refused(r"strings\.zarr/zarr\.json: data type 'string' is not a plain numeric type", read("strings.zarr"))
    assert not marker.exists(), "an untrusted Zarr input ran code"
    assert FileReader(entry(paths=["good.zarr"], format="zarr"), tmp_path)[0].values.shape == (2, 100)


# ------------------------------------------------------------------------------------------------- labels, paths


PROBE = {"label": "k", "class_names": ["a", "b"], "metric": "binary_f1", "test_fraction": 0.5}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("series_id,label\ns0,0\ns1,1\ns2,0\n", r"series 's3' has no row in labels\.csv"),
        ("series_id,class\ns0,0\n", r"labels\.csv: labels file needs columns series_id,label"),
        ("series_id,label\ns0,0\ns1,yes\n", r"labels\.csv: line 3: label 'yes' of series 's1' is not an integer"),
        ("series_id,label\ns0,0\ns1,2\n", r"labels\.csv: line 3: label 2 of series 's1' is not a class index 0\.\.1"),
        ("series_id,label,split\ns0,0,val\n", r"labels\.csv: line 2: split 'val' of series 's0' is not train, test"),
    ],
)
def test_bad_probe_labels_are_refused_naming_file_and_series(tmp_path, rows, message):
    for i in range(4):
        np.save(tmp_path / f"s{i}.npy", np.full((2, 10), i, np.float32))
    (tmp_path / "labels.csv").write_text(rows)
    probe_entry = entry(name="p", role="probe", probe=PROBE, paths=["s*.npy"], labels_file="labels.csv")
    refused(message, lambda: FileReader(probe_entry, tmp_path))


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_symlink_out_of_the_data_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    np.save(tmp_path / "secret.npy", np.zeros((2, 5)))
    os.symlink(tmp_path / "secret.npy", root / "innocent.npy")
    refused(r"path 'innocent\.npy' resolves to .*secret\.npy, outside data_root",
            lambda: FileReader(entry(paths=["innocent.npy"]), root))
    refused(r"outside data_root", lambda: FileReader(entry(paths=["../*.npy"]), root))  # a glob that climbs out


# ------------------------------------------------------------------------------------------------- foreign stores


def test_feature_store_of_another_teacher_is_refused_by_extract_and_distill(extracted_project, tmp_path):
    from data_catalog.catalog import load_catalog as catalog_of
    from pipeline.distill.loader import StoreCoverageError
    from pipeline.distill.train import distill
    from pipeline.extract import extract
    from pipeline.feature_store import StoreMismatchError
    from schemas.params import load_params

    root, params_path = extracted_project
    params = load_params(params_path)
    params.extract.store_dir = str(tmp_path / "features")
    shutil.copytree(root / "data/features", tmp_path / "features")
    shutil.rmtree(tmp_path / "features/spectral.zarr")
    shutil.copytree(root / "data/features/silero_vad.zarr", tmp_path / "features/spectral.zarr")  # mislabelled
    catalog = catalog_of(params.prepare.catalog)
    with pytest.raises(StoreMismatchError, match=r"teacher: store has 'silero_vad', requested 'spectral'"):
        extract("spectral", params, catalog, catalog.datasets[:1])
    record(bad_inputs=1)
    params.distill = params.distill.model_copy(update={"output_dir": str(tmp_path / "model"),
                                                       "checkpoint_dir": str(tmp_path / "ck"),
                                                       "reports_dir": str(tmp_path / "reports")})
    with pytest.raises(StoreCoverageError, match=r"spectral\.zarr was made with config hash"):
        distill(params)
    record(bad_inputs=1)
