"""The paper's teacher families: hf_remote_code (Time-MoE-style remote code), moment, mantis, braindecode, and the
`paper` preset (params-paper.yaml).

Every model is a tiny random-weight instance written to disk in its published format and loaded offline through the
adapter's own loading path (from_pretrained of a local directory, or our loader over config.json +
model.safetensors). MOMENT and Mantis are checked against reference outputs that the upstream packages' own code
(momentfm 0.1.4, mantis-tsfm 1.1.0) computed for the fixture checkpoints in tests/fixtures (those packages cannot be
installed beside this project's numpy/pandas/transformers). braindecode's CBraMod and Labram are tested when
braindecode imports (the `braindecode` extra plus `pip install --no-deps braindecode==1.8.1`); the stand-ins in
tests/paper_teacher_standins.py test the adapter's logic everywhere.
"""

import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter, ValidationError
from safetensors.torch import load_file, save_file

from pipeline.teachers import load_teacher
from pipeline.teachers.base import standardized
from schemas.teachers import BraindecodeTeacher, HFRemoteCodeTeacher, TeacherSpec

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ImportError:
        return False


HAS_BRAINDECODE = _installed("braindecode")
needs_braindecode = pytest.mark.skipif(
    not HAS_BRAINDECODE,
    reason="braindecode not installed (pip install -e '.[braindecode]' && pip install --no-deps braindecode==1.8.1); "
    "the stand-in tests cover the adapter logic",
)
rng = np.random.default_rng(0)
# Importing braindecode imports wfdb and builds MNE montages, which warn about their own deprecations.
pytestmark = [pytest.mark.filterwarnings("ignore:The inplace keyword"),
              pytest.mark.filterwarnings("ignore:Montage name 'standard_1020' is deprecated")]


def random_series(batch: int, channels: int, length: int) -> np.ndarray:
    return rng.standard_normal((batch, channels, length)).astype(np.float32)


def assert_token_contract(teacher, length: int, rate: float, channels: int = 1, batch: int = 2):
    """encode gives exactly num_tokens finite float32 tokens of feature_dim, the same for any units."""
    values = random_series(batch, channels, length)
    features = teacher.encode(values, rate)
    assert features.shape == (batch, teacher.num_tokens(length, rate), teacher.feature_dim)
    assert features.dtype == np.float32 and np.isfinite(features).all()
    if length > 1:
        np.testing.assert_allclose(teacher.encode(values * 1e-21 + 3e-21, rate), features, atol=2e-4, rtol=1e-3)


def validate(entry: dict):
    return TypeAdapter(TeacherSpec).validate_python(entry)


# ---- specs -----------------------------------------------------------------------------------------------------
def test_specs_of_the_new_kinds():
    remote = validate({"kind": "hf_remote_code", "model_id": "Maple728/TimeMoE-50M"})
    assert isinstance(remote, HFRemoteCodeTeacher) and remote.trust_remote_code is False
    assert remote.max_context == 2048 and remote.token_pool == 16 and "batch_size" not in remote.feature_config()
    assert validate({"kind": "moment", "model_id": "AutonLab/MOMENT-1-large"}).layer == -1
    assert validate({"kind": "mantis", "model_id": "paris-noah/Mantis-8M"}).kind == "mantis"
    brain = validate({"kind": "braindecode", "model_class": "Labram", "model_id": "x",
                      "channel_names": {"2": ["C3", "C4"]}})
    assert isinstance(brain, BraindecodeTeacher) and brain.channel_names == {2: ["C3", "C4"]}  # YAML keys -> counts
    for entry, message in [
        ({"kind": "braindecode", "model_id": "x"}, "model_class"),
        ({"kind": "braindecode", "model_id": "x", "model_class": "CBraMod", "family": "biot"}, "family"),
        ({"kind": "hf_remote_code", "model_id": "x", "token_pool": 0}, "token_pool"),
        ({"kind": "moment", "model_id": "x", "patch_len": 8}, "Extra inputs"),
    ]:
        with pytest.raises(ValidationError, match=message):
            validate(entry)


# ---- hf_remote_code: a tiny repository carrying its own modeling code ------------------------------------------
@pytest.fixture(scope="module")
def remote_code_dir(tmp_path_factory):
    """tests/fixtures/tiny_remote_ts (config.json with auto_map + configuration/modeling .py files) with random weights
    written by the model class that transformers loads from those files."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from pipeline.teachers.hf_remote_code import _transformers4_modules

    repo = tmp_path_factory.mktemp("remote") / "tiny_ts"
    shutil.copytree(FIXTURES / "tiny_remote_ts", repo)
    torch.manual_seed(0)
    with _transformers4_modules(True):  # the code imports transformers.modeling_attn_mask_utils, as Time-MoE's
        config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, attn_implementation="eager")
    model.save_pretrained(repo)
    assert json.loads((repo / "config.json").read_text())["auto_map"]
    return repo


def remote_teacher(model_dir: Path, **fields):
    spec = {"kind": "hf_remote_code", "model_id": str(model_dir), "trust_remote_code": True, "device": "cpu",
            "transformers4_compat": True, "max_context": 64, "token_pool": 8, **fields}
    return load_teacher("timemoe", spec)


def test_remote_code_is_refused_unless_trusted_and_warns_when_on(remote_code_dir, caplog):
    with pytest.raises(ValueError, match="ships its own modeling code .* set trust_remote_code: true"):
        load_teacher("timemoe", {"kind": "hf_remote_code", "model_id": str(remote_code_dir), "device": "cpu"})
    with caplog.at_level(logging.WARNING):
        teacher = remote_teacher(remote_code_dir)
    assert "trust_remote_code is on" in caplog.text
    assert type(teacher.model).__name__ == "TinyTSForPrediction"  # the repository's own class
    described = teacher.describe()
    assert described["code_sha256"] and described["weights_sha256"] and described["trust_remote_code"] is True
    with pytest.raises(ValueError, match="auto_class 'model' needs AutoModel"):
        remote_teacher(remote_code_dir, auto_class="model")


def test_remote_code_runs_in_float32_whatever_the_checkpoint_dtype(remote_code_dir, tmp_path):
    """transformers 5 would load a bf16 checkpoint as bf16, which float32 input cannot go through."""
    from safetensors.torch import load_file, save_file

    bf16 = tmp_path / "tiny_ts_bf16"
    shutil.copytree(remote_code_dir, bf16)
    state = load_file(bf16 / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, bf16 / "model.safetensors")
    config = json.loads((bf16 / "config.json").read_text())
    (bf16 / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16", "torch_dtype": "bfloat16"}))
    teacher = remote_teacher(bf16)
    assert next(teacher.model.parameters()).dtype == torch.float32
    assert_token_contract(teacher, 100, 1.0)


def test_transformers4_code_needs_the_compat_flag(remote_code_dir, tmp_path, monkeypatch):
    """Where transformers lacks modeling_attn_mask_utils (5.0 to 5.24; hidden here, so on every version), code
    written for transformers 4 (as Time-MoE's) fails to import without transformers4_compat, and the error says so;
    with it, the code imports the compat function, which is gone from sys.modules after, and the features are those
    loaded as this transformers is (with its own function where it has one: 5.25+). A fresh directory name, so
    transformers imports the code anew rather than reusing the loaded module."""
    from pipeline.teachers.hf_remote_code import MASK_UTILS, _prepare_4d_causal_attention_mask

    series = [random_series(1, 1, length) for length in (1, 40, 3 * 64 + 5)]
    expected = [remote_teacher(remote_code_dir).encode(x, 1.0) for x in series]
    monkeypatch.setitem(sys.modules, MASK_UTILS, None)  # importing it now fails, as where transformers lacks it
    fresh = tmp_path / "tiny_ts_unpatched"
    shutil.copytree(remote_code_dir, fresh)
    with pytest.raises(ImportError, match="written for transformers 4 .* set transformers4_compat: true"):
        remote_teacher(fresh, transformers4_compat=False)
    teacher = remote_teacher(fresh)
    code = sys.modules[type(teacher.model).__module__]  # the fixture's modeling code, imported anew
    assert code._prepare_4d_causal_attention_mask is _prepare_4d_causal_attention_mask
    assert sys.modules[MASK_UTILS] is None  # provided only while the code loaded
    for x, features in zip(series, expected):
        np.testing.assert_allclose(teacher.encode(x, 1.0), features, atol=1e-6)


def test_transformers4_causal_mask():
    """The compat _prepare_4d_causal_attention_mask: 0 on and below the diagonal, the dtype's min above it; padded
    keys masked; past keys visible; a sliding window hides keys too far back; no mask for a single step, as 4.x."""
    from pipeline.teachers.hf_remote_code import _prepare_4d_causal_attention_mask as prepare

    embeds = torch.zeros(2, 4, 3)
    minimum = torch.finfo(torch.float32).min
    causal = prepare(None, (2, 4), embeds, 0)
    assert causal.shape == (2, 1, 4, 4)
    assert torch.equal(causal[0, 0] == 0, torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert (causal[0, 0][~torch.tril(torch.ones(4, 4, dtype=torch.bool))] == minimum).all()
    padded = prepare(torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]), (2, 4), embeds, 0)
    assert (padded[1, 0, :, 0] == minimum).all() and torch.equal(padded[0], causal[0])
    with_past = prepare(None, (1, 2), embeds[:1, :2], 3)
    assert with_past.shape == (1, 1, 2, 5) and (with_past[0, 0, 0, :4] == 0).all() and with_past[0, 0, 0, 4] == minimum
    window = prepare(None, (1, 4), embeds[:1], 0, sliding_window=2)
    assert window[0, 0, 3, 0] == minimum and window[0, 0, 3, 1] == 0
    assert prepare(None, (2, 1), embeds[:, :1], 0) is None


@pytest.mark.filterwarnings("ignore::FutureWarning")  # 5.25 deprecates the module it brought back
def test_transformers4_causal_mask_is_transformers_own():
    """Where transformers has modeling_attn_mask_utils (4.x, 5.25+), the compat function gives the masks its own
    function gives."""
    from pipeline.teachers.hf_remote_code import MASK_UTILS, _prepare_4d_causal_attention_mask as compat

    own = pytest.importorskip(MASK_UTILS)._prepare_4d_causal_attention_mask
    embeds = torch.zeros(2, 4, 3)
    padding = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    visible = torch.tril(torch.ones(4, 4))[None, None].expand(2, 1, 4, 4)
    for args in [(None, (2, 4), embeds, 0), (None, (2, 1), embeds[:, :1], 0), (None, (1, 2), embeds[:1, :2], 3),
                 (padding, (2, 4), embeds, 0), (padding, (2, 1), embeds[:, :1], 3), (visible, (2, 4), embeds, 0),
                 (None, (1, 4), embeds[:1], 0, 2), (None, (1, 1), embeds[:1, :1], 2, 2)]:
        mine, theirs = compat(*args), own(*args)
        assert (mine is None and theirs is None) or torch.equal(mine, theirs), args


def test_remote_code_token_counts_and_windows(remote_code_dir):
    teacher = remote_teacher(remote_code_dir)
    assert teacher.samples_per_token == 8 and teacher.max_context == 64 and teacher.feature_dim == 16
    for length in (1, 9, 64, 3 * 64 + 5):  # the last needs stitched windows
        assert_token_contract(teacher, length, 1 / 1800, channels=2)


def test_remote_code_features_are_the_models_pooled_hidden_states(remote_code_dir):
    teacher = remote_teacher(remote_code_dir, layer=1)
    x = random_series(1, 1, 40)
    with torch.inference_mode():
        steps = teacher.model(input_ids=torch.from_numpy(standardized(x)[:, 0]), output_hidden_states=True)
    expected = torch.cat([steps.hidden_states[1][:, :32].reshape(1, 4, 8, -1).mean(2),
                          steps.hidden_states[1][:, 32:].mean(1, keepdim=True)], dim=1)  # 5 tokens, the last of 8 steps
    np.testing.assert_allclose(teacher.encode(x, 1.0), expected.numpy(), atol=1e-5)
    assert not np.allclose(teacher.encode(x, 1.0), remote_teacher(remote_code_dir).encode(x, 1.0))
    with pytest.raises(ValueError, match="layer 3 out of range"):
        remote_teacher(remote_code_dir, layer=3)


# ---- MOMENT: our encoder over momentfm's checkpoint format ------------------------------------------------------
@pytest.fixture(scope="module")
def moment():
    return load_teacher("moment", {"kind": "moment", "model_id": str(FIXTURES / "moment_tiny"), "device": "cpu"})


def test_moment_matches_momentfm_embeddings(moment):
    """tests/fixtures/moment_tiny was written by momentfm 0.1.4's MOMENTPipeline.save_pretrained (its 5000-row
    positional table dropped: it is recomputed); reference.npz holds what its embed(reduction='none') returned."""
    reference = np.load(FIXTURES / "moment_tiny" / "reference.npz")
    x = reference["x"]  # (2, 1, 512)
    assert moment.feature_dim == 16 and moment.samples_per_token == 8 and moment.max_context == 512
    np.testing.assert_allclose(moment.encode(x, 1.0), reference["full"], atol=1e-4)
    # A 200-step series: momentfm with the window at the start of the context and input_mask on its 200 steps.
    np.testing.assert_allclose(moment.encode(x[:, :, :200], 1.0), reference["short"], atol=1e-4)


def test_moment_token_counts(moment):
    for length in (1, 7, 512, 3 * 512 + 9):
        assert_token_contract(moment, length, 100.0)


def test_moment_refuses_what_is_not_its_checkpoint(tmp_path):
    broken = tmp_path / "moment"
    shutil.copytree(FIXTURES / "moment_tiny", broken)
    state = load_file(broken / "model.safetensors")
    state.pop("patch_embedding.value_embedding.weight")
    save_file(state, broken / "model.safetensors")
    with pytest.raises(ValueError, match="does not match MOMENT's encoder .*value_embedding"):
        load_teacher("moment", {"kind": "moment", "model_id": str(broken), "device": "cpu"})
    config = json.loads((broken / "config.json").read_text())
    del config["t5_config"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no t5_config"):
        load_teacher("moment", {"kind": "moment", "model_id": str(broken), "device": "cpu"})
    with pytest.raises(ValueError, match="layer 3 out of range"):
        load_teacher("moment", {"kind": "moment", "model_id": str(FIXTURES / "moment_tiny"), "layer": 3})


# ---- Mantis: our network over mantis-tsfm's checkpoint format ---------------------------------------------------
def mantis_teacher(model_dir: Path = FIXTURES / "mantis_tiny", **fields):
    return load_teacher("mantis", {"kind": "mantis", "model_id": str(model_dir), "device": "cpu", **fields})


def test_mantis_matches_mantis_tsfm():
    """tests/fixtures/mantis_tiny was written by mantis-tsfm 1.1.0's MantisV1.save_pretrained; reference.npz holds its
    hidden states (CLS + 8 patch tokens after the token generator and after each block) for reference x."""
    teacher = mantis_teacher()
    reference = np.load(FIXTURES / "mantis_tiny" / "reference.npz")
    with torch.inference_mode():
        states = teacher.model(torch.from_numpy(reference["x"]))
    for ours, theirs in zip(states, reference["states"], strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)
    x = reference["x"]  # already zero-mean-ish; the adapter standardises first, then takes the patch tokens
    with torch.inference_mode():
        expected = teacher.model(torch.from_numpy(standardized(x)))[-1][:, 1:]
    np.testing.assert_allclose(teacher.encode(x, 1.0), expected.numpy(), atol=1e-5)


def test_mantis_token_counts_layers_and_legacy_names(tmp_path):
    teacher = mantis_teacher()
    assert teacher.feature_dim == 16 and teacher.samples_per_token == 8 and teacher.max_context == 64
    for length in (1, 9, 64, 3 * 64 + 5):
        assert_token_contract(teacher, length, 1.0, channels=2)
    x = random_series(1, 1, 64)
    assert not np.allclose(mantis_teacher(layer=0).encode(x, 1.0), teacher.encode(x, 1.0))
    # Mantis-8M's published checkpoint names the transformer vit_unit (mantis' legacy Mantis8M class).
    legacy = tmp_path / "legacy"
    shutil.copytree(FIXTURES / "mantis_tiny", legacy)
    state = load_file(legacy / "model.safetensors")
    save_file({k.replace("transf_unit.", "vit_unit."): v for k, v in state.items()}, legacy / "model.safetensors")
    np.testing.assert_allclose(mantis_teacher(legacy).encode(x, 1.0), teacher.encode(x, 1.0), atol=1e-6)
    (legacy / "config.json").unlink()  # no config: Mantis-8M's architecture, which these weights are not
    with pytest.raises(ValueError, match="does not match the Mantis architecture of Mantis-8M defaults"):
        mantis_teacher(legacy)


# ---- braindecode: the adapter with stand-ins of CBraMod's and Labram's interface (runs everywhere) --------------
@pytest.fixture(scope="module")
def standin_dirs(tmp_path_factory):
    from tests.paper_teacher_standins import TinyCrissCross, TinyLabramLike

    root = tmp_path_factory.mktemp("brain-standins")
    torch.manual_seed(0)
    TinyCrissCross().save_pretrained(root / "crisscross")
    TinyLabramLike().save_pretrained(root / "labram_like")
    return root


def standin_teacher(model_dir: Path, model_class: str, **fields):
    spec = {"kind": "braindecode", "model_class": f"tests.paper_teacher_standins:{model_class}",
            "model_id": str(model_dir), "device": "cpu", **fields}
    return load_teacher("brain", spec)


def test_braindecode_adapter_cbramod_layout(standin_dirs):
    teacher = standin_teacher(standin_dirs / "crisscross", "TinyCrissCross", family="cbramod", max_context_seconds=1.0)
    assert teacher.native_rate == 100.0 and teacher.samples_per_token == 20 and teacher.max_context == 100
    assert teacher.feature_dim == 6 and teacher.sees_all_channels and teacher.domain == "brain"
    for channels in (1, 3, 16):
        for length in (1, 19, 100, 3 * 100 + 7):  # the last: stitched windows
            assert_token_contract(teacher, length, 100.0, channels=channels)
    assert_token_contract(teacher, 500, 250.0, channels=4)  # resampled to the native 100 Hz
    values = random_series(1, 4, 200)
    changed = values.copy()
    changed[0, 3] += rng.standard_normal(200).astype(np.float32)  # one channel changes: every token changes
    assert (np.abs(teacher.encode(values, 100.0) - teacher.encode(changed, 100.0)).max(axis=-1) > 1e-6).all()
    # Layers and pooling: block outputs (d_model 8), mean and std over channels.
    block = standin_teacher(standin_dirs / "crisscross", "TinyCrissCross", family="cbramod", layer=0,
                            channel_pool="mean_std")
    assert block.feature_dim == 16 and block.encode(values, 100.0).shape == (1, 10, 16)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        standin_teacher(standin_dirs / "crisscross", "TinyCrissCross", family="cbramod", layer=2)
    with pytest.raises(ValueError, match="no known token layout; set family"):
        standin_teacher(standin_dirs / "crisscross", "TinyCrissCross")


def test_braindecode_adapter_labram_layout_needs_channel_names(standin_dirs):
    montage = {3: ["C3", "Cz", "C4"], 2: ["O1", "O2"]}
    teacher = standin_teacher(standin_dirs / "labram_like", "TinyLabramLike", family="labram", channel_names=montage,
                              native_rate=100.0)
    assert teacher.max_context == 80 and teacher.feature_dim == 8
    for length in (1, 21, 80, 3 * 80 + 3):
        assert_token_contract(teacher, length, 100.0, channels=3)
    assert_token_contract(teacher, 100, 100.0, channels=2)
    with pytest.raises(ValueError, match=r"channel_names has no montage for 4-channel series \(given for \[2, 3\]\)"):
        teacher.encode(random_series(1, 4, 100), 100.0)
    with pytest.raises(ValueError, match=r"electrodes .* does not know: \['T7'\]"):
        standin_teacher(standin_dirs / "labram_like", "TinyLabramLike", family="labram", channel_names={1: ["T7"]})
    with pytest.raises(ValueError, match=r"channel_names\[2\] has 1 names"):
        standin_teacher(standin_dirs / "labram_like", "TinyLabramLike", family="labram", channel_names={2: ["C3"]})
    hooked = standin_teacher(standin_dirs / "labram_like", "TinyLabramLike", family="labram", channel_names=montage,
                             layer=0)
    assert hooked.native_rate == 200.0  # no sfreq in the checkpoint: CBraMod's and LaBraM's 200 Hz
    assert hooked.encode(random_series(1, 3, 80), 200.0).shape == (1, 4, 8)


def test_braindecode_adapter_refuses_a_checkpoint_missing_weights(standin_dirs, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(standin_dirs / "crisscross", partial)
    state = load_file(partial / "model.safetensors")
    state.pop("proj_out.weight")
    save_file(state, partial / "model.safetensors")
    with pytest.raises(ValueError, match=r"does not hold TinyCrissCross's 1 tensor\(s\) \['proj_out.weight'\]"):
        standin_teacher(partial, "TinyCrissCross", family="cbramod")


def test_braindecode_adapter_loads_safetensors_only(standin_dirs, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(standin_dirs / "crisscross", pickled)
    state = load_file(pickled / "model.safetensors")
    torch.save(state, pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        standin_teacher(pickled, "TinyCrissCross", family="cbramod")


# ---- braindecode's own CBraMod and Labram (when braindecode imports) ---------------------------------------------
@pytest.fixture(scope="module")
def braindecode_dirs(tmp_path_factory):
    from pipeline.teachers.braindecode_eeg import model_class_of

    cbramod, labram = model_class_of("t", "CBraMod"), model_class_of("t", "Labram")
    root = tmp_path_factory.mktemp("braindecode")
    torch.manual_seed(0)
    cbramod(n_outputs=2, n_chans=3, n_times=600, sfreq=200, n_layer=2, nhead=2, dim_feedforward=32,
            return_encoder_output=True).save_pretrained(root / "cbramod")
    labram(n_outputs=2, n_chans=3, n_times=800, sfreq=200, num_layers=2, num_heads=2).save_pretrained(root / "labram")
    return root


@needs_braindecode
def test_braindecode_cbramod_through_from_pretrained(braindecode_dirs):
    teacher = load_teacher("cbramod", {"kind": "braindecode", "model_class": "CBraMod", "device": "cpu",
                                       "model_id": str(braindecode_dirs / "cbramod"), "max_context_seconds": 3})
    assert type(teacher.model).__module__ == "braindecode.models.cbramod"
    assert teacher.native_rate == 200.0 and teacher.samples_per_token == 200 and teacher.feature_dim == 200
    assert "torchaudio" not in sys.modules or not hasattr(sys.modules["torchaudio"], "_reason")  # placeholder gone
    for channels, length in ((1, 1), (3, 600), (5, 200 * 7 + 50)):
        assert_token_contract(teacher, length, 200.0, channels=channels, batch=1)
    x = random_series(1, 3, 400)
    with torch.inference_mode():
        direct = teacher.model(torch.from_numpy(standardized(x) * 0.2), return_features=True)["features"]
    np.testing.assert_allclose(teacher.encode(x, 200.0), direct.mean(dim=1).numpy(), atol=1e-5)
    assert teacher.describe()["packages"]["braindecode"]


@needs_braindecode
def test_braindecode_checkpoint_without_task_head_loads(braindecode_dirs, tmp_path):
    """A pre-trained encoder saved without a classifier (return_encoder_output) loads into a model whose config asks
    for one: only final_layer may differ."""
    headless = tmp_path / "cbramod_headless"
    shutil.copytree(braindecode_dirs / "cbramod", headless)
    config = json.loads((headless / "config.json").read_text())
    (headless / "config.json").write_text(json.dumps({**config, "return_encoder_output": False}))
    teacher = load_teacher("cbramod", {"kind": "braindecode", "model_class": "CBraMod", "device": "cpu",
                                       "model_id": str(headless)})
    assert isinstance(teacher.model.final_layer, torch.nn.Sequential)  # a (random) classifier the features skip
    reference = load_teacher("cbramod", {"kind": "braindecode", "model_class": "CBraMod", "device": "cpu",
                                         "model_id": str(braindecode_dirs / "cbramod")})
    x = random_series(1, 2, 400)
    np.testing.assert_allclose(teacher.encode(x, 200.0), reference.encode(x, 200.0), atol=1e-6)


@needs_braindecode
def test_braindecode_labram_needs_channel_names(braindecode_dirs):
    spec = {"kind": "braindecode", "model_class": "Labram", "device": "cpu",
            "model_id": str(braindecode_dirs / "labram"), "channel_names": {3: ["C3", "CZ", "C4"]}}
    teacher = load_teacher("labram", spec)
    assert teacher.max_context == 800 and teacher.feature_dim == 200
    assert_token_contract(teacher, 1000, 200.0, channels=3, batch=1)
    with pytest.raises(ValueError, match="no montage for 2-channel series"):
        teacher.encode(random_series(1, 2, 400), 200.0)
    with pytest.raises(ValueError, match=r"does not know: \['XYZ'\]"):
        load_teacher("labram", {**spec, "channel_names": {1: ["XYZ"]}})


# ---- the paper preset ---------------------------------------------------------------------------------------------
def test_paper_preset_loads():
    from schemas.params import load_params

    params = load_params(ROOT / "params-paper.yaml")
    kinds = {name: spec.kind for name, spec in params.extract.teachers.items()}
    assert kinds == {"hubert": "hf_audio", "timemoe": "hf_remote_code", "cbramod": "braindecode"}
    assert {spec.model_id for spec in params.extract.teachers.values()} == {
        "facebook/hubert-base-ls960", "Maple728/TimeMoE-50M", "braindecode/cbramod-pretrained"}
    timemoe = params.extract.teachers["timemoe"]
    assert timemoe.trust_remote_code and timemoe.transformers4_compat and timemoe.max_context == 2048
    assert params.student.preset == "paper"
    assert params.distill.device == "cuda" and params.distill.bf16 and params.distill.batch_size >= 64
    assert params.distill.max_steps >= 10000


@pytest.fixture(scope="module")
def paper_standins(tmp_path_factory, remote_code_dir):
    """A tiny local model of the class each paper teacher loads, by teacher name."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    root = tmp_path_factory.mktemp("paper")
    torch.manual_seed(0)
    HubertModel(HubertConfig(hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=32,
                             conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                             num_conv_pos_embedding_groups=2)).save_pretrained(root / "hubert")  # fmt: skip
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(root / "hubert")
    dirs = {"hubert": root / "hubert", "timemoe": remote_code_dir}
    if HAS_BRAINDECODE:
        from pipeline.teachers.braindecode_eeg import model_class_of

        model_class_of("t", "CBraMod")(n_outputs=2, n_chans=2, n_times=400, sfreq=200, n_layer=1, nhead=2,
                                       dim_feedforward=32, return_encoder_output=True).save_pretrained(root / "cbramod")
        dirs["cbramod"] = root / "cbramod"
    return dirs


@pytest.mark.parametrize("name", ["hubert", "timemoe", "cbramod"])
def test_paper_teachers_build_from_local_standins(paper_standins, name):
    """Each teacher of params-paper.yaml, its spec unchanged but model_id pointed at a tiny local model of the same
    class (and run on the CPU in fp32), builds and encodes a 2-channel series."""
    from schemas.params import load_params

    if name not in paper_standins:
        pytest.skip("braindecode not installed: the braindecode kind is covered by the stand-in tests")
    spec = load_params(ROOT / "params-paper.yaml").extract.teachers[name]
    teacher = load_teacher(name, spec.model_copy(update={"model_id": str(paper_standins[name]), "device": "cpu",
                                                         "bf16": False}))
    assert teacher.domain == {"hubert": "audio", "timemoe": "timeseries", "cbramod": "brain"}[name]
    assert_token_contract(teacher, 1200, 200.0, channels=2, batch=1)
