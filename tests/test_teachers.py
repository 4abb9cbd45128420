"""Teacher adapters: the token-grid contract, rates, windows, channels, specs, plug-ins and real weights.

Hugging Face teachers are tested with tiny random-weight models written by save_pretrained into a temp dir and
loaded through the same from_pretrained path users use; silero-vad and fracast load their real wheel weights.
"""

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from pipeline.teachers import load_teacher
from pipeline.teachers.base import RatePlan, rate_plan, resample, stitch_plan, window_starts
from schemas.teachers import HFAudioTeacher, SileroVADTeacher, SpectralTeacher, TeacherSpec

TESTS_DIR = Path(__file__).resolve().parent
rng = np.random.default_rng(0)


def random_series(batch: int, channels: int, length: int) -> np.ndarray:
    return rng.standard_normal((batch, channels, length)).astype(np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_token_contract(teacher, length: int, rate: float, channels: int = 1, batch: int = 2):
    """encode returns exactly num_tokens finite float32 tokens of feature_dim, on the token_rate grid."""
    features = teacher.encode(random_series(batch, channels, length), rate)
    n_tokens = teacher.num_tokens(length, rate)
    assert features.shape == (batch, n_tokens, teacher.feature_dim)
    assert features.dtype == np.float32 and np.isfinite(features).all()
    # The grid covers the series: n tokens of 1/token_rate seconds span its duration, less than one token more.
    duration = length / rate
    assert n_tokens / teacher.token_rate(rate, length) >= duration * (1 - 1e-9)
    assert (n_tokens - 1) / teacher.token_rate(rate, length) < duration


# ---- specs ------------------------------------------------------------------------------------------------
def validate(entry: dict):
    return TypeAdapter(TeacherSpec).validate_python(entry)


def test_spec_defaults_and_feature_config():
    spec = validate({"kind": "silero_vad"})
    assert isinstance(spec, SileroVADTeacher) and spec.layer == "encoder" and spec.rate_policy == "auto"
    config = spec.feature_config()
    assert "batch_size" not in config and "device" not in config  # speed-only fields are not hashed
    assert config["layer"] == "encoder" and config["kind"] == "silero_vad" and config["weights"] == "safetensors"
    assert validate({"kind": "hf_audio", "model_id": "x"}).trust_remote_code is False
    assert validate({"kind": "hf_timeseries", "model_id": "x"}).trust_remote_code is False


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"kind": "wavenet"}, "does not match any of the expected tags"),
        ({"kind": "spectral", "window_second": 2}, "Extra inputs are not permitted"),
        ({"kind": "fracast", "token_pool": "sixteen"}, "valid integer"),
        ({"kind": "hf_audio"}, "model_id"),
        ({"kind": "spectral", "bands": {"a": [1, 4], "b": [5, 8]}}, "contiguous"),
        ({"kind": "spectral", "bands": {"a": [1, 200]}}, "Nyquist"),
        ({"kind": "silero_vad", "rate_policy": "stretch"}, "rate_policy"),
    ],
)
def test_spec_errors(entry, message):
    with pytest.raises(ValidationError, match=message):
        validate(entry)


def test_spectral_band_too_narrow_for_window_is_refused():
    with pytest.raises(ValueError, match="holds no frequency bin"):
        load_teacher("eeg", {"kind": "spectral", "window_seconds": 0.1})


# ---- rates ------------------------------------------------------------------------------------------------
def test_rate_plan_resamples_near_native_and_reinterprets_far_from_it():
    assert rate_plan(16000, 4096) == RatePlan("resample", 125, 32)  # 3.9x: resample
    assert rate_plan(16000, 100) == RatePlan("reinterpret")  # 160x: a time stretch
    assert rate_plan(16000, 100, policy="resample") == RatePlan("resample", 160, 1)
    assert rate_plan(16000, 8000, policy="reinterpret") == RatePlan("reinterpret")
    assert rate_plan(256, 250) == RatePlan("resample", 128, 125)
    assert rate_plan(16000, 16000) == RatePlan("as_is")
    assert rate_plan(None, 1e-5) == RatePlan("as_is")  # rate-agnostic teachers never resample
    with pytest.raises(ValueError, match="sampling_rate"):
        rate_plan(16000, 0.0)


@pytest.mark.parametrize("policy", ["auto", "resample", "reinterpret", "anything"])
def test_unknown_rate_is_taken_as_is_whatever_the_policy(policy):
    assert rate_plan(16000, None, policy) == RatePlan("as_is")
    assert rate_plan(None, None, policy) == RatePlan("as_is")


def test_resampling_keeps_a_sine_at_its_frequency():
    rate, frequency = 4096.0, 440.0
    t = np.arange(4096) / rate
    sine = np.sin(2 * np.pi * frequency * t).astype(np.float32)[None, None]
    plan = rate_plan(16000, rate)
    out = resample(sine, plan)[0, 0]
    assert out.shape == (math.ceil(4096 * plan.up / plan.down),)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    peak = np.fft.rfftfreq(out.size, d=1 / 16000)[spectrum.argmax()]
    assert abs(peak - frequency) < 2.0
    # A constant keeps its level up to the edges (no ramp to zero from zero padding).
    constant = resample(np.full((1, 1, 50), 7.0, np.float32), plan)
    assert np.allclose(constant, 7.0, atol=1e-5)  # the level is taken out before filtering: no ripple from it
    # A small signal on a large offset (a light curve at 1e4 +- 1) keeps its shape: the filter's ripple on the
    # offset (~6e-4 of it, 6 here) would otherwise swamp it.
    wiggle = np.sin(2 * np.pi * np.arange(200) / 40)
    on_offset = resample((1e4 + wiggle).astype(np.float32)[None, None], plan)[0, 0]
    alone = resample(wiggle.astype(np.float32)[None, None], plan)[0, 0]
    assert np.abs((on_offset - 1e4) - alone).max() < 0.01


def test_token_rate_follows_the_rate_decision(silero):
    assert silero.token_rate(8000) == pytest.approx(16000 / 512)  # resampled: native grid
    assert silero.token_rate(100) == pytest.approx(100 / 512)  # reinterpreted: 512 original samples per token
    assert silero.num_tokens(8000, 8000) == 32  # 1 s -> 16000 samples -> 31.25 frames -> 32 tokens
    assert silero.num_tokens(8000, 100) == 16  # 8000 samples as if at 16 kHz -> 15.6 -> 16


# ---- windows ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_tokens, window, overlap", [(10, 10, 0.25), (11, 10, 0.25), (100, 16, 0.5), (37, 8, 0.0)])
def test_windows_tile_the_tokens_and_keep_centres(n_tokens, window, overlap):
    starts = window_starts(n_tokens, window, overlap)
    assert starts[0] == 0 and starts[-1] + window == max(n_tokens, window)
    ranges = stitch_plan(starts, window, n_tokens)
    assert ranges[0][0] == 0 and ranges[-1][1] == n_tokens
    for (lo, hi), (next_lo, _), start in zip(ranges, ranges[1:] + [(n_tokens, None)], starts):
        assert hi == next_lo and start <= lo <= hi <= start + window  # contiguous, inside the window
    if overlap > 0 and len(starts) > 2:  # interior windows drop tokens at both edges
        lo, hi = ranges[1]
        assert lo > starts[1] and hi < starts[1] + window


def test_stitched_windows_match_one_pass_for_a_local_teacher():
    """The spectral teacher is local (each token sees its own window), so stitching must be exact."""
    one_pass = load_teacher("eeg", {"kind": "spectral"})
    windowed = load_teacher("eeg", {"kind": "spectral", "window_overlap": 0.5})
    windowed.max_context = 8 * windowed.samples_per_token  # force many windows
    values = random_series(2, 3, 256 * 40 + 77)
    expected = one_pass.encode(values, 256.0)
    got = windowed.encode(values, 256.0)
    assert got.shape == expected.shape == (2, 41, 28)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_stitched_windows_match_one_pass_for_silero_encoder(silero):
    windowed = load_teacher("vad", {"kind": "silero_vad", "max_context_seconds": 0.5})
    assert windowed.max_context == 15 * 512
    values = random_series(1, 1, 16000 * 2 + 123)
    np.testing.assert_allclose(windowed.encode(values, 16000.0), silero.encode(values, 16000.0), atol=1e-5)


# ---- channels, input checks ---------------------------------------------------------------------------------
def test_channel_count_never_changes_feature_dim(spectral, silero):
    for teacher in (spectral, silero):
        for channels in (1, 3, 16):
            assert teacher.encode(random_series(1, channels, 600), 250.0).shape[-1] == teacher.feature_dim


def test_channel_independent_teachers_average_over_channels(silero):
    one = random_series(1, 1, 4000)
    other = random_series(1, 1, 4000)
    pair = np.concatenate([one, other], axis=1)
    expected = (silero.encode(one, 16000.0) + silero.encode(other, 16000.0)) / 2
    np.testing.assert_allclose(silero.encode(pair, 16000.0), expected, atol=1e-6)


def test_spectral_reduces_channels_by_mean_and_std(spectral):
    one = random_series(1, 1, 1024)
    features = spectral.encode(one, 256.0)
    half = spectral.features_per_channel
    assert np.all(features[..., half:] == 0)  # one channel: std part is zero
    twice = spectral.encode(np.concatenate([one, one], axis=1), 256.0)
    np.testing.assert_allclose(twice, features, atol=1e-5)
    mixed = spectral.encode(np.concatenate([one, 3 * random_series(1, 1, 1024)], axis=1), 256.0)
    assert np.all(mixed[..., half:].max(axis=1) > 0)


def test_spectral_features_see_the_right_band(spectral):
    t = np.arange(256 * 8) / 256.0
    alpha = np.sin(2 * np.pi * 10 * t)[None, None].astype(np.float32)
    features = spectral.encode(alpha, 256.0)[0, 2:-2]  # interior tokens
    relative = features[:, 5:10]  # delta, theta, alpha, beta, gamma relative powers
    assert np.all(relative.argmax(axis=1) == 2) and np.all(relative[:, 2] > 0.9)
    assert np.all(features[:, 10] < 0.3)  # a pure tone has low spectral entropy


def test_non_finite_input_is_refused_with_the_item(spectral):
    values = random_series(3, 2, 500)
    values[2, 1, 10] = np.nan
    with pytest.raises(ValueError, match=r"non-finite .*item\(s\) \[2\]"):
        spectral.encode(values, 256.0)
    with pytest.raises(ValueError, match="batch, channels, time"):
        spectral.encode(values[0], 256.0)


# ---- built-in teachers with real weights ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def silero():
    return load_teacher("silero_vad", {"kind": "silero_vad", "device": "cpu"})


@pytest.fixture(scope="module")
def fracast():
    return load_teacher("fracast", {"kind": "fracast", "device": "cpu"})


@pytest.fixture(scope="module")
def spectral():
    return load_teacher("spectral", {"kind": "spectral"})


@pytest.mark.parametrize("length, rate", [(1, 100.0), (511, 16000.0), (16384, 4096.0), (6000, 100.0), (1000, 250.0)])
def test_silero_token_counts(silero, length, rate):
    assert_token_contract(silero, length, rate, batch=1)


def test_silero_loads_the_wheel_safetensors_offline(monkeypatch):
    import importlib.metadata
    import sys

    for module in [m for m in sys.modules if m.split(".")[0] == "silero_vad"]:
        monkeypatch.delitem(sys.modules, module)
    threads = torch.get_num_threads()
    teacher = load_teacher("silero_vad", {"kind": "silero_vad", "device": "cpu"})
    # Importing the silero_vad package would pin torch to one thread for the whole process.
    assert torch.get_num_threads() == threads and "silero_vad" not in sys.modules
    described = teacher.describe()
    weights = importlib.metadata.distribution("silero-vad").locate_file("silero_vad/data/silero_vad_16k.safetensors")
    assert described["weights_sha256"] == sha256(weights)
    assert described["native_rate"] == 16000 and teacher.feature_dim == 128 and teacher.token_rate(16000) == 31.25


def test_silero_module_reproduces_the_torchscript_vad():
    """With the TorchScript model's parameters our module gives its speech probabilities: the architecture and
    framing (64 samples of context, reflect padding, 512-sample frames) are the network's."""
    teacher = load_teacher("vad", {"kind": "silero_vad", "weights": "jit", "device": "cpu"})
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad

        scripted = load_silero_vad()
    finally:
        torch.set_num_threads(threads)  # undo the package's import-time set_num_threads(1)
    t = np.arange(16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    with torch.inference_mode():
        expected = [scripted(torch.from_numpy(audio[None, i : i + 512]), 16000).item() for i in range(0, 15872, 512)]
        from pipeline.teachers.silero_vad import frames_of

        features = teacher.net.encoder(frames_of(torch.from_numpy(audio)[None])[0])[None]
        ours = teacher.net.speech_probability(teacher.net.decoder_states(features))[0, : len(expected)]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5)


def test_silero_lstm_layer_carries_context(silero):
    lstm = load_teacher("vad", {"kind": "silero_vad", "layer": "lstm", "device": "cpu"})
    values = random_series(1, 1, 16000)
    encoder_features, lstm_features = silero.encode(values, 16000.0), lstm.encode(values, 16000.0)
    assert lstm_features.shape == encoder_features.shape
    assert not np.allclose(lstm_features, encoder_features)
    assert np.abs(lstm_features).max() <= 1.0  # LSTM hidden states are bounded by tanh


@pytest.mark.parametrize("length, rate", [(1, 1e-5), (33, 1.0), (2048, 100.0), (4500, 4096.0)])
def test_fracast_token_counts(fracast, length, rate):
    assert_token_contract(fracast, length, rate, batch=1)
    factor = -(-length // 2048)  # longer inputs are decimated to fit one 2048-step context
    assert fracast.token_rate(rate, length) == pytest.approx(rate / 16 / factor)  # rate-agnostic: 16 steps per token


def test_fracast_decimates_long_inputs_or_stitches_windows():
    decimating = load_teacher("fracast", {"kind": "fracast", "device": "cpu"})
    windowed = load_teacher("fracast", {"kind": "fracast", "device": "cpu", "max_steps": None})
    x = np.cumsum(rng.standard_normal((1, 1, 6000)), axis=-1).astype(np.float32)
    assert decimating.encode(x, 1.0).shape == (1, decimating.num_tokens(6000, 1.0), 64) == (1, 125, 64)
    assert windowed.encode(x, 1.0).shape == (1, windowed.num_tokens(6000, 1.0), 64) == (1, 375, 64)
    # decimation is anti-aliased polyphase by ceil(6000 / 2048) = 3, then one window of the model
    decimated = resample(x, RatePlan("resample", 1, 3))
    np.testing.assert_allclose(decimating.encode(x, 1.0), windowed.encode(decimated, 1.0), rtol=1e-5, atol=1e-5)


def test_fracast_features_are_the_core_of_the_bundled_model(fracast):
    """One full window equals fracast's own core on its own min-max scaling, pooled by 16 steps."""
    from fracast import FracastModel

    model = FracastModel.from_pretrained()
    x = np.cumsum(rng.standard_normal(2048)).astype(np.float32) * 50 + 1000  # units must not matter
    scaled = (x - x.min()) / (x.max() - x.min())
    values = torch.from_numpy(scaled)[None, None]
    valid = torch.ones_like(values, dtype=torch.bool)
    with torch.inference_mode():
        steps = model.core(values, valid, valid.float())[0]  # (2048, 64)
    expected = steps.view(128, 16, 64).mean(dim=1).numpy()
    np.testing.assert_allclose(fracast.encode(x[None, None], 1.0)[0], expected, atol=1e-4)
    described = fracast.describe()
    release = [fracast.model_dir / "model.int8.safetensors", fracast.model_dir / "w8_manifest.json"]
    assert described["weights_sha256"] == hashlib.sha256(b"".join(f.read_bytes() for f in release)).hexdigest()
    assert described["model_id"] == "fracast:bundled" and fracast.native_rate is None


def test_fracast_layer_selects_a_dilation_stage():
    final = load_teacher("fracast", {"kind": "fracast", "token_pool": 32, "device": "cpu"})
    stage = load_teacher("fracast", {"kind": "fracast", "layer": 3, "token_pool": 32, "device": "cpu"})
    x = random_series(1, 1, 300)
    assert stage.encode(x, 1.0).shape == final.encode(x, 1.0).shape == (1, 10, 64)
    assert not np.allclose(stage.encode(x, 1.0), final.encode(x, 1.0), atol=1e-2)
    with pytest.raises(ValueError, match="layer 10 out of range"):
        load_teacher("fracast", {"kind": "fracast", "layer": 10})


@pytest.mark.parametrize("length, rate", [(1, 100.0), (100, 100.0), (3000, 100.0), (1000, 250.0), (16384, 4096.0)])
def test_spectral_token_counts(spectral, length, rate):
    assert_token_contract(spectral, length, rate, channels=3)
    assert spectral.describe()["weights_sha256"] == "none"


# ---- Hugging Face teachers: tiny random models through from_pretrained ----------------------------------------
@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    return build_tiny_hf_models(tmp_path_factory.mktemp("hf"))


def build_tiny_hf_models(root: Path) -> dict[str, Path]:
    """save_pretrained directories of tiny random-weight models (and their feature extractors) under root."""
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTModel,
        HubertConfig,
        HubertModel,
        PatchTSTConfig,
        PatchTSTModel,
        T5Config,
        T5EncoderModel,
        TimesFmConfig,
        TimesFmModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperModel,
    )

    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    w2v_conv = {"conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 8), "num_conv_pos_embeddings": 16,
                "num_conv_pos_embedding_groups": 2}  # fmt: skip
    models = {
        "wav2vec2": (Wav2Vec2Model(Wav2Vec2Config(**tiny, **w2v_conv)), Wav2Vec2FeatureExtractor(do_normalize=True)),
        "hubert": (HubertModel(HubertConfig(**tiny, **w2v_conv)), Wav2Vec2FeatureExtractor(do_normalize=True)),
        "whisper": (
            WhisperModel(WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                                       decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                       max_source_positions=50, num_mel_bins=16, vocab_size=100,
                                       max_target_positions=20, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                       decoder_start_token_id=1)),  # fmt: skip
            WhisperFeatureExtractor(feature_size=16, chunk_length=1),  # 1 s = 100 mel frames = 50 tokens
        ),
        "ast": (ASTModel(ASTConfig(**tiny, num_mel_bins=32, max_length=64)),
                ASTFeatureExtractor(num_mel_bins=32, max_length=64)),
        "patchtst": (PatchTSTModel(PatchTSTConfig(num_input_channels=2, context_length=64, patch_length=8,
                                                  patch_stride=8, d_model=16, num_hidden_layers=2,
                                                  num_attention_heads=2, ffn_dim=32, do_mask_input=True)), None),
        "timesfm": (TimesFmModel(TimesFmConfig(patch_length=8, context_length=64, horizon_length=8, hidden_size=16,
                                               intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               head_dim=8)), None),
        "chronos": (T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                            num_heads=2)), None),
    }  # fmt: skip
    dirs = {}
    for name, (model, extractor) in models.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        if extractor is not None:
            extractor.save_pretrained(dirs[name])
    return dirs


def hf_teacher(kind: str, model_dir: Path, **fields):
    return load_teacher(model_dir.name, {"kind": kind, "model_id": str(model_dir), "device": "cpu", **fields})


@pytest.mark.parametrize("family, hop", [("wav2vec2", 20), ("hubert", 20), ("whisper", 320), ("ast", 1600)])
def test_hf_audio_token_counts(hf_dirs, family, hop):
    teacher = hf_teacher("hf_audio", hf_dirs[family], max_context_seconds=0.5)
    assert teacher.samples_per_token == hop and teacher.feature_dim == 32 and teacher.native_rate == 16000
    lengths = [1, hop - 1, 5 * hop + 3, teacher.max_context, 3 * teacher.max_context + 7]  # last: several windows
    for length in lengths:
        assert_token_contract(teacher, length, 16000.0)
    assert_token_contract(teacher, 2000, 8000.0, channels=3)  # resampled 2x
    described = teacher.describe()
    assert described["weights_sha256"] == sha256(hf_dirs[family] / "model.safetensors")
    assert described["family"] == {"hubert": "wav2vec2"}.get(family, family)


def test_hf_audio_layer_and_window_limits(hf_dirs):
    whisper = hf_teacher("hf_audio", hf_dirs["whisper"])
    assert whisper.max_context == 16000  # the extractor's fixed 1 s (chunk_length) caps max_context_seconds
    values = random_series(1, 1, 3000)
    first = hf_teacher("hf_audio", hf_dirs["wav2vec2"], layer=0).encode(values, 16000.0)
    last = hf_teacher("hf_audio", hf_dirs["wav2vec2"]).encode(values, 16000.0)
    assert first.shape == last.shape and not np.allclose(first, last)
    with pytest.raises(ValueError, match="layer 3 out of range"):
        hf_teacher("hf_audio", hf_dirs["wav2vec2"], layer=3)


def test_hf_timeseries_token_counts(hf_dirs):
    for family, hop, window in (("patchtst", 8, 64), ("timesfm", 8, 64), ("chronos", 16, 512)):
        teacher = hf_teacher("hf_timeseries", hf_dirs[family])
        assert teacher.samples_per_token == hop and teacher.max_context == window and teacher.native_rate is None
        for length in (1, 9, window, 3 * window + 5):
            assert_token_contract(teacher, length, 1 / 1800)  # a 30-minute cadence: no resampling
        assert teacher.describe()["weights_sha256"] == sha256(hf_dirs[family] / "model.safetensors")


def test_patchtst_packs_series_into_channel_slots_without_mixing(hf_dirs):
    teacher = hf_teacher("hf_timeseries", hf_dirs["patchtst"])
    assert not teacher.model.do_mask_input  # pre-training masking is off: features are deterministic
    values = random_series(3, 1, 50)  # three series share two 2-slot groups
    together = teacher.encode(values, 1.0)
    alone = np.concatenate([teacher.encode(values[i : i + 1], 1.0) for i in range(3)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_chronos_style_tokens_are_mean_scaled_and_binned(hf_dirs):
    teacher = hf_teacher("hf_timeseries", hf_dirs["chronos"], token_pool=4)
    assert teacher.chronos["n_tokens"] == 64 and teacher.chronos["low_limit"] == -15.0
    x = random_series(1, 1, 100)
    np.testing.assert_allclose(teacher.encode(x, 1.0), teacher.encode(1000 * x, 1.0), atol=1e-5)  # mean scaling
    assert not np.allclose(teacher.encode(x, 1.0), teacher.encode(x + 5, 1.0), atol=1e-3)  # values are binned
    with pytest.raises(ValueError, match="token_pool applies to Chronos-style"):
        hf_teacher("hf_timeseries", hf_dirs["timesfm"], token_pool=4)


# Every built-in teacher (and each family of the HF adapters): spec, and the tiny model it needs (hf_dirs key).
BUILTIN_TEACHERS = {
    "silero_vad": ({"kind": "silero_vad"}, None),
    "fracast": ({"kind": "fracast"}, None),
    "spectral": ({"kind": "spectral"}, None),
    "wav2vec2": ({"kind": "hf_audio", "max_context_seconds": 0.5}, "wav2vec2"),
    "hubert": ({"kind": "hf_audio", "max_context_seconds": 0.5}, "hubert"),
    "whisper": ({"kind": "hf_audio"}, "whisper"),
    "ast": ({"kind": "hf_audio"}, "ast"),
    "patchtst": ({"kind": "hf_timeseries"}, "patchtst"),
    "timesfm": ({"kind": "hf_timeseries"}, "timesfm"),
    "chronos": ({"kind": "hf_timeseries"}, "chronos"),
}


def builtin_teacher(name: str, hf_dirs: dict[str, Path], **fields):
    spec, model = BUILTIN_TEACHERS[name]
    spec = {**spec, **({} if spec["kind"] == "spectral" else {"device": "cpu"}), **fields}
    if model is not None:
        spec["model_id"] = str(hf_dirs[model])
    return load_teacher(name, spec)


@pytest.mark.parametrize("name", list(BUILTIN_TEACHERS))
def test_unknown_rate_feeds_samples_as_native_with_tokens_per_sample(name, hf_dirs):
    """sampling_rate None: no resampling under any policy, the tokens of the native rate, token_rate per sample."""
    teacher = builtin_teacher(name, hf_dirs)
    native = teacher.native_rate or 1.0  # rate-agnostic teachers: any rate is taken as is
    for length in (1, 700, 5000):  # 5000: fracast decimates by 3, silero/wav2vec2/whisper/ast use windows
        n_tokens = teacher.num_tokens(length, None)
        assert n_tokens == teacher.num_tokens(length, native)
        per_sample = teacher.token_rate(None, length)
        assert per_sample == pytest.approx(teacher.token_rate(native, length) / native)
        assert n_tokens / per_sample >= length and (n_tokens - 1) / per_sample < length  # times in samples
    values = random_series(1, 2, 5000)
    np.testing.assert_array_equal(teacher.encode(values, None), teacher.encode(values, native))
    if teacher.native_rate is not None:  # a rate far from native would be resampled: None never is
        forced = builtin_teacher(name, hf_dirs, rate_policy="resample")
        assert forced.num_tokens(5000, None) == teacher.num_tokens(5000, native)
        assert forced.num_tokens(5000, native / 2) > forced.num_tokens(5000, None)


def test_trust_remote_code_is_off_unless_asked_and_warns_when_on(hf_dirs, caplog):
    with caplog.at_level(logging.WARNING):
        hf_teacher("hf_timeseries", hf_dirs["timesfm"])
    assert "trust_remote_code" not in caplog.text
    with caplog.at_level(logging.WARNING):
        hf_teacher("hf_timeseries", hf_dirs["timesfm"], trust_remote_code=True)
    assert "trust_remote_code is on" in caplog.text


def test_only_safetensors_weights_load(hf_dirs, tmp_path):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(hf_dirs["timesfm"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        hf_teacher("hf_timeseries", pickled)


def test_unknown_hub_id_fails_fast_and_clearly_offline():
    with pytest.raises(FileNotFoundError, match="not a local directory .*HF_HUB_OFFLINE"):
        load_teacher("w2v", HFAudioTeacher(model_id="nobody/no-such-model"))


# ---- plug-ins ---------------------------------------------------------------------------------------------
@pytest.fixture
def plugin_installed(tmp_path, monkeypatch):
    """Register tests/teachers_plugin_example.py in the entry-point group, as an installed package would."""
    dist_info = tmp_path / "tiny_eeg_teachers-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-eeg-teachers\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[step_pipeline.teachers]\n"
        "tiny_eeg = teachers_plugin_example:EEGConvTeacher\n"
        "broken = teachers_plugin_example:not_an_adapter\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(TESTS_DIR))


def test_plugin_teacher_is_discovered_and_sees_all_channels(plugin_installed):
    teacher = load_teacher("eeg", {"kind": "plugin", "entry_point": "tiny_eeg", "options": {"hop": 16}})
    assert type(teacher).__name__ == "EEGConvTeacher" and teacher.feature_dim == 16
    for channels in (1, 5, 58):
        assert_token_contract(teacher, 300, 128.0, channels=channels)
    assert_token_contract(teacher, 16 * 16 * 3 + 5, 128.0, channels=4)  # several windows
    assert_token_contract(teacher, 1000, 250.0, channels=2)  # resampled to 128 Hz
    values = random_series(1, 4, 256)
    changed = values.copy()
    changed[0, 3] += 10  # one channel changes -> the joint features change
    assert not np.allclose(teacher.encode(values, 128.0), teacher.encode(changed, 128.0))


def test_plugin_errors_name_the_problem(plugin_installed):
    with pytest.raises(LookupError, match=r"no teacher plug-in 'cbramod'.*tiny_eeg"):
        load_teacher("eeg", {"kind": "plugin", "entry_point": "cbramod"})
    with pytest.raises(TypeError, match="not a pipeline.teachers.base.TeacherAdapter"):
        load_teacher("eeg", {"kind": "plugin", "entry_point": "broken"})


def test_default_params_teachers_load_offline(silero, fracast, spectral):
    """The embedded default teachers cover the three domains."""
    assert [t.domain for t in (silero, fracast, spectral)] == ["audio", "timeseries", "brain"]
    assert SpectralTeacher().native_rate == 256.0
