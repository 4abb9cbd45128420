"""The feature store against Theia-style webdataset shards: the same features, read the way training reads them.

Theia (Shang et al. 2024, github.com/bdaiinstitute/theia), the closest public system, keeps precomputed teacher
features as webdataset tar shards: per data set, one shard series per column (the inputs, and each teacher), 1000
samples per shard, one safetensors blob per sample and teacher. Training streams every column through its own
`wds.WebDataset(detshuffle, shardshuffle, seed)` -> decode (+ feature standardisation) -> a seeded random mix over
the data sets -> `WebLoader(...).shuffle(buffer, seed)`, and zips the per-column loaders: identical seeds and
identical sample counts keep the columns aligned sample by sample.

This bench writes the default training corpus (the `pretrain` data sets of params.yaml, every default teacher, and
the raw series) from the existing stores into such shards in a temp dir, then reads both layouts in the training
access pattern (shuffled, every teacher and the series aligned per segment, batches of one data set, standardised
targets, pooled and padded by the same collate function) with one reader thread each:

- ours: `pipeline.distill.loader.DistillationData.batches`, the distill stage's own loader (whole store chunks,
  a shuffle buffer of `shuffle_blocks` chunks, one prefetch thread);
- shards: the Theia pipeline above, run by one background thread feeding the consumer, with a shuffle buffer of
  the same number of segments as ours (`shuffle_blocks * chunk_segments`; Theia's default is 1000).

Each side runs in its own process, `--repeats` times alternating (the fastest run counts, the largest peaks):
segments/s of the read loop, peak anonymous RSS (sampled from /proc: what the read path allocates) and peak RSS
(getrusage ru_maxrss, which also counts torch's shared-library pages and so moves with the page cache); bytes on
disk are du of the training data sets' groups in the feature stores and the series store against du of the
shards. The last line, e.g.
`store_vs_shards: ratio=2.3 (goal >= 2), memory ours=1.2 GB shards=1.5 GB, disk ours=... shards=...`.

    .venv/bin/python bench/store_vs_shards.py [--epochs 5] [--repeats 3] [--quick] [--params params.yaml]

Needs the `bench` extra (webdataset): `pip install -c constraints.txt -e '.[bench]'`.
"""

import argparse
import io
import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

try:
    import webdataset as wds
except ImportError:  # the `bench` extra
    wds = None

from pipeline.distill.loader import Batch, DistillationData, collate_segments, stop_reader  # noqa: E402

MISSING = ("store_vs_shards: the shard side needs the `webdataset` package, which is not installed; "
           "install the bench extra: pip install -c constraints.txt -e '.[bench]'")
SAMPLES_PER_SHARD = 1000  # Theia's default


def require_webdataset() -> None:
    if wds is None:
        raise SystemExit(MISSING)


# ------------------------------------------------------------------------------------------------ setup


def training_data(params_path: str | Path) -> DistillationData:
    """The distill stage's loader on the stores params.yaml names (`distillation_data`, as `distill` builds it)."""
    from pipeline.distill.loader import distillation_data
    from schemas.params import load_params

    return distillation_data(load_params(params_path))


def sample_key(dataset: str, row: int) -> str:
    return f"{dataset}-{row:06d}"  # webdataset keys end at the first dot: data set names have none


def parse_key(key: str) -> tuple[str, int]:
    dataset, row = key.rsplit("-", 1)
    return dataset, int(row)


def write_shards(data: DistillationData, root: str | Path, samples_per_shard: int = SAMPLES_PER_SHARD) -> int:
    """Every segment of the training data sets into Theia's layout, from the feature stores and the series store.

    root/<data set>/<column>/<data set>-%06d-<split>.tar, column = `series` or a teacher; split = train or val
    (the loader's held-out segments). A teacher sample is `<key>.<teacher>.safetensors` holding `embedding`
    (n_tokens, F) in the store's dtype (the valid tokens only); a series sample is `<key>.series.npy`, the
    segment's (channels, time) values. Returns the number of segments written.
    """
    from safetensors.numpy import save as save_safetensors

    from pipeline.extract import SegmentValues

    require_webdataset()
    root = Path(root)
    written = 0
    for name, dataset in data.datasets.items():
        columns = ["series", *data.teachers]
        writers = {}
        for column in columns:
            (root / name / column).mkdir(parents=True, exist_ok=True)
            for split in ("train", "val"):
                writers[column, split] = wds.ShardWriter(str(root / name / column / f"{name}-%06d-{split}.tar"),
                                                         maxcount=samples_per_shard, verbose=0)
        dtypes = {t: np.dtype(s.manifest.dtype) for t, s in data.stores.items()}
        for block in range(dataset.n_blocks):
            rows = data.block_rows(name, block)
            values_of = SegmentValues(dataset.reader)
            values_of.preload([dataset.segments[r] for r in rows])
            chunks = {t: store.read_chunk(name, block) for t, store in data.stores.items()}
            for k, row in enumerate(rows):
                key = sample_key(name, row)
                split = "val" if data.val_rows[name][row] else "train"
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(values_of(dataset.segments[row])))
                writers["series", split].write({"__key__": key, "series.npy": buffer.getvalue()})
                for teacher, (features, counts, _) in chunks.items():
                    tokens = np.ascontiguousarray(features[k, : int(counts[k])].astype(dtypes[teacher]))
                    writers[teacher, split].write({"__key__": key,
                                                   f"{teacher}.safetensors": save_safetensors({"embedding": tokens})})
                written += 1
        for writer in writers.values():
            writer.close()
    for path in root.rglob("*.tar"):  # ShardWriter opens a first shard even for an empty split
        if path.stat().st_size <= 10240 and not _tar_members(path):
            path.unlink()
    return written


def _tar_members(path: Path) -> int:
    import tarfile

    with tarfile.open(path) as tar:
        return len(tar.getmembers())


# ------------------------------------------------------------------------------------------------ reading


def read_ours(data: DistillationData, epochs: int) -> Iterator[Batch]:
    """What `step-pipeline distill` iterates: the loader's batches, epoch after epoch."""
    for epoch in range(epochs):
        yield from data.batches(data.epoch_plan(epoch))


class SeededMix(torch.utils.data.IterableDataset):
    """A seeded random interleave of iterable data sets, until all are exhausted (Theia's `RandomMix`): the same
    seed and the same lengths give every column the same data-set order."""

    def __init__(self, parts: list, weights: list[float], seed: int):
        self.parts, self.weights, self.seed = parts, weights, seed

    def __iter__(self):
        sources, weights = [iter(p) for p in self.parts], list(self.weights)
        generator = torch.Generator().manual_seed(self.seed)
        while sources:
            cumulative = np.cumsum(weights) / np.sum(weights)
            i = min(int(np.searchsorted(cumulative, torch.rand(1, generator=generator).item())), len(sources) - 1)
            try:
                yield next(sources[i])
            except StopIteration:
                del sources[i], weights[i]


def _decoder(mean: dict[str, torch.Tensor], std: dict[str, torch.Tensor]):
    """Theia's `decode_sample`: safetensors -> tensor, standardised with the training statistics; npy -> array."""
    from safetensors.torch import load as load_safetensors

    def decode(key: str, blob: bytes):
        if key.endswith(".safetensors"):
            teacher = key[1:].split(".")[0]
            tokens = load_safetensors(blob)["embedding"].float()
            return (tokens - mean[teacher]) / std[teacher]
        if key.endswith(".npy"):
            return np.load(io.BytesIO(blob))
        return None

    return decode


def shard_loaders(data: DistillationData, root: str | Path, shuffle_buffer: int, seed: int) -> dict:
    """One WebLoader per column (series, each teacher), built as Theia's `get_image_video_dataset` +
    `get_frame_dataloader`: per data set a detshuffled WebDataset of its shards, decoded; a seeded mix over the
    data sets weighted by their length; a seeded shuffle buffer."""
    require_webdataset()
    root = Path(root)
    names = list(data.datasets)
    lengths = [int((~data.val_rows[n]).sum()) for n in names]
    decode = _decoder(data.mean, data.std)
    loaders = {}
    for column in ["series", *data.teachers]:
        parts = []
        for name in names:
            urls = sorted(str(p) for p in (root / name / column).glob("*-train.tar"))
            parts.append(wds.WebDataset(urls, shardshuffle=100, detshuffle=True, seed=seed,
                                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                                        empty_check=False).decode(decode))
        mix = SeededMix(parts, lengths, seed)
        loaders[column] = wds.WebLoader(mix, batch_size=None, num_workers=0).shuffle(shuffle_buffer, seed=seed)
    return loaders


def read_shards(data: DistillationData, root: str | Path, epochs: int, shuffle_buffer: int | None = None,
                seed: int = 0, prefetch: int | None = None) -> Iterator[Batch]:
    """The shards in the training access pattern: the zipped column loaders run in one background thread (the
    same single reader thread as ours); the consumer checks that every column holds the same segment, groups
    segments of one data set into batches of `batch_size` and collates them with the loader's own function.
    The thread reads up to `prefetch` segments ahead: by default as many as the loader's `prefetch_blocks`."""
    shuffle_buffer = shuffle_buffer or data.shuffle_blocks * next(iter(data.datasets.values())).block_size
    prefetch = prefetch or max(1, data.prefetch) * next(iter(data.datasets.values())).block_size
    loaders = shard_loaders(data, root, shuffle_buffer, seed)
    columns = list(loaders)
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def read_all():
        try:
            for _ in range(epochs):
                for samples in zip(*loaders.values(), strict=True):
                    if stop.is_set():
                        return
                    ready.put(samples)
                ready.put("epoch")
            ready.put(None)
        except BaseException as exc:  # re-raised in the consumer
            ready.put(exc)

    thread = threading.Thread(target=read_all, name="shards-prefetch", daemon=True)
    thread.start()
    pending: dict[str, list] = {}

    def flush(name):
        items, pending[name] = pending[name], []
        return collate_segments(data.datasets[name], data.teachers, items, data.max_target_tokens)

    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if item == "epoch":  # partial batches at the end of an epoch, as the loader's plan has
                yield from (flush(name) for name in list(pending) if pending[name])
                continue
            key = item[0]["__key__"]
            if any(sample["__key__"] != key for sample in item[1:]):
                raise RuntimeError(f"shard columns out of step: {[s['__key__'] for s in item]}")
            name, row = parse_key(key)
            sample = {c: s for c, s in zip(columns, item, strict=True)}
            targets = {t: sample[t][f"{t}.safetensors"] for t in data.teachers}
            pending.setdefault(name, []).append((data.datasets[name].segments[row].id, sample["series"]["series.npy"],
                                                 targets, dict.fromkeys(data.teachers, 0.0)))
            if len(pending[name]) == data.batch_size:
                yield flush(name)
    finally:
        stop_reader(thread, stop, ready)


# ------------------------------------------------------------------------------------------------ measuring


def du(paths: list[Path]) -> int:
    """Bytes allocated on disk (what `du` counts) under the paths."""
    total = 0
    for path in paths:
        for directory, _, files in os.walk(path):
            total += sum(os.stat(os.path.join(directory, f)).st_blocks * 512 for f in files)
    return total


def store_paths(data: DistillationData, params_path: str | Path) -> list[Path]:
    """The training data sets' groups in every feature store and in the series store."""
    from schemas.params import load_params

    params = load_params(params_path)
    paths = [Path(store.path) / name for store in data.stores.values() for name in data.datasets]
    return paths + [Path(params.prepare.series_store) / name for name in data.datasets]


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _anon_rss() -> int:
    """Resident anonymous memory (heap, arrays, tensors) of this process, in bytes; 0 where /proc has none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class AnonPeak:
    """Peak RssAnon over a block, sampled every `interval` s by a thread. ru_maxrss also counts the file-backed
    pages of torch's shared libraries, which the page cache of a busy machine swings by ~100 MB between runs;
    anonymous memory is what the read path itself allocates."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, _anon_rss(), threading.Event()

    def _watch(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _anon_rss())

    def __enter__(self):
        self._thread = threading.Thread(target=self._watch, name="anon-peak", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _anon_rss())


def measure(side: str, params_path: str, shards: str, epochs: int, shuffle_buffer: int | None,
            profile: str | None) -> dict:
    """One side in this process: segments/s over `epochs` epochs, the process's peak RSS (ru_maxrss) and peak
    anonymous RSS (sampled). Both sides run with malloc arenas bounded as `distill` bounds them."""
    from pipeline.distill.memory import bound_allocator_arenas

    bound_allocator_arenas()
    data = training_data(params_path)
    setup_rss, setup_anon = peak_rss(), _anon_rss()
    batches = read_ours(data, epochs) if side == "ours" else read_shards(data, shards, epochs, shuffle_buffer)
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with AnonPeak() as anon:
        start, segments = time.perf_counter(), 0
        for batch in batches:
            segments += len(batch.segment_ids)
        seconds = time.perf_counter() - start
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    return {"side": side, "segments": segments, "seconds": seconds, "segments_per_second": segments / seconds,
            "peak_rss": peak_rss(), "setup_rss": setup_rss, "peak_anon": anon.peak, "setup_anon": setup_anon,
            "epochs": epochs}


def run_side(side: str, params_path: str, shards: str, epochs: int, shuffle_buffer: int | None,
             profile: str | None = None) -> dict:
    command = [sys.executable, __file__, "--side", side, "--params", params_path, "--shards", shards,
               "--epochs", str(epochs)]
    if shuffle_buffer:
        command += ["--shuffle-buffer", str(shuffle_buffer)]
    if profile:
        command += ["--profile", profile]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"store_vs_shards: the {side} side failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; the fastest counts")
    parser.add_argument("--quick", action="store_true", help="one epoch, one run per side (under 2 minutes)")
    parser.add_argument("--shuffle-buffer", type=int, default=None,
                        help="segments in the shards' shuffle buffer (default: the loader's shuffle window)")
    parser.add_argument("--profile", metavar="DIR", help="write cProfile stats of each side's read loop here")
    parser.add_argument("--keep", metavar="DIR", help="write the shards here and keep them (default: a temp dir)")
    parser.add_argument("--side", choices=["ours", "shards"], help=argparse.SUPPRESS)  # one side, in a subprocess
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        if args.side == "shards":
            require_webdataset()
        profile = str(Path(args.profile) / f"{args.side}.prof") if args.profile else None
        print(json.dumps(measure(args.side, args.params, args.shards, args.epochs, args.shuffle_buffer, profile)))
        return

    require_webdataset()
    epochs, repeats = (1, 1) if args.quick else (args.epochs, args.repeats)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="store_vs_shards-") as tmp:
        root = Path(args.keep or tmp)
        data = training_data(args.params)
        start = time.perf_counter()
        written = write_shards(data, root)
        print(f"wrote {written} segments x {1 + len(data.teachers)} columns ({', '.join(['series', *data.teachers])})"
              f" as shards of {SAMPLES_PER_SHARD} under {root} in {time.perf_counter() - start:.1f} s")
        disk = {"ours": du(store_paths(data, args.params)), "shards": du([root])}
        del data
        results = {}
        for _ in range(repeats):  # the sides alternate; each keeps its fastest run and its largest peaks
            for side in ("ours", "shards"):
                r = run_side(side, args.params, str(root), epochs, args.shuffle_buffer, args.profile)
                best = results.setdefault(side, r)
                if r["segments_per_second"] > best["segments_per_second"]:
                    results[side] = r | {k: max(r[k], best[k]) for k in ("peak_rss", "peak_anon")}
                else:
                    best.update({k: max(r[k], best[k]) for k in ("peak_rss", "peak_anon")})
    for side, r in results.items():
        print(f"{side}: {r['segments']} segments in {r['seconds']:.2f} s = {r['segments_per_second']:.0f} segments/s "
              f"({epochs} epochs, best of {repeats}); peak anonymous RSS {gb(r['peak_anon'])} ({gb(r['setup_anon'])} after set-up), "
              f"peak RSS {gb(r['peak_rss'])} ({gb(r['setup_rss'])} after set-up); disk {gb(disk[side])}")
    if results["ours"]["segments"] != results["shards"]["segments"]:
        raise SystemExit("store_vs_shards: the two sides read different numbers of segments")
    ratio = results["ours"]["segments_per_second"] / results["shards"]["segments_per_second"]
    print(f"store_vs_shards: ratio={ratio:.1f} (goal >= 2), memory ours={gb(results['ours']['peak_anon'])} "
          f"shards={gb(results['shards']['peak_anon'])} (peak anonymous RSS; ru_maxrss "
          f"{gb(results['ours']['peak_rss'])} / {gb(results['shards']['peak_rss'])}), "
          f"disk ours={gb(disk['ours'])} shards={gb(disk['shards'])}")


if __name__ == "__main__":
    main()
