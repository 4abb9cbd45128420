"""Schemas, catalog validation and every reader format, including bad files and lazy reading."""

import resource

import numpy as np
import pytest
import yaml

from data_catalog.catalog import load_catalog, open_reader
from data_catalog.readers import DataError, FileReader
from schemas.catalog import CatalogEntry
from schemas.loading import ConfigError
from schemas.params import load_params
from tests.conftest import ROOT


def file_entry(**source) -> CatalogEntry:
    return CatalogEntry.model_validate({
        "name": "mine", "domain": "other", "role": "pretrain", "sampling_rate": 100.0, "channels": 2,
        "unit": "V", "source": {"kind": "files", **source},
    })


# ------------------------------------------------------------------------------------------------- schemas


def test_default_params_and_catalog_validate():
    params = load_params(ROOT / "params.yaml")
    assert set(params.extract.teachers) == {"fracast", "spectral", "minirocket"}
    catalog = load_catalog(ROOT / "data_catalog" / "catalog.yaml")
    probes = [e for e in catalog.datasets if e.role == "probe"]
    assert len(probes) == 11  # the seven generated analogues and four real UCR sets
    assert any(e.name.startswith("pretrain_long") for e in catalog.datasets)


def test_strong_params_validate_and_every_teacher_builds_offline():
    """params-strong.yaml: every teacher's weights come from an installed wheel (or none are needed)."""
    from pipeline.teachers import load_teacher

    params = load_params(ROOT / "params-strong.yaml")
    assert {"minirocket", "crepe", "resemblyzer"} <= set(params.extract.teachers)
    for name, spec in params.extract.teachers.items():
        teacher = load_teacher(name, spec.model_copy(update={"device": "cpu"} if hasattr(spec, "device") else {}))
        assert teacher.feature_dim > 0


def test_params_error_names_file_field_and_problem(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({
        "extract": {"teachers": {"spectral": {"kind": "spectral"}}},
        "distill": {"max_steps": "many", "learning_rate": 0.1},
    }))
    with pytest.raises(ConfigError) as info:
        load_params(bad)
    message = str(info.value)
    assert f"{bad}: distill.max_steps: Input should be a valid integer" in message
    assert "distill.learning_rate: Extra inputs are not permitted" in message


def test_unknown_teacher_kind_is_refused(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"extract": {"teachers": {"t": {"kind": "nope"}}}}))
    with pytest.raises(ConfigError, match=r"extract\.teachers\.t"):
        load_params(bad)


def test_catalog_errors_name_the_field(tmp_path):
    catalog = yaml.safe_load((ROOT / "data_catalog" / "catalog.yaml").read_text())
    catalog["datasets"][0]["sampling_rate"] = -5
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    with pytest.raises(ConfigError, match=r"datasets\.0\.sampling_rate: Value error, must be a positive number of Hz"):
        load_catalog(path)

    catalog["datasets"][0]["sampling_rate"] = 4000.0  # valid number, but not what the generator produces
    path.write_text(yaml.safe_dump(catalog))
    with pytest.raises(ConfigError, match=r"datasets\.gwosc_like\.sampling_rate: is 4000.0 but generator"):
        load_catalog(path)

    del catalog["datasets"][0]["probe"]
    path.write_text(yaml.safe_dump(catalog))
    with pytest.raises(ConfigError, match="role 'probe' but no 'probe' section"):
        load_catalog(path)


def test_catalog_refuses_duplicate_names_and_unknown_generator(tmp_path):
    catalog = yaml.safe_load((ROOT / "data_catalog" / "catalog.yaml").read_text())
    catalog["datasets"].append(dict(catalog["datasets"][0]))
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    with pytest.raises(ConfigError, match="must be unique"):
        load_catalog(path)
    catalog["datasets"].pop()
    catalog["datasets"][1]["source"]["generator"] = "unicorns"
    path.write_text(yaml.safe_dump(catalog))
    with pytest.raises(ConfigError, match="unknown generator 'unicorns'"):
        load_catalog(path)


# ------------------------------------------------------------------------------------------------- readers


def test_npy_npz_csv_zarr_hdf5_readers(tmp_path):
    import h5py
    import zarr

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 50)).astype(np.float32), rng.normal(size=(2, 70))
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "pair.npz", first=a, second=b)
    np.savetxt(tmp_path / "c.csv", b.T, delimiter=",", header="x,y", comments="")
    zarr.create_array(str(tmp_path / "stack.zarr"), data=rng.normal(size=(3, 2, 40)).astype(np.float32))
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f["signals"] = rng.normal(size=(4, 2, 30))

    assert [s.length for s in FileReader(file_entry(paths=["a.npy"]), tmp_path)] == [50]
    npz = list(FileReader(file_entry(paths=["pair.npz"]), tmp_path))
    assert [s.id for s in npz] == ["pair:first", "pair:second"]
    np.testing.assert_allclose(npz[1].values, b.astype(np.float32))
    (csv_series,) = FileReader(file_entry(paths=["*.csv"]), tmp_path)
    np.testing.assert_allclose(csv_series.values, b, rtol=1e-6)
    zarr_reader = FileReader(file_entry(paths=["stack.zarr"], format="zarr", stacked=True), tmp_path)
    assert len(zarr_reader) == 3 and zarr_reader[2].values.shape == (2, 40)
    h5_reader = FileReader(file_entry(paths=["stack.h5"], key="signals", stacked=True), tmp_path)
    assert list(h5_reader.lengths) == [30] * 4 and h5_reader[3].values.dtype == np.float32


def test_audio_edf_and_miniseed_readers(tmp_path):
    import obspy
    import pyedflib
    import soundfile

    rng = np.random.default_rng(1)
    audio = (rng.uniform(-0.5, 0.5, size=(300, 2))).astype(np.float32)
    soundfile.write(tmp_path / "x.wav", audio, 100, subtype="FLOAT")
    soundfile.write(tmp_path / "y.flac", audio, 100)
    for name in ("x.wav", "y.flac"):
        (series,) = FileReader(file_entry(paths=[name]), tmp_path)
        np.testing.assert_allclose(series.values, audio.T, atol=1e-4)
        assert series.sampling_rate == 100.0

    signals = rng.normal(size=(2, 200)) * 50
    headers = [{"label": f"ch{i}", "dimension": "uV", "sample_frequency": 100, "physical_min": -500,
                "physical_max": 500, "digital_min": -32768, "digital_max": 32767} for i in range(2)]
    pyedflib.highlevel.write_edf(str(tmp_path / "z.edf"), signals, headers)
    (edf,) = FileReader(file_entry(paths=["z.edf"]), tmp_path)
    np.testing.assert_allclose(edf.values, signals, atol=0.1)

    traces = [obspy.Trace(rng.normal(size=500).astype(np.float32), header={"sampling_rate": 100.0, "channel": c})
              for c in ("HHZ", "HHN")]
    obspy.Stream(traces).write(str(tmp_path / "w.mseed"), format="MSEED")
    (mseed,) = FileReader(file_entry(paths=["w.mseed"]), tmp_path)
    assert mseed.values.shape == (2, 500)


def test_sampling_rate_in_file_must_match_catalog(tmp_path):
    import soundfile

    soundfile.write(tmp_path / "x.wav", np.zeros((100, 2), np.float32), 8000)
    with pytest.raises(DataError, match=r"x\.wav: sampling rate 8000.0 Hz differs from the catalog's 100.0 Hz"):
        FileReader(file_entry(paths=["x.wav"]), tmp_path)[0]


def test_npy_is_read_lazily(tmp_path):
    """A 256 MB stacked file: reading a few series must not load it (memory-mapped)."""
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(4096, 2, 8192))
    big[:8] = 1.0
    big.flush()
    del big
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reader = FileReader(file_entry(paths=["big.npy"], stacked=True), tmp_path)
    assert len(reader) == 4096
    firsts = [reader[i].values.sum() for i in range(8)]
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert firsts == [2 * 8192.0] * 8
    assert grown_mb < 64, f"reading 8 series of a 256 MB file grew peak RSS by {grown_mb:.0f} MB"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[1.0, np.nan, 3.0], [1, 2, 3]]), "1 non-finite samples"),
        (np.zeros((2, 0)), "empty series"),
        (np.zeros((3, 10)), "has 3 channels, the catalog declares 2"),
        (np.zeros((2, 10), dtype=np.complex64), "complex"),
        (np.zeros((2, 2, 2, 2)), "expected \\(time,\\) or \\(channels, time\\)"),
    ],
)
def test_bad_series_named_in_error(tmp_path, values, message):
    np.save(tmp_path / "bad.npy", values)
    with pytest.raises(DataError, match=f"series 'bad'.*{message}"):
        FileReader(file_entry(paths=["bad.npy"]), tmp_path)[0]


def test_object_arrays_are_not_unpickled(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: cannot read as npy"):
        FileReader(file_entry(paths=["obj.npy"]), tmp_path)


def test_non_finite_interpolated_when_asked(tmp_path):
    np.save(tmp_path / "gap.npy", np.array([[0.0, np.nan, 2.0], [1.0, 1.0, np.inf]]))
    (series,) = FileReader(file_entry(paths=["gap.npy"], non_finite="interpolate"), tmp_path)
    np.testing.assert_allclose(series.values, [[0, 1, 2], [1, 1, 1]])


def test_truncated_and_corrupt_files(tmp_path):
    np.save(tmp_path / "full.npy", np.ones((2, 1000), np.float32))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.npy: cannot read as npy"):
        FileReader(file_entry(paths=["cut.npy"]), tmp_path)
    (tmp_path / "noise.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(DataError, match=r"noise\.wav: cannot read as wav"):
        FileReader(file_entry(paths=["noise.wav"]), tmp_path)[0]


def test_path_outside_data_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    np.save(tmp_path / "secret.npy", np.zeros((2, 5)))
    with pytest.raises(DataError, match="outside data_root"):
        FileReader(file_entry(paths=["../secret.npy"]), root)


def test_probe_files_need_labels_and_get_splits(tmp_path):
    for i in range(4):
        np.save(tmp_path / f"s{i}.npy", np.full((2, 10), i, np.float32))
    probe = {"label": "k", "class_names": ["a", "b"], "metric": "binary_f1", "test_fraction": 0.5}
    entry = CatalogEntry.model_validate({
        "name": "p", "domain": "other", "role": "probe", "sampling_rate": 1.0, "channels": 2, "unit": "V",
        "source": {"kind": "files", "paths": ["s*.npy"]}, "probe": probe,
    })
    with pytest.raises(DataError, match="probe task but its source has no labels_file"):
        FileReader(entry, tmp_path)
    (tmp_path / "labels.csv").write_text("series_id,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(4)))
    entry.source.labels_file = "labels.csv"
    reader = FileReader(entry, tmp_path)
    assert [s.metadata["label"] for s in reader] == [0, 1, 0, 1]
    assert [m["split"] for m in reader.metadata] == ["train", "train", "test", "test"]


def test_series_store_round_trip_through_xarray(tmp_path):
    """prepare writes ragged series without padding; the reader and xarray see the same values."""
    import xarray as xr

    from data_catalog.readers import GeneratorReader
    from data_catalog.series_store import prepare

    catalog = load_catalog(ROOT / "data_catalog" / "catalog.yaml")
    entry = catalog.get("leaves_like").model_copy(deep=True)
    entry.source.count = 10
    store = tmp_path / "series.zarr"
    assert prepare(store, [entry], chunk_samples=4096) == ["leaves_like"]
    assert prepare(store, [entry], chunk_samples=4096) == []  # up to date: nothing redone
    reader = open_reader(entry, catalog, store)
    generated = GeneratorReader(entry)
    lengths = [generated[i].length for i in range(10)]
    assert list(reader.lengths) == lengths and len(set(lengths)) > 1  # ragged
    for i in (0, 9):
        np.testing.assert_array_equal(reader[i].values, generated[i].values)
        assert reader[i].metadata["label"] == generated[i].metadata["label"]
    ds = xr.open_zarr(store, group="leaves_like", consolidated=True)
    assert ds["values"].dims == ("channel", "sample") and ds.sizes["sample"] == sum(lengths)
    assert list(ds["split"].values[-5:]) == ["test"] * 5
    block = reader.read_block(range(3, 6))
    np.testing.assert_array_equal(block[1].values, generated[4].values)

    entry.source.seed += 1  # a changed entry is rebuilt, not mixed in
    assert prepare(store, [entry], chunk_samples=4096) == ["leaves_like"]


def test_default_params_file_spells_out_the_schema_defaults():
    """params.yaml is the schema's defaults written out (one source of truth), plus the chosen teachers."""
    from schemas.params import Params

    params = load_params(ROOT / "params.yaml")
    teachers = yaml.safe_load((ROOT / "params.yaml").read_text())["extract"]["teachers"]
    assert params == Params.model_validate({"extract": {"teachers": teachers}})


def test_ragged_files_with_official_splits_labels_and_unknown_rate(tmp_path):
    from tests.project import real_probe_entry, write_real_set

    write_real_set(tmp_path / "real.npz")
    entry = CatalogEntry.model_validate(real_probe_entry())
    reader = FileReader(entry, tmp_path)
    archive = np.load(tmp_path / "real.npz")
    assert len(reader) == 32 and reader.ids[0] == "real:train:0" and reader.ids[16] == "real:test:0"
    assert list(reader.lengths[:16]) == list(archive["train_lengths"])
    offsets = np.concatenate([[0], np.cumsum(archive["test_lengths"])])
    series = reader[18]  # the third test series
    np.testing.assert_array_equal(series.values[0], archive["test_values"][0, offsets[2]:offsets[3]])
    assert series.sampling_rate is None  # declared unknown: never a made-up number
    assert series.metadata["split"] == "test" and series.metadata["label"] == archive["test_y"][2]
    assert [m["split"] for m in reader.metadata].count("train") == 16

    broken = dict(real_probe_entry())
    np.savez(tmp_path / "bad.npz", **{**archive, "train_lengths": archive["train_lengths"] + 1})
    broken["source"] = {**broken["source"], "paths": ["bad.npz"]}
    with pytest.raises(DataError, match=r"bad\.npz: ragged part 'train_values': lengths sum to"):
        FileReader(CatalogEntry.model_validate(broken), tmp_path)


def test_unknown_rate_and_montage_are_catalog_values(tmp_path):
    entry = file_entry(paths=["x.npy"]).model_dump()
    assert CatalogEntry.model_validate(entry | {"sampling_rate": "unknown"}).rate_unknown
    with pytest.raises(ValueError, match="sampling_rate"):
        CatalogEntry.model_validate(entry | {"sampling_rate": "fast"})
    montage = CatalogEntry.model_validate(entry | {"channel_names": ["C3", "C4"]})
    assert montage.channel_names == ["C3", "C4"]
    from data_catalog.series_store import entry_hash

    assert entry_hash(montage) == entry_hash(CatalogEntry.model_validate(entry))  # names do not change the data
    with pytest.raises(ValueError, match="1 channel_names for 2 channels"):
        CatalogEntry.model_validate(entry | {"channel_names": ["C3"]})
    catalog = load_catalog(ROOT / "data_catalog/catalog.yaml")
    assert catalog.get("wbcic_like").channel_names[7] == "C3"
    assert {e.name for e in catalog.datasets if e.rate_unknown and e.role == "probe"} == {
        "ucr_arrowhead", "ucr_osuleaf", "ucr_pickupgesture", "ucr_plaid"}
    # a file that states a rate contradicts a declared unknown rate
    import soundfile

    soundfile.write(tmp_path / "x.wav", np.zeros((100, 2), np.float32), 8000)
    with pytest.raises(DataError, match="states a sampling rate of 8000.0 Hz but the catalog declares it unknown"):
        FileReader(CatalogEntry.model_validate(file_entry(paths=["x.wav"]).model_dump() | {"sampling_rate": "unknown"}),
                   tmp_path)[0]
