"""Teachers do not depend on a series' physical units, and padding never changes a valid token.

Scale: every built-in teacher (each family of the HF adapters, with the tiny random models of test_teachers.py)
gives the same features for x, 1e-21 * x (gravitational-wave strain) and 1e6 * x, and finite features for
all-zero and constant series. Padding: hf_timeseries models give a series' valid tokens unchanged when it is
padded beside a longer one.
"""

import numpy as np
import pytest
import torch

from tests.test_teachers import BUILTIN_TEACHERS, build_tiny_hf_models, builtin_teacher, hf_teacher

# Features of x and c * x agree within this, absolute and relative (assert_allclose: |a - b| <= ATOL + RTOL * |b|).
# The inputs differ only by float32 rounding of c * x (~6e-8 relative) before the float64 rescaling; what is left
# is that rounding passed through each network. Measured max |difference| (features of magnitude 0.2 to 25):
# Chronos 0 (same bins), AST, PatchTST < 3e-7, Whisper 5e-7, spectral, fracast, wav2vec2/HuBERT 2e-6 to 6e-6,
# silero 6e-6, TimesFM 1.6e-5. Without the rescaling, 1e-21 * x gave flat-line features (differences of O(1)).
RTOL = ATOL = 1e-4
SCALES = (1e-21, 1e6)

# Variants beyond test_teachers.py's models: raw-waveform wav2vec2, PatchTST with mean scaling, and PatchTST with
# a [CLS] token and overlapping patches (its first patch starts after step 0 and patches read past the series).
EXTRA = {
    "wav2vec2_raw": ({"kind": "hf_audio", "max_context_seconds": 0.5}, "wav2vec2_raw"),
    "patchtst_mean": ({"kind": "hf_timeseries"}, "patchtst_mean"),
    "patchtst_cls_overlap": ({"kind": "hf_timeseries"}, "patchtst_cls_overlap"),
}
TEACHERS = [*BUILTIN_TEACHERS, *EXTRA]
rng = np.random.default_rng(1)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    import shutil

    from transformers import PatchTSTConfig, PatchTSTModel, Wav2Vec2FeatureExtractor

    root = tmp_path_factory.mktemp("hf_scale")
    dirs = build_tiny_hf_models(root)
    dirs["wav2vec2_raw"] = root / "wav2vec2_raw"
    shutil.copytree(dirs["wav2vec2"], dirs["wav2vec2_raw"])
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(dirs["wav2vec2_raw"])
    torch.manual_seed(1)
    patchtst = {"num_input_channels": 2, "context_length": 64, "d_model": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "ffn_dim": 32}  # fmt: skip
    variants = {
        "patchtst_mean": PatchTSTConfig(**patchtst, patch_length=8, patch_stride=8, scaling="mean"),
        "patchtst_cls_overlap": PatchTSTConfig(**patchtst, patch_length=12, patch_stride=8, use_cls_token=True),
    }
    for name, config in variants.items():
        dirs[name] = root / name
        PatchTSTModel(config).save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def teachers(hf_dirs):
    """One loaded teacher per name, shared by the tests of this module."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            if name in EXTRA:
                spec, model = EXTRA[name]
                fields = {key: value for key, value in spec.items() if key != "kind"}
                loaded[name] = hf_teacher(spec["kind"], hf_dirs[model], **fields)
            else:
                loaded[name] = builtin_teacher(name, hf_dirs)
        return loaded[name]

    return get


def test_input_scaling_follows_what_each_model_expects(teachers):
    expected = {"silero_vad": "peak", "fracast": "none", "spectral": "standard", "wav2vec2": "standard",
                "hubert": "standard", "wav2vec2_raw": "peak", "whisper": "peak", "ast": "peak",
                "patchtst": "standard", "patchtst_mean": "peak", "patchtst_cls_overlap": "standard",
                "timesfm": "standard", "chronos": "none"}  # fmt: skip
    assert {name: teachers(name).input_scaling for name in TEACHERS} == expected


def scale_test_series(channels: int = 2, length: int = 3000) -> np.ndarray:
    """(2, channels, length) float32: random walks plus a tone and an offset, every channel different."""
    t = np.arange(length)
    walk = np.cumsum(rng.standard_normal((2, channels, length)), axis=-1)
    tone = np.sin(2 * np.pi * t / rng.uniform(20, 200, (2, channels, 1)))
    offset = rng.uniform(-30, 30, (2, channels, 1))
    return (walk + 5 * tone + offset).astype(np.float32)


def rescaled(values: np.ndarray, factor: float) -> np.ndarray:
    """factor * values, rounded once to float32 as a reader would give them."""
    return (values.astype(np.float64) * factor).astype(np.float32)


def assert_unit_free(teacher, values: np.ndarray, rate: float | None):
    reference = teacher.encode(values, rate)
    for factor in SCALES:
        got = teacher.encode(rescaled(values, factor), rate)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, reference, rtol=RTOL, atol=ATOL, err_msg=f"{teacher.name} x {factor:g}")


@pytest.mark.parametrize("name", TEACHERS)
def test_features_do_not_depend_on_units(name, teachers):
    """x, 1e-21 x and 1e6 x: same features. 3000 samples: decimation for fracast, several windows for
    PatchTST/TimesFM/Chronos; rate None feeds samples as they are."""
    teacher = teachers(name)
    values = scale_test_series()
    assert_unit_free(teacher, values, None)
    # A tone at 1e-21 must not come out as a flat line: the features of x differ from those of a constant.
    flat = teacher.encode(np.full_like(values, 1e-21), None)
    assert np.abs(teacher.encode(rescaled(values, 1e-21), None) - flat).max() > 100 * ATOL


def test_features_do_not_depend_on_units_at_physical_rates(teachers):
    """The same through resampling: strain at 4096 Hz (resampled to 16 kHz for silero and wav2vec2, two windows
    for the latter; reinterpreted as 256 Hz for spectral)."""
    values = scale_test_series(length=4096)
    for name in ("silero_vad", "spectral", "wav2vec2"):
        assert_unit_free(teachers(name), values, 4096.0)


@pytest.mark.parametrize("name", TEACHERS)
def test_zero_and_constant_series_give_finite_unit_free_features(name, teachers):
    teacher = teachers(name)
    length = 1000
    zeros = teacher.encode(np.zeros((1, 1, length), np.float32), None)
    assert np.isfinite(zeros).all()
    constants = [teacher.encode(np.full((1, 1, length), level, np.float32), None) for level in (3e-21, 1.0, 4e6)]
    for features in constants:
        assert np.isfinite(features).all()
        np.testing.assert_allclose(features, constants[0], rtol=RTOL, atol=ATOL)  # a level alone carries no unit
    # Flat except for float32 rounding of a large level: stays finite, no noise blown up to unit variance.
    nearly_flat = np.float32(1e4) + np.float32(1e-3) * (rng.standard_normal((1, 1, length)) > 0)
    assert np.isfinite(teacher.encode(nearly_flat.astype(np.float32), None)).all()


def test_spectral_band_powers_of_strain_are_those_of_the_same_waveform(teachers):
    """The issue's case: 1e-21 strain kept only relative features; its log band powers now vary with the signal."""
    spectral = teachers("spectral")
    t = np.arange(256 * 8) / 256.0
    chirp = (np.sin(2 * np.pi * (2 + 2 * t) * t) * 1e-21)[None, None].astype(np.float32)
    log_powers = spectral.encode(chirp, 256.0)[0, 1:-1, :5]  # interior tokens, log10 band powers
    assert np.isfinite(log_powers).all() and log_powers.std(axis=0).max() > 0.1


# ---- padding never changes a valid token ------------------------------------------------------------------------
def window_tokens(teacher, windows: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """encode_window as encode runs it (inference mode), as numpy."""
    with torch.inference_mode():
        return teacher.encode_window(windows, lengths).float().numpy()


@pytest.mark.parametrize("name", ["patchtst", "patchtst_mean", "patchtst_cls_overlap", "timesfm", "chronos"])
def test_valid_tokens_do_not_see_padding(name, teachers):
    """A series encoded alone and the same series padded beside a longer one (with any padding content) give the
    same valid tokens."""
    teacher = teachers(name)
    hop = teacher.samples_per_token
    short_length, width = 3 * hop + 3, teacher.max_context  # the short series ends inside a patch
    short = (1e4 + 30 * np.cumsum(rng.standard_normal(short_length))).astype(np.float32)  # a light curve
    longer = (1e4 + 30 * np.cumsum(rng.standard_normal(width))).astype(np.float32)
    alone = window_tokens(teacher, short[None, None])  # (1, tokens, D)
    n_valid = alone.shape[1]
    longer_alone = window_tokens(teacher, longer[None, None])
    for padding in (0.0, -5e4):
        batch = np.stack([np.concatenate([short, np.full(width - short_length, padding, np.float32)]), longer])
        together = window_tokens(teacher, batch[:, None], lengths=np.array([short_length, width]))
        np.testing.assert_allclose(together[:1, :n_valid], alone, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(together[1:], longer_alone, rtol=RTOL, atol=ATOL)


def test_patchtst_padding_used_to_enter_valid_tokens(teachers):
    """Without the key mask and edge padding (the old zero padding), a short series' tokens change when zeros
    follow it: the property above is not trivially true for this model."""
    teacher = teachers("patchtst")
    short = (1e4 + 30 * np.cumsum(rng.standard_normal(27))).astype(np.float32)
    context = np.zeros((2, teacher.config.context_length), np.float32)
    context[0, :27] = short
    observed = np.zeros_like(context)
    observed[0, :27] = 1
    with torch.inference_mode():
        out = teacher.model(past_values=torch.from_numpy(context.T[None]), output_hidden_states=True,
                            past_observed_mask=torch.from_numpy(observed.T[None]))  # fmt: skip
    zero_padded = out.last_hidden_state[0, 0, :4].numpy()
    ours = window_tokens(teacher, short[None, None])[0]
    assert np.abs(zero_padded - ours).max() > 1e-2


def test_lengths_are_checked(teachers):
    teacher = teachers("chronos")
    with pytest.raises(ValueError, match="lengths must be"):
        teacher.encode_window(np.zeros((2, 1, 10), np.float32), lengths=np.array([3, 11]))

