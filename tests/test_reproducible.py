"""What DVC hashes does not change from run to run: rerunning extract or distill with the same params writes the
same bytes (no creation times, wall times, memory readings or host names in stores, models or reports). What does
vary goes to the run record, reports/run_info/, which no stage declares and git ignores."""

import hashlib
import json
import shutil
from pathlib import Path

import yaml

from pipeline.distill.train import distill
from schemas.params import load_params
from stages import extract as extract_stage


def file_hashes(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `directory`."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_extracting_twice_writes_byte_identical_stores(extracted_project, tmp_path):
    root, params_path = extracted_project
    params = yaml.safe_load(params_path.read_text())
    params["extract"]["store_dir"] = str(tmp_path / "features")
    rerun_params = tmp_path / "params.yaml"
    rerun_params.write_text(yaml.safe_dump(params))
    runs = []
    for _ in range(2):
        extract_stage.run(str(rerun_params), teachers=["silero_vad", "spectral"], overwrite=True)
        runs.append(file_hashes(tmp_path / "features"))
    assert runs[0] == runs[1] and len(runs[0]) > 20
    manifest = json.loads((tmp_path / "features/spectral.zarr/zarr.json").read_text())["attributes"]["manifest"]
    assert manifest["complete"] and manifest["created"] == ""


def test_distilling_twice_writes_the_same_model_and_reports(extracted_project, tmp_path):
    root, params_path = extracted_project
    runs, records = [], []
    for _ in range(2):
        params = load_params(params_path)
        params.distill = params.distill.model_copy(update={
            "output_dir": str(tmp_path / "model"), "reports_dir": str(tmp_path / "reports"),
            "checkpoint_dir": str(tmp_path / "checkpoints")})
        shutil.rmtree(tmp_path / "checkpoints", ignore_errors=True)  # no resuming: the second run trains anew
        distill(params)
        runs.append(file_hashes(tmp_path / "model") | file_hashes(tmp_path / "reports/distill"))
        records.append(json.loads((tmp_path / "reports/run_info/distill.json").read_text()))
    assert runs[0] == runs[1]
    assert {"model.safetensors", "config.json", "README.md", "metrics.json", "train_loss.csv", "loss_curves.png"} <= \
        {Path(name).name for name in runs[0]}
    assert all(record["wall_seconds"] > 0 and record["peak_rss_gb"] > 0 for record in records)
