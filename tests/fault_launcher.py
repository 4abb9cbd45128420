"""Run the real `step-pipeline` command line in this process, with one fault injected: test-side code only.

    python -m tests.fault_launcher extract --teacher spectral --params p.yaml      # STEP_FAULT=after_features:3

Without STEP_FAULT this is exactly the `step-pipeline` console script (`pipeline.cli:app`). With it, one hook
is installed by monkeypatching the library (nothing in pipeline/ knows about faults), and the process kills
itself with SIGKILL at a chosen point, or waits, or makes the teacher fail. STEP_FAULT is `<point>[:<arg>]`:

extraction
  layout:N          SIGKILL after the N-th zarr node (group or array) of a layout is created: the groups' layouts
                    are cut short (each is written in one batch, chunk_done last)
  chunk_start:N     SIGKILL when the N-th FeatureStore.write_chunk starts (chunk computed, nothing written)
  features_file:N   SIGKILL in the middle of writing the N-th features chunk file: half its bytes are in
                    zarr's temporary `.partial` file, as a kill during the write leaves it
  after_features:N  SIGKILL right after the N-th features write (no statistics, no done flag yet)
  after_stats:N     SIGKILL right after the N-th chunk's statistics (features and statistics, no flag)
  after_flag:N      SIGKILL right after the N-th chunk_done flag is set
  finalize          SIGKILL in finalize, after the manifest says complete, before metadata consolidation
  ready:PACE        touch $STEP_FAULT_DIR/ready once the store is open and locked, and sleep PACE seconds before
                    every zarr array write (sync or async: zarr.core.array._set_selection), so the work spans
                    a known time and a kill at a random time (sent by the test) lands inside it, often between
                    the writes of one chunk; no byte written changes
  hold              after the first chunk is written, touch $STEP_FAULT_DIR/holding, then wait for
                    $STEP_FAULT_DIR/release (keeps the store locked while a second process tries it)
  poison:SHA1       the teacher raises "simulated CUDA out of memory" on every batch holding the segment
                    whose float32 values hash to SHA1 (so retries at smaller sizes fail too)
  fsize:BYTES       no file may grow beyond BYTES (`ulimit -f`; SIGXFSZ ignored): writes fail with EFBIG,
                    as on a full disk
  as_user:UID       drop root to UID (and its group) before the command runs: a root-owned output
                    directory becomes unwritable, as for an ordinary user
distillation
  distill_step:N        SIGKILL when step N+1 is about to start (N steps done, the last checkpoint before)
  distill_checkpoint:N  SIGKILL in the N-th checkpoint save, after its weights file is written, before it
                        replaces the previous checkpoint
  distill_ready:PACE    touch $STEP_FAULT_DIR/ready when the first step starts and sleep PACE seconds before
                        every step (the test kills at a random time inside the run)

STEP_FAULT_START_AFTER=FILE makes the launcher wait, after its (slow) imports, until FILE exists before it runs
the command: a second process can import while the first runs and start exactly when wanted.
"""

import hashlib
import os
import signal
import sys
import time
import uuid
from pathlib import Path


def die() -> None:
    """What a SIGKILL does: no cleanup, no finally blocks, no flushing, whichever thread calls it."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached


def touch(name: str) -> None:
    Path(os.environ["STEP_FAULT_DIR"], name).touch()


def segment_hash(values) -> str:
    """The hash the poison hook and the tests agree on: sha1 of a segment's (channels, time) float32 bytes."""
    import numpy as np

    return hashlib.sha1(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


class Counter:
    def __init__(self, target: int):
        self.target, self.count = target, 0

    def hit(self) -> bool:
        self.count += 1
        return self.count == self.target


def install(fault: str) -> None:
    point, _, arg = fault.partition(":")
    if point == "layout":
        import pipeline.feature_store.layout as layout

        counter, original = Counter(int(arg)), layout.create_nodes

        async def create_nodes(*args, **kwargs):  # the layout creates every node through this
            async for created in original(*args, **kwargs):
                yield created
                if counter.hit():
                    die()

        layout.create_nodes = create_nodes
    elif point == "chunk_start":
        from pipeline.feature_store import FeatureStore

        counter, original = Counter(int(arg)), FeatureStore.write_chunk

        def write_chunk(self, *args, **kwargs):
            if counter.hit():
                die()
            return original(self, *args, **kwargs)

        FeatureStore.write_chunk = write_chunk
    elif point == "features_file":
        import zarr.storage._local as local

        counter, original = Counter(int(arg)), local._put

        def put(path, value, *args, **kwargs):
            if "/features/c/" in Path(path).as_posix() and counter.hit():
                data = bytes(value.as_buffer_like())
                path = Path(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path.with_suffix(f".{uuid.uuid4().hex}.partial"), "wb") as handle:  # zarr's temp name
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                    die()
            return original(path, value, *args, **kwargs)

        local._put = put
    elif point in ("after_features", "after_stats", "after_flag"):
        import numpy as np
        import zarr.core.array as zarr_array

        watched = {"after_features": "features", "after_stats": "stat_m2", "after_flag": "chunk_done"}[point]
        counter, original = Counter(int(arg)), zarr_array._set_selection

        async def set_selection(store_path, metadata, codec_pipeline, config, indexer, value, **kwargs):
            # every array write, Array.__setitem__'s and AsyncArray.setitem's, ends here
            await original(store_path, metadata, codec_pipeline, config, indexer, value, **kwargs)
            if store_path.path.rsplit("/", 1)[-1] == watched and (watched != "chunk_done" or np.all(value)):
                if counter.hit():
                    die()

        zarr_array._set_selection = set_selection
    elif point == "finalize":
        from pipeline.feature_store import FeatureStore

        def consolidate(self):  # finalize's last step, after the manifest is written
            die()

        FeatureStore._consolidate = consolidate
    elif point == "ready":
        import zarr.core.array as zarr_array

        from pipeline.feature_store import FeatureStore

        original_open, original_set = FeatureStore.create_or_open.__func__, zarr_array._set_selection

        def create_or_open(cls, *args, **kwargs):
            store = original_open(cls, *args, **kwargs)
            touch("ready")
            return store

        async def set_selection(*args, **kwargs):
            time.sleep(float(arg))  # blocks zarr's event loop, as a slow write would
            await original_set(*args, **kwargs)

        FeatureStore.create_or_open = classmethod(create_or_open)
        zarr_array._set_selection = set_selection
    elif point == "hold":
        from pipeline.feature_store import FeatureStore

        original_write, held = FeatureStore.write_chunk, []

        def write_chunk(self, *args, **kwargs):
            original_write(self, *args, **kwargs)
            if not held:
                held.append(True)
                touch("holding")
                release = Path(os.environ["STEP_FAULT_DIR"], "release")
                deadline = time.monotonic() + 120
                while not release.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)

        FeatureStore.write_chunk = write_chunk
    elif point == "poison":
        from pipeline.teachers.spectral import SpectralTeacherAdapter

        original_encode = SpectralTeacherAdapter.encode

        def encode(self, values, sampling_rate):
            if any(segment_hash(item) == arg for item in values):
                raise RuntimeError(f"simulated CUDA out of memory (batch of {len(values)})")
            return original_encode(self, values, sampling_rate)

        SpectralTeacherAdapter.encode = encode
    elif point in ("distill_step", "distill_ready"):
        from pipeline.distill import train

        original_rate = train.learning_rate

        def learning_rate(step, *args, **kwargs):
            if point == "distill_ready":
                if step == 0:
                    touch("ready")
                time.sleep(float(arg))
            elif step == int(arg):
                die()
            return original_rate(step, *args, **kwargs)

        train.learning_rate = learning_rate
    elif point == "distill_checkpoint":
        from pipeline.distill import train

        counter, original_save = Counter(int(arg)), train.save_file

        def save_file(tensors, filename, *args, **kwargs):
            original_save(tensors, filename, *args, **kwargs)
            if counter.hit():
                die()

        train.save_file = save_file
    elif point == "fsize":
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), int(arg)))
    elif point == "as_user":
        os.setgroups([])
        os.setgid(int(arg))
        os.setuid(int(arg))
    else:
        raise SystemExit(f"fault_launcher: unknown STEP_FAULT {fault!r}")


def main() -> None:
    from pipeline.cli import app

    fault = os.environ.get("STEP_FAULT")
    if fault:
        install(fault)
    start_after = os.environ.get("STEP_FAULT_START_AFTER")
    deadline = time.monotonic() + 300
    while start_after and not Path(start_after).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    app(args=sys.argv[1:], prog_name="step-pipeline")


if __name__ == "__main__":
    main()
