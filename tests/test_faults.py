"""Faults in real processes: SIGKILL at chosen and at random points, a full disk, an unwritable output directory,
two extractions on one store, a teacher that fails on a batch, and killed distillations.

Every faulty run is a real process: tests/fault_launcher.py runs the command line's own app (`pipeline.cli:app`,
what the `step-pipeline` script runs) with one hook installed by test-side monkeypatching; pipeline/ holds no
fault code. Recovery runs are the installed `step-pipeline` script itself. A recovered store is compared with
an uninterrupted run's (the session fixture's spectral store) file by file: every byte equal but the manifest's
creation time, every segment present once, every chunk marked done. Recovered weights are compared with an
uninterrupted distillation's.

Unmarked (CI): a kill in the middle of a Zarr chunk write, the lock, a failing teacher. The rest is `slow`:
    .venv/bin/pytest -m slow tests/test_faults.py
Counts go to the FAULT SUMMARY line (tests/fault_summary.py) printed at the end of the session.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import ROOT
from tests.fault_launcher import segment_hash
from tests.fault_summary import record
from tests.project import tiny_params, write_project

SCRIPT = Path(sys.executable).with_name("step-pipeline")  # the console script installed in this environment
LAUNCHER = [sys.executable, "-m", "tests.fault_launcher"]
TIMEOUT = 300  # seconds per process; the machine may be shared
SIGKILLED = -signal.SIGKILL


# ------------------------------------------------------------------------------------------------- helpers


@dataclass
class Reference:
    series_store: Path  # the prepared series store of the tiny project
    store: Path  # its spectral feature store from an uninterrupted run


@pytest.fixture(scope="module")
def reference(extracted_project) -> Reference:
    root, _ = extracted_project
    return Reference(root / "data/series.zarr", root / "data/features/spectral.zarr")


class Project:
    """The tiny project with the spectral teacher only, its series store copied from the session fixture."""

    def __init__(self, root: Path, reference: Reference):
        params = tiny_params(root)
        params["extract"]["teachers"] = {"spectral": {"kind": "spectral"}}
        params["distill"].update(max_steps=8, checkpoint_every=2, val_every=4)
        write_project(root, params)
        shutil.copytree(reference.series_store, root / "data/series.zarr")
        self.root, self.params = root, root / "params.yaml"
        self.store = root / "data/features/spectral.zarr"
        self.faults = root / "faults"  # marker files between the test and the launcher
        self.faults.mkdir()
        self.logs = 0

    @property
    def extract(self) -> list[str]:
        return ["extract", "--teacher", "spectral", "--params", str(self.params)]

    @property
    def distill(self) -> list[str]:
        return ["distill", "--params", str(self.params)]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return f"exit status {self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Process:
    """A step-pipeline process; output goes to files (never a pipe that could fill up while we wait)."""

    def __init__(self, project: Project, args: list[str], fault: str | None = None, start_after: Path | None = None,
                 env: dict | None = None):
        project.logs += 1
        self.out_path, self.err_path = (project.root / f"run{project.logs}.{s}" for s in ("out", "err"))
        environment = dict(os.environ, PYTHONPATH=str(ROOT), STEP_FAULT_DIR=str(project.faults), **(env or {}))
        environment.pop("STEP_FAULT", None)
        environment.pop("STEP_FAULT_START_AFTER", None)
        if fault:
            environment["STEP_FAULT"] = fault
        if start_after:
            environment["STEP_FAULT_START_AFTER"] = str(start_after)
        # the unhooked script itself where it exists, else the launcher without a hook (the same app)
        command = [*LAUNCHER, *args] if fault or start_after or not SCRIPT.exists() else [str(SCRIPT), *args]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=err)

    def wait_for(self, marker: Path, timeout: float = TIMEOUT) -> None:
        """Until `marker` exists; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if self.popen.poll() is not None:
                pytest.fail(f"the process ended before {marker.name}:\n{self.result().output}")
            if time.monotonic() > deadline:
                self.popen.kill()
                pytest.fail(f"no {marker.name} after {timeout} s")
            time.sleep(0.02)

    def result(self, timeout: float = TIMEOUT) -> Result:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise
        return Result(rc, self.out_path.read_text(), self.err_path.read_text())


def run(project: Project, args: list[str], fault: str | None = None, **kwargs) -> Result:
    return Process(project, args, fault, **kwargs).result()


def done_flags(store: Path) -> dict[str, np.ndarray]:
    """chunk_done of every group laid out so far (groups cut short before their flags are left out)."""
    if not (store / "zarr.json").exists():
        return {}
    root = zarr.open_group(str(store), mode="r", use_consolidated=False)
    return {name: group["chunk_done"][:] for name, group in root.groups() if "chunk_done" in group}


def n_done(store: Path) -> int:
    return int(sum(flags.sum() for flags in done_flags(store).values()))


def file_bytes(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def segments_lost(got: Path, want: Path, done_only: bool = False) -> int:
    """Segments of `want` that are missing from `got`, duplicated, not marked done, or whose features or token
    counts differ in any bit. done_only: look only at the chunks `got` has marked done (a stopped run)."""
    want_root = zarr.open_group(str(want), mode="r", use_consolidated=False)
    got_root = zarr.open_group(str(got), mode="r", use_consolidated=False) if (got / "zarr.json").exists() else None
    lost = 0
    for name, expected in want_root.groups():
        want_ids = expected["segment_id"][:]
        if got_root is None or name not in got_root or "chunk_done" not in got_root[name]:
            lost += 0 if done_only else len(want_ids)
            continue
        group = got_root[name]
        ids = group["segment_id"][:]
        lost += len(ids) - len(set(ids.tolist()))  # duplicates
        rows = {segment_id: row for row, segment_id in enumerate(ids.tolist())}
        chunk_segments = group["features"].chunks[0]
        done = group["chunk_done"][:]
        features, want_features = group["features"][:], expected["features"][:]
        n_tokens, want_n_tokens = group["n_tokens"][:], expected["n_tokens"][:]
        for want_row, segment_id in enumerate(want_ids.tolist()):
            row = rows.get(segment_id)
            if row is not None and done_only and not done[row // chunk_segments]:
                continue
            if (row is None or not done[row // chunk_segments] or n_tokens[row] != want_n_tokens[want_row]
                    or features[row].tobytes() != want_features[want_row].tobytes()
                    or not np.isfinite(features[row, : n_tokens[row]]).all()):
                lost += 1
    return lost


def root_metadata(store: Path) -> dict:
    """The root zarr.json: manifest (which records no creation time), statistics, consolidated metadata."""
    return json.loads((store / "zarr.json").read_text())


def assert_same_store(got: Path, want: Path) -> None:
    """`got` is an uninterrupted run's store: every segment present once, every chunk done, every file equal in
    every byte (the root metadata but the creation time), nothing left over (no `.partial` file)."""
    lost = segments_lost(got, want)
    record(lost=lost)
    assert lost == 0, f"{lost} segments missing, duplicated or different"
    got_files, want_files = file_bytes(got), file_bytes(want)
    assert sorted(got_files) == sorted(want_files)
    assert [name for name in want_files if name != "zarr.json" and got_files[name] != want_files[name]] == []
    assert root_metadata(got) == root_metadata(want)  # manifest statistics, groups, consolidated metadata


def expect_clear_error(result: Result, *names) -> None:
    """A non-zero exit with a one-line `error: ...` naming `names`, not a traceback."""
    assert result.rc != 0, result.output
    assert "Traceback" not in result.err, result.output
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert errors, result.output
    for name in names:
        assert str(name) in result.err, result.output


# ------------------------------------------------------------------------------------------------- SIGKILL

# fault -> chunks marked done when the process dies (the writer thread writes chunks one after the other)
KILL_POINTS = {
    "features_file:3": 2,   # half of chunk 3's features file written (zarr's temporary .partial file)
    "layout:20": 0,         # laying out the 5 data sets in one batch: 20 of its 45 nodes (no chunk_done) created
    "chunk_start:5": 4,     # chunk 5 computed, nothing of it written
    "after_features:6": 5,  # chunk 6's features written, no statistics, no flag
    "after_stats:8": 7,     # chunk 8's features and statistics written, no flag
    "after_flag:4": 4,      # right after chunk 4's flag
    "finalize": None,       # manifest written complete, metadata not consolidated: every chunk done
}


@pytest.mark.parametrize(
    "fault",
    [
        "features_file:3",
        *(pytest.param(point, marks=pytest.mark.slow)
          for point in ("layout:20", "chunk_start:5", "after_features:6", "after_stats:8", "after_flag:4")),
        pytest.param("finalize", marks=pytest.mark.slow),
    ],
)
def test_sigkill_during_extraction_then_rerun_gives_the_identical_store(fault, reference, tmp_path):
    project = Project(tmp_path, reference)
    killed = run(project, project.extract, fault)
    assert killed.rc == SIGKILLED, killed.output
    record(faults=1)
    every_chunk = n_done(reference.store)  # the tiny project's spectral store, complete
    assert n_done(project.store) == (every_chunk if KILL_POINTS[fault] is None else KILL_POINTS[fault])
    lost = segments_lost(project.store, reference.store, done_only=True)  # what is marked done is right
    record(lost=lost)
    assert lost == 0
    if fault.startswith("features_file"):
        assert list(project.store.rglob("*.partial")), "the kill was meant to leave a half-written chunk file"

    resumed = run(project, project.extract)
    assert resumed.rc == 0, resumed.output
    if fault.startswith("layout"):
        assert "incomplete layout; recreating it" in resumed.err
    assert_same_store(project.store, reference.store)
    record(recovered=1)


@pytest.mark.slow
def test_sigkill_at_random_times_then_rerun_gives_the_identical_store(reference, tmp_path):
    """Five runs in a row on one store, each SIGKILLed at a random time (fixed seed) after it has the store
    open, each resuming what the last left; then a run to the end. The killed runs sleep 20 ms before every zarr
    array write (4 per group layout, 5 per chunk), so the work spans ~1.6 s and the kills land inside it: in a
    layout, or between or inside the writes of one chunk."""
    rng = random.Random(20261125)
    project = Project(tmp_path, reference)
    done_at_kill = []
    for _ in range(5):
        (project.faults / "ready").unlink(missing_ok=True)
        process = Process(project, project.extract, "ready:0.02")
        process.wait_for(project.faults / "ready")
        time.sleep(rng.uniform(0.05, 1.0))
        process.popen.send_signal(signal.SIGKILL)
        result = process.result()
        if result.rc != SIGKILLED:  # it finished first
            assert result.rc == 0, result.output
            break
        record(faults=1)
        done_at_kill.append(n_done(project.store))
        lost = segments_lost(project.store, reference.store, done_only=True)
        record(lost=lost)
        assert lost == 0
    every_chunk = n_done(reference.store)
    print(f"chunks done at each random kill: {done_at_kill} of {every_chunk}")
    assert len(done_at_kill) >= 2 and min(done_at_kill) < every_chunk, "the kills did not land inside the work"

    resumed = run(project, project.extract)
    assert resumed.rc == 0, resumed.output
    assert_same_store(project.store, reference.store)
    record(recovered=1)


# ------------------------------------------------------------------------------------------------- the lock


def test_second_extraction_on_the_same_store_is_refused(reference, tmp_path):
    project = Project(tmp_path, reference)
    holding = project.faults / "holding"
    first = Process(project, project.extract, "hold")  # writes one chunk, then waits with the lock held
    second = Process(project, project.extract, start_after=holding)  # imports meanwhile, starts when it holds
    first.wait_for(holding)
    before = file_bytes(project.store)
    refused = second.result()
    record(faults=1)
    assert refused.rc == 2, refused.output
    assert "being written by another extraction" in refused.err and str(project.store) in refused.err
    assert file_bytes(project.store) == before  # the refused process wrote nothing

    (project.faults / "release").touch()
    finished = first.result()
    assert finished.rc == 0, finished.output
    assert_same_store(project.store, reference.store)
    record(recovered=1)


# ------------------------------------------------------------------------------------------------- a failing teacher

def test_teacher_failing_on_one_segment_stops_naming_it_and_resumes(reference, tmp_path):
    """The teacher raises on every batch holding pre_radar-000009 (chunk 5 of 12): retried on halves down to that
    one segment, then the run stops naming it; chunks before it are kept, it and later ones stay pending."""
    from data_catalog.catalog import load_catalog, open_reader

    project = Project(tmp_path, reference)
    catalog = load_catalog(project.root / "catalog.yaml")
    reader = open_reader(catalog.get("pre_radar"), catalog, project.root / "data/series.zarr")
    poisoned = reader.ids.index("pre_radar-000009")
    failed = run(project, project.extract, f"poison:{segment_hash(reader[poisoned].values)}")
    assert failed.rc != 0, failed.output
    record(faults=1)
    assert "retrying" in failed.err  # smaller batches were tried first
    assert "pre_radar-000009" in failed.err and "simulated CUDA out of memory" in failed.err
    flags = done_flags(project.store)
    assert flags["pre_sleep"].all() and flags["pre_radar"].tolist() == [True, False]  # its chunk is not done
    assert not any(flags[name].any() for name in ("pre_long", "probe_sleep", "probe_radar"))
    lost = segments_lost(project.store, reference.store, done_only=True)
    record(lost=lost)
    assert lost == 0

    # the teacher is fixed (no hook); the rerun goes through the function the command calls, in this process,
    # to keep this unmarked test short (the other tests rerun the command itself)
    from stages import extract as extract_stage

    extract_stage.run(str(project.params), ["spectral"])
    assert_same_store(project.store, reference.store)
    record(recovered=1)
    expect_clear_error(failed, "pre_radar-000009", "pre_radar")


# ------------------------------------------------------------------------------------------- full disk, no permission

@pytest.fixture
def small_filesystem(tmp_path):
    """Mount a 400 KB tmpfs (the store needs ~600 KB there) at a directory; yields (directory, grow)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the RLIMIT_FSIZE case still runs")

    def grow():  # "free some space"
        subprocess.run(["mount", "-o", "remount,size=8m", str(mount_point)], check=True)

    try:
        yield mount_point, grow
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["tmpfs_enospc", "rlimit_fsize_efbig"])
def test_full_disk_during_extraction_keeps_done_chunks_and_resumes(limit, reference, tmp_path, request):
    project = Project(tmp_path / "project", reference)
    if limit == "tmpfs_enospc":
        mount_point, grow = request.getfixturevalue("small_filesystem")
        project.store.parent.symlink_to(mount_point)  # data/features lives on the small filesystem
        full = run(project, project.extract)
    else:
        grow = None
        full = run(project, project.extract, "fsize:9216")  # the pre_long chunk (10.1 KB) cannot be written
    assert full.rc != 0, full.output
    record(faults=1)
    assert 0 < n_done(project.store) < n_done(reference.store), full.output  # stopped part-way, the written part kept
    assert not list(project.store.rglob("*.partial"))
    lost = segments_lost(project.store, reference.store, done_only=True)
    record(lost=lost)
    assert lost == 0

    if grow:
        grow()
    resumed = run(project, project.extract)
    assert resumed.rc == 0, resumed.output
    assert_same_store(project.store, reference.store)
    record(recovered=1)
    expect_clear_error(full, project.store)


def python_runs_as(uid: int) -> bool:
    """Whether this Python can run as `uid`: not where it is installed under a home only root may read (here
    /root/.pyenv, /root being 0700), so that a process dropped to `uid` cannot load the stdlib modules it imports late."""
    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    try:
        probe = subprocess.run([sys.executable, "-c", "import contextvars, unicodedata"], preexec_fn=drop,
                               capture_output=True, cwd="/")
    except PermissionError:  # the interpreter itself cannot be executed by uid
        return False
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to run as another user")
def test_unwritable_output_directory_keeps_done_chunks_and_resumes(reference):
    """A store left by a killed run, owned by root; `nobody` runs extract on it: refused, nothing changed; then
    the owner reruns it to the end."""
    if not python_runs_as(65534):
        pytest.skip(f"{sys.executable} cannot run as uid 65534 (its installation is not readable by that user)")
    base = Path(tempfile.mkdtemp(prefix="step-unwritable-"))  # outside pytest's 0700 temp dirs
    try:
        base.chmod(0o755)
        project = Project(base / "project", reference)
        killed = run(project, project.extract, "after_flag:4")
        assert killed.rc == SIGKILLED, killed.output
        record(faults=1)
        home = base / "home"
        home.mkdir(mode=0o777)
        home.chmod(0o777)
        before = file_bytes(project.store)
        refused = run(project, project.extract, "as_user:65534",
                      env={"HOME": str(home), "HF_HOME": str(home / "hf"), "MPLCONFIGDIR": str(home / "mpl")})
        assert refused.rc != 0, refused.output
        record(faults=1)
        assert file_bytes(project.store) == before  # kept as it was: 4 chunks done, nothing half-written

        resumed = run(project, project.extract)
        assert resumed.rc == 0, resumed.output
        assert_same_store(project.store, reference.store)
        record(recovered=1)
        expect_clear_error(refused, project.store)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- distillation


def distill_project(root: Path, reference: Reference) -> Project:
    project = Project(root, reference)
    shutil.copytree(reference.store, project.store)
    return project


@pytest.fixture(scope="module")
def uninterrupted_distillation(reference, tmp_path_factory) -> Path:
    project = distill_project(tmp_path_factory.mktemp("distill-reference"), reference)
    result = run(project, project.distill)
    assert result.rc == 0, result.output
    return project.root


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["distill_checkpoint:3", "distill_step:5", "distill_ready:0.15"])
def test_sigkill_during_distillation_then_resume_gives_the_same_weights(fault, reference, uninterrupted_distillation,
                                                                        tmp_path):
    """8 steps, a checkpoint every 2. distill_checkpoint:3 dies inside the step-6 checkpoint save (its weights
    written, the step-4 checkpoint not yet replaced); distill_step:5 after step 5; distill_ready at a random
    time (fixed seed) inside training (paced to 0.15 s a step). `distill --resume` ends with the uninterrupted
    run's weights and losses."""
    import torch
    from safetensors.torch import load_file

    project = distill_project(tmp_path, reference)
    process = Process(project, project.distill, fault)
    if fault.startswith("distill_ready"):
        process.wait_for(project.faults / "ready")
        time.sleep(random.Random(7).uniform(0.1, 1.0))
        process.popen.send_signal(signal.SIGKILL)
    killed = process.result()
    assert killed.rc == SIGKILLED, killed.output
    record(faults=1)
    assert not (project.root / "models/step-student/model.safetensors").exists()
    if fault == "distill_checkpoint:3":
        assert (project.root / "models/checkpoints/latest.tmp/weights.safetensors").exists()

    resumed = run(project, [*project.distill, "--resume"])
    assert resumed.rc == 0, resumed.output
    got = load_file(project.root / "models/step-student/model.safetensors")
    want = load_file(uninterrupted_distillation / "models/step-student/model.safetensors")
    assert got.keys() == want.keys()
    differing = [key for key in want if not torch.allclose(got[key], want[key], rtol=1e-6, atol=1e-7)]
    record(lost=len(differing))
    assert differing == []
    assert ((project.root / "reports/distill/train_loss.csv").read_text()
            == (uninterrupted_distillation / "reports/distill/train_loss.csv").read_text())
    record(recovered=1)
