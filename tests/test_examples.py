"""Every script in examples/ runs, as a user would call it, on tiny data: a tiny random encoder, a tiny project."""

import importlib.util
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.project import tiny_student, write_project

EXAMPLES = ROOT / "examples"


def example(name: str):
    """The example script as a module, so its main(argv) runs in this process (no second start-up)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested_and_documented():
    scripts = {p.stem for p in EXAMPLES.glob("*.py")}
    tested = {"embed_and_classify", "plot_store_tokens", "local_hf_teacher"}
    assert scripts == tested
    readme = (ROOT / "README.md").read_text()
    assert all(f"examples/{name}.py" in readme for name in scripts)


def test_examples_answer_help_from_the_command_line():
    """A user's first call; also checks that the scripts import when run by path (not as test modules)."""
    result = subprocess.run([sys.executable, str(EXAMPLES / "plot_store_tokens.py"), "--help"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "--store" in result.stdout


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A tiny random-weight STEP encoder saved as `distill` saves the trained one."""
    directory = tmp_path_factory.mktemp("encoder") / "step-student"
    tiny_student().save_pretrained(directory)
    return directory


def write_wav(path: Path, values: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((values * 32767 / np.abs(values).max() * 0.9).astype("<i2").tobytes())


def test_embed_and_classify_a_folder_of_npy_csv_and_wav_files(tiny_encoder, tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "my_data"
    for label, scale in (("quiet", 1.0), ("loud", 1e4)):  # classes differ in level: the embedding's statistics see it
        (data / label).mkdir(parents=True)
        for i in range(4):
            np.save(data / label / f"n{i}.npy", scale * rng.normal(size=int(rng.integers(200, 400))))
            np.savetxt(data / label / f"c{i}.csv", scale * rng.normal(size=(300, 2)), delimiter=",")
        for i in range(2):  # WAV files store a normalised level: their class is the tone's frequency here
            t = np.arange(1600) / 16000
            write_wav(data / label / f"w{i}.wav", np.sin(2 * np.pi * (200 if label == "quiet" else 3000) * t)
                      + 0.05 * rng.normal(size=t.size), 16000)
    output = tmp_path / "embeddings.npz"

    accuracy = example("embed_and_classify").main(["--model", str(tiny_encoder), "--data", str(data),
                                                  "--output", str(output), "--folds", "3"])
    saved = np.load(output)
    assert saved["embeddings"].shape[0] == 20 and np.isfinite(saved["embeddings"]).all()
    assert list(saved["classes"]) == ["loud", "quiet"] and np.bincount(saved["labels"]).tolist() == [10, 10]
    assert "quiet/w0.wav" in list(saved["files"])
    assert accuracy >= 0.8  # the level alone separates most of the files, even for a random encoder
    assert "cross-validation" in capsys.readouterr().out


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory):
    from stages import prepare as prepare_stage

    root = tmp_path_factory.mktemp("example-project")
    params_path = write_project(root)
    prepare_stage.run(str(params_path))
    return root, params_path


def test_a_local_hugging_face_teacher_is_declared_and_extracted_and_its_tokens_plotted(prepared_project, tmp_path):
    root, params_path = prepared_project
    store = example("local_hf_teacher").main(["--params", str(params_path), "--model-dir", str(tmp_path / "patchtst"),
                                              "--name", "tiny_patchtst", "--tiny-patchtst",
                                              "--dataset", "probe_sleep", "--dataset", "probe_real"])
    assert store == root / "data/features/tiny_patchtst.zarr"
    assert (tmp_path / "patchtst" / "config.json").exists() and (root / "params-tiny_patchtst.yaml").exists()

    import xarray as xr

    ds = xr.open_zarr(store, group="probe_sleep", consolidated=True)
    assert ds.features.shape[0] == 20 and ds.features.shape[2] == 16  # 20 series, PatchTST's d_model
    assert int(ds.n_tokens[0]) > 0

    png = example("plot_store_tokens").main(["--store", str(store), "--group", "probe_real", "--segment", "1",
                                             "--output", str(tmp_path / "tokens.png")])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
