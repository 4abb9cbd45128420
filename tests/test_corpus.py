"""The broad pretraining corpus: its generators, its params (`corpus`), its scaling, and no probe series in it."""

import hashlib
import logging
import tracemalloc

import numpy as np
import pytest
import yaml

from data_catalog.catalog import apply_corpus, load_catalog, open_reader
from data_catalog.generators import CORPUS_GENERATORS, GENERATORS, generate, resolve_options
from data_catalog.readers import FileReader, GeneratorReader
from data_catalog.segments import segment_series
from schemas.catalog import GeneratorSource
from schemas.loading import ConfigError
from schemas.params import DEFAULT_CORPUS_SOURCES, CorpusParams, Params, load_params
from tests.conftest import ROOT

GENERIC = ("kernel_synth", "synthetic_shapes", "tsmixup", "multichannel")  # random physical scale
SHORT = {"min_length": 100, "max_length": 300, "lengths_per_octave": 0}  # every length, not a grid


def channels_of(name: str, options: dict | None = None) -> int:
    spec = GENERATORS[name]
    return spec.channels if spec.channels is not None else resolve_options(name, options)["channels"]


# ------------------------------------------------------------------------------------------------- generators


def test_corpus_families_are_registered_and_distinct_from_the_tasks():
    assert set(CORPUS_GENERATORS) == {"kernel_synth", "synthetic_shapes", "tsmixup", "multichannel", "ecg", "ppg",
                                      "respiration", "emg", "eda", "real_seismograms"}
    assert all(not GENERATORS[name].class_names for name in CORPUS_GENERATORS)  # unlabelled
    tasks = {e.source.generator for e in load_catalog().datasets
             if e.role == "probe" and isinstance(e.source, GeneratorSource)}
    assert not tasks & set(CORPUS_GENERATORS)


@pytest.mark.parametrize("name", CORPUS_GENERATORS)
def test_items_are_deterministic_shaped_finite_and_within_the_declared_lengths(name):
    lengths = set()
    for index in range(12):
        values, label = generate(name, index, seed=5, options=SHORT)
        again, _ = generate(name, index, seed=5, options=SHORT)
        other, _ = generate(name, index, seed=6, options=SHORT)
        np.testing.assert_array_equal(values, again)
        assert other.shape != values.shape or not np.array_equal(other, values)
        assert values.dtype == np.float32 and values.ndim == 2 and values.shape[0] == channels_of(name)
        assert np.isfinite(values).all() and label == -1
        assert 100 <= values.shape[1] <= 300
        lengths.add(values.shape[1])
    assert len(lengths) > 4  # a spread of lengths, not one


@pytest.mark.parametrize("per_octave", [0, 2])
def test_lengths_are_log_uniform_over_the_range(per_octave):
    options = {"min_length": 10, "max_length": 100_000, "lengths_per_octave": per_octave}
    lengths = np.array([generate("synthetic_shapes", i, 0, options)[0].shape[1] for i in range(200)])
    assert lengths.min() >= 10 and lengths.max() <= 100_000
    decades = np.histogram(np.log10(lengths), bins=[1, 2, 3, 4, 5.01])[0]
    assert (decades > 20).all()  # every decade gets its share
    if per_octave:  # snapped to round(2 ** (j / 2)): few distinct lengths, so extraction batches them
        grid = {10, 100_000} | {round(2 ** (j / 2)) for j in range(6, 34)}
        assert set(lengths) <= grid and len(set(lengths)) <= 28
    else:
        assert len(set(lengths)) > 150


@pytest.mark.parametrize("name", GENERIC)
def test_generic_families_span_tiny_and_huge_physical_scales(name):
    stds = [generate(name, i, 1, SHORT)[0].std() for i in range(40)]
    assert min(stds) < 1e-12 and max(stds) > 1e2
    for amplitude in (1e-21, 1e6):
        values, _ = generate(name, 0, 1, SHORT | {"amplitude_range": (amplitude, amplitude), "offset_probability": 0})
        assert np.isfinite(values).all() and 0.1 * amplitude < values.std() < 10 * amplitude


def test_physiological_signals_have_their_units_scale():
    ecg = generate("ecg", 0, 0, {"min_length": 5000, "max_length": 5000})[0]
    assert 0.3 < np.ptp(ecg) < 20  # mV
    eda = generate("eda", 0, 0)[0]
    assert eda.min() > 0 and eda.max() < 100  # microsiemens
    emg = generate("emg", 0, 0, {"min_length": 5000, "max_length": 5000})[0]
    assert 1e-3 < emg.std() < 5  # mV
    # the beats: QRS complexes (5-30 Hz) at a heart rate of 40-170 bpm
    from scipy import signal

    for index in range(5):
        ecg = generate("ecg", index, 0, {"min_length": 5000, "max_length": 5000})[0][0]  # 20 s
        qrs = signal.sosfiltfilt(signal.butter(2, [5, 30], btype="bandpass", fs=250.0, output="sos"), ecg)
        peaks, _ = signal.find_peaks(np.abs(qrs), height=0.4 * np.abs(qrs).max(), distance=int(0.3 * 250))
        assert 35 <= len(peaks) * 3 <= 180, len(peaks) * 3  # beats per minute


def test_kernel_synth_composes_the_chronos_kernel_bank():
    from data_catalog.generators import kernel_synth

    names = {name.split("(")[0] for name, _ in kernel_synth.kernel_bank(64)}
    assert names == {"periodic", "linear", "rbf", "rq", "white", "constant"}
    formulas = {kernel_synth.random_kernel(np.random.default_rng(i), 64, 5)[1] for i in range(30)}
    assert any("+" in f for f in formulas) and any("*" in f for f in formulas)
    # a purely periodic kernel gives a periodic draw
    rng = np.random.default_rng(0)
    cov = kernel_synth.kernel_bank(240)[7][1](np.linspace(0, 1, 240), np.linspace(0, 1, 240))  # period 14
    draw = kernel_synth.gp_sample(rng, cov)
    assert np.corrcoef(draw[:-14], draw[14:])[0, 1] > 0.99


def test_multichannel_mixes_correlated_and_independent_channels():
    strongest, weakest = [], []
    for index in range(20):
        values = generate("multichannel", index, 0, {"channels": 8, "min_length": 2000, "max_length": 2000})[0]
        corr = np.abs(np.corrcoef(values.astype(np.float64)))[np.triu_indices(8, 1)]
        strongest.append(corr.max())
        weakest.append(corr.min())
    assert max(strongest) > 0.9  # channels sharing a source
    assert min(weakest) < 0.1  # independent ones
    assert generate("multichannel", 0, 0, {"channels": 32, **SHORT})[0].shape[0] == 32


def test_real_seismograms_are_segments_of_obspy_records():
    pytest.importorskip("obspy")
    from data_catalog.generators import real_seismograms

    records = real_seismograms.traces()
    assert len(records) >= 10 and sum(len(r) for r in records) > 100_000
    segment = generate("real_seismograms", 3, 0, SHORT)[0][0]
    assert any(np.array_equal(segment, r[s : s + len(segment)].astype(np.float32))
               for r in records for s in np.flatnonzero(r.astype(np.float32) == segment[0])[:1000])


@pytest.mark.parametrize("name", ["synthetic_shapes", "kernel_synth", "tsmixup", "ecg"])
def test_million_sample_series_generate_in_bounded_memory(name):
    options = {"min_length": 1_000_000, "max_length": 1_000_000}
    tracemalloc.start()
    values, _ = generate(name, 0, 0, options)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert values.shape == (1, 1_000_000) and np.isfinite(values).all()
    assert peak < 20 * values.nbytes  # a few float64 work arrays of the series, never the corpus


# ------------------------------------------------------------------------------------------------- params


def test_corpus_params_default_to_the_catalog_sources():
    corpus = CorpusParams()
    assert corpus.scale == 1.0
    catalog = load_catalog()
    declared = {e.name: e for e in catalog.datasets if e.name.startswith("corpus_")}
    assert set(declared) == set(corpus.sources) == set(DEFAULT_CORPUS_SOURCES)
    for name, source in corpus.sources.items():  # the catalog declares what params size by default
        entry = declared[name]
        assert entry.role == "pretrain"
        assert entry.source.count == source.segments
        assert entry.source.options["min_length"] == source.min_length
        assert entry.source.options["max_length"] == source.max_length
    assert apply_corpus(catalog, corpus) == catalog  # the default scales nothing
    added = sum(s.segments for s in corpus.sources.values())
    assert 600 <= added <= 1000
    lengths = [(s.min_length, s.max_length) for s in corpus.sources.values()]
    assert min(low for low, _ in lengths) <= 16 and max(high for _, high in lengths) >= 2**20


@pytest.mark.parametrize("field, value, message", [
    ("segments", 0, "corpus.sources.corpus_shapes.segments: Input should be greater than or equal to 1"),
    ("segments", -5, "corpus.sources.corpus_shapes.segments: Input should be greater than or equal to 1"),
    ("min_length", 1, "corpus.sources.corpus_shapes.min_length: Input should be greater than or equal to 2"),
    ("max_length", 10, "corpus.sources.corpus_shapes: Value error, min_length 16 > max_length 10"),
])
def test_bad_corpus_params_are_refused_naming_the_field(tmp_path, field, value, message):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["corpus"]["sources"]["corpus_shapes"][field] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert message in str(info.value)


def test_zero_or_negative_scale_is_refused(tmp_path):
    for value in (0, -1.0):
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({"extract": {"teachers": {}}, "corpus": {"scale": value}}))
        with pytest.raises(ConfigError, match=r"corpus\.scale: Input should be greater than 0"):
            load_params(path)


def test_scale_multiplies_every_pretraining_count():
    catalog = load_catalog()
    pretrain = {e.name: e for e in catalog.datasets if e.role == "pretrain"}
    doubled = {e.name: e for e in apply_corpus(catalog, CorpusParams(scale=2.0)).datasets}
    for name, entry in pretrain.items():
        assert doubled[name].source.count == 2 * entry.source.count
    tiny = apply_corpus(catalog, CorpusParams(scale=1e-6))
    assert all(e.source.count == 1 for e in tiny.datasets if e.role == "pretrain")
    probes = [e for e in catalog.datasets if e.role == "probe"]
    assert [e for e in tiny.datasets if e.role == "probe"] == probes  # probes untouched

    custom = CorpusParams(sources={"corpus_ecg": {"segments": 7, "min_length": 1000, "max_length": 2000}})
    ecg = apply_corpus(catalog, custom).get("corpus_ecg")
    assert ecg.source.count == 7 and ecg.source.options == {"min_length": 1000, "max_length": 2000}


def test_length_ranges_that_would_give_a_teacher_several_token_grids_are_refused():
    from stages.prepare import check_token_grids

    params = load_params(ROOT / "params.yaml")
    catalog = load_catalog()
    check_token_grids([e for e in catalog.datasets if e.role == "pretrain"], params, "params.yaml")  # defaults pass
    wide = CorpusParams(sources={"corpus_shapes": {"segments": 5, "min_length": 64, "max_length": 16384}})
    entry = apply_corpus(catalog, wide).get("corpus_shapes")
    with pytest.raises(ConfigError, match=r"corpus.sources.corpus_shapes: lengths 64..16384 are decimated by "
                                          r"teacher 'fracast' \(max_steps 2048\) by factors 1..8"):
        check_token_grids([entry], params, "params.yaml")
    too_long = CorpusParams(sources={"corpus_shapes": {"segments": 5, "min_length": 2**20, "max_length": 2**21}})
    with pytest.raises(ConfigError, match="exceed segments.max_samples 131072"):
        check_token_grids([apply_corpus(catalog, too_long).get("corpus_shapes")], params, "params.yaml")
    fixed = CorpusParams(sources={"corpus_shapes": {"segments": 5, "min_length": 2**21, "max_length": 2**21}})
    check_token_grids([apply_corpus(catalog, fixed).get("corpus_shapes")], params, "params.yaml")  # one length


def test_corpus_refuses_probe_sets_and_skips_unknown_names(caplog):
    catalog = load_catalog()
    with pytest.raises(ConfigError, match="corpus.sources.gwosc_like: only generated pretraining sets"):
        apply_corpus(catalog, CorpusParams(sources={"gwosc_like": {"segments": 3}}))
    with caplog.at_level(logging.WARNING):
        apply_corpus(catalog, CorpusParams(sources={"nope": {"segments": 3}}))
    assert "corpus.sources.nope: no such data set" in caplog.text


def test_a_pretraining_set_on_a_probe_seed_is_refused(tmp_path):
    data = yaml.safe_load((ROOT / "data_catalog" / "catalog.yaml").read_text())
    corpus = next(d for d in data["datasets"] if d["name"] == "corpus_shapes")
    corpus["source"]["seed"] = 3  # stead_like's
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="datasets.corpus_shapes.source.seed: 3 is the seed of probe set 'stead_lik"):
        load_catalog(path)


def test_default_params_carry_the_corpus_section():
    params = load_params(ROOT / "params.yaml")
    assert params.corpus == CorpusParams()
    assert "corpus" in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["prepare"]["params"]
    assert "corpus" in Params.model_fields


# ------------------------------------------------------------------------------------------------- prepared corpus


def small_corpus(scale: float) -> dict:
    """The default corpus at `scale`, its 2**20-sample source made 4096 samples long (fast tests)."""
    long = {"segments": 2, "min_length": 4096, "max_length": 4096}
    return {"scale": scale, "sources": {**DEFAULT_CORPUS_SOURCES, "corpus_long": long}}


def prepare_pretraining(tmp_path, corpus: dict, prefix: str = ""):
    """Prepare only the default catalog's pretraining sets (those named `prefix`...), sized by `corpus`, the way
    the prepare stage does."""
    from stages import prepare as prepare_stage

    catalog = yaml.safe_load((ROOT / "data_catalog" / "catalog.yaml").read_text())
    catalog["data_root"] = str(ROOT)
    catalog["datasets"] = [d for d in catalog["datasets"] if d["role"] == "pretrain" and d["name"].startswith(prefix)]
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    params = {"prepare": {"catalog": str(tmp_path / "catalog.yaml"), "series_store": str(tmp_path / "series.zarr")},
              "extract": {"teachers": {}}, "corpus": corpus}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare_stage.run(str(tmp_path / "params.yaml"))
    return load_params(tmp_path / "params.yaml")


def test_prepared_sets_are_read_as_the_corpus_sized_them(tmp_path):
    params = prepare_pretraining(tmp_path, small_corpus(0.05), prefix="corpus_")
    declared = load_catalog(params.prepare.catalog)  # what every other stage loads
    for entry in declared.datasets:
        reader = open_reader(entry, declared, params.prepare.series_store)
        expected = apply_corpus(declared, params.corpus).get(entry.name).source.count
        assert len(reader) == expected, entry.name
        assert reader.entry.source.count == expected
    long = open_reader(declared.get("corpus_long"), declared, params.prepare.series_store)
    assert set(long.lengths) == {4096} and long[0].values.shape[0] == 1  # the params' lengths, not the catalog's
    multichannel = open_reader(declared.get("corpus_multichannel_32"), declared, params.prepare.series_store)
    assert multichannel[0].values.shape[0] == 32


def value_hash(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


def test_no_probe_series_reaches_the_distillation_loader(tmp_path):
    """Every pretraining series and segment the distillation loader would read (the default catalog's pretrain sets,
    selected as pipeline/distill/train.py does, opened with open_reader as pipeline/distill/loader.py does) has an
    id and values that no probe series has, generated or real."""
    params = prepare_pretraining(tmp_path, small_corpus(0.02))
    catalog = load_catalog(params.prepare.catalog)
    names = params.distill.datasets or [e.name for e in catalog.datasets if e.role == "pretrain"]
    corpus_names = {name for name in names if name.startswith("corpus_")}
    assert corpus_names == set(DEFAULT_CORPUS_SOURCES)  # the broad corpus is part of what is distilled

    seen_ids, seen_hashes = set(), set()
    for name in names:
        reader = open_reader(catalog.get(name), catalog, params.prepare.series_store)
        segments = segment_series(reader.ids, reader.lengths, params.segments.max_samples)
        seen_ids |= set(reader.ids) | {segment.id for segment in segments}
        for segment in segments:
            values = reader[segment.series_index].values
            seen_hashes.add(value_hash(values))
            seen_hashes.add(value_hash(values[:, segment.start : segment.stop]))
    assert len(seen_ids) > len(names)

    full = load_catalog(ROOT / "data_catalog" / "catalog.yaml")
    probe_ids, probe_hashes, n_probe = set(), set(), 0
    for entry in full.datasets:
        if entry.role != "probe":
            continue
        if isinstance(entry.source, GeneratorSource):
            reader = GeneratorReader(entry)
        else:
            reader = FileReader(entry, ROOT / full.data_root)
        for series in reader:
            probe_ids.add(series.id)
            probe_hashes.add(value_hash(series.values))
            n_probe += 1
    assert n_probe > 2500 and len(probe_hashes) > 0.99 * n_probe
    assert not seen_ids & probe_ids
    assert not seen_hashes & probe_hashes
