"""Batches for distillation: raw segments from the series readers, targets from every teacher's feature store.

Why blocks: Zarr reads one sample at a time at ~150 samples/s here, so the loader reads whole store chunks
("blocks": the same segment range in every store), shuffles within a buffer of several blocks and prefetches
blocks in a background thread. The order of everything (blocks, rows, batches, crops) is a pure function of
(seed, epoch), computed from metadata alone, so `--resume` can skip to any step without reading a byte and
reproduce the uninterrupted run exactly.
"""

import hashlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from data_catalog.readers import SeriesReader
from data_catalog.segments import Segment, segment_series
from pipeline.distill.memory import release_free_memory
from pipeline.extract import SegmentValues, known_lengths
from pipeline.feature_store import FeatureStore, merge_moments, store_location
from schemas.manifest import config_hash
from schemas.params import Params

log = logging.getLogger(__name__)


# Smallest per-source spread (in units of the corpus's) that `target_standardisation: source` divides by.
SOURCE_MIN_SCALE = 0.1


class StoreCoverageError(RuntimeError):
    """A feature store does not match what the params name (stale, foreign, incomplete or misaligned)."""


@dataclass
class DataSet:
    """One training data set: its reader, its segments and where they sit in the stores."""

    name: str
    reader: SeriesReader
    segments: list[Segment]
    sampling_rate: float | None  # None: unknown
    n_blocks: int
    block_size: int
    token_rate: dict[str, float]  # per teacher
    fixed_montage: bool = False  # the catalog declares channel_names: channel c is the same sensor in every series


@dataclass
class Batch:
    """Student input and per-teacher targets for segments of one data set.

    values (batch, channels, time) zero-padded, lengths (batch,); per teacher: targets (batch, tokens, feature)
    standardised, zero-padded, n_tokens (batch,), and token_centres (batch, tokens): the centre of every target
    token in samples of `values` (a pooled group's centre is the mean of its members'), 0 at padding.
    target_loc, target_scale: per teacher (feature,), the batch's data set's own mean and spread of the
    standardised targets, when the loss measures errors per source (`distill.target_standardisation: source`).
    """

    dataset: str
    segment_ids: list[str]
    values: torch.Tensor
    lengths: torch.Tensor
    sampling_rate: float | None
    targets: dict[str, torch.Tensor]
    n_tokens: dict[str, torch.Tensor]
    token_centres: dict[str, torch.Tensor]
    fixed_montage: bool = False
    target_loc: dict[str, torch.Tensor] | None = None
    target_scale: dict[str, torch.Tensor] | None = None

    def to(self, device: torch.device) -> "Batch":
        move = lambda tensors: None if tensors is None else {k: v.to(device) for k, v in tensors.items()}  # noqa: E731
        return Batch(self.dataset, self.segment_ids, self.values.to(device), self.lengths.to(device),
                     self.sampling_rate, move(self.targets), move(self.n_tokens), move(self.token_centres),
                     self.fixed_montage, move(self.target_loc), move(self.target_scale))


def epoch_augment_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's random crops and channel subsets (`DistillationData.batches`), distinct per run seed
    and epoch: what `distill` passes, and what a bench must pass to see the batches training sees."""
    return seed * 1_000_003 + epoch


def pad_series(series: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(channels, time_i) arrays -> (batch, channels, max time) zero-padded on the right, and lengths (batch,)."""
    padded = pad_sequence([torch.from_numpy(np.ascontiguousarray(v.T)) for v in series], batch_first=True)
    return padded.transpose(1, 2), torch.tensor([v.shape[1] for v in series])


def pool_tokens(tokens: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """(N, F) -> (ceil(N / k), F): means of k consecutive tokens, k the smallest factor giving <= max_tokens.

    Long segments give teachers thousands of tokens (a 20-minute record through a 1 s hop); the student, forced
    to that count, would attend over all of them. Pooling keeps the grid uniform (k times coarser) and aligned.
    """
    factor = -(-tokens.shape[0] // max_tokens)
    if factor == 1:
        return tokens
    pad = (-tokens.shape[0]) % factor
    padded = torch.cat([tokens, tokens.new_zeros(pad, tokens.shape[1])])
    counts = torch.full((padded.shape[0] // factor,), float(factor))
    counts[-1] -= pad  # the last group averages only the tokens it has
    return padded.view(-1, factor, tokens.shape[1]).sum(dim=1) / counts[:, None]


def target_statistics(store: FeatureStore, groups: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (F,) over the valid tokens of `groups` only, merged from the per-chunk moments
    the store kept while it was written (the manifest's statistics cover every group, probe tasks included)."""
    counts, means, m2s = [], [], []
    for group in sorted(groups):  # a fixed merge order
        _, count, mean, m2 = store.chunk_statistics(group)
        counts.append(count), means.append(mean), m2s.append(m2)
    _, mean, variance = merge_moments(np.concatenate(counts), np.concatenate(means), np.concatenate(m2s))
    return mean, np.sqrt(variance)


def is_validation(segment_id: str, fraction: float) -> bool:
    """Held-out segments chosen by a hash of their id: stable across runs, spread over every data set."""
    digest = hashlib.sha256(segment_id.encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 < fraction


def check_stores(stores: dict[str, FeatureStore], expected_config: dict[str, dict], segment_config: dict,
                 datasets: list[DataSet]) -> None:
    """Refuse any store that is incomplete, made with another configuration, or covers other segments."""
    for name, store in stores.items():
        manifest, where = store.manifest, f"feature store {store.path}"
        if not manifest.complete:
            raise StoreCoverageError(f"{where} is incomplete; rerun `step-pipeline extract --teacher {name}`")
        wanted = config_hash(expected_config[name])
        if manifest.config_hash != wanted:
            raise StoreCoverageError(
                f"{where} was made with config hash {manifest.config_hash} but params.yaml's extract.teachers."
                f"{name} hashes to {wanted} (a stale store after a teacher change); rerun `step-pipeline extract "
                f"--teacher {name} --overwrite` or `dvc repro`"
            )
        if manifest.segment != segment_config:
            raise StoreCoverageError(f"{where} was segmented with {manifest.segment}, params say {segment_config}")
        for data in datasets:
            stored, _ = store.segments(data.name)
            expected = [s.id for s in data.segments]
            if list(stored) != expected:
                raise StoreCoverageError(
                    f"{where}, data set {data.name!r}: its {len(stored)} segment ids differ from the "
                    f"{len(expected)} segments of the series store; re-extract"
                )


def collate_segments(data: DataSet, teachers: list[str], items: list[tuple], max_target_tokens: int) -> Batch:
    """One batch from segments of one data set: items are (segment id, values (channels, time), {teacher: tokens
    (n, F) standardised}, {teacher: first token's start offset in samples}); pads, pools and places token centres."""
    values, lengths = pad_series([item[1] for item in items])
    targets, n_tokens, centres = {}, {}, {}
    samples_per_unit = data.sampling_rate or 1.0  # unknown rate: token times are in samples
    for teacher in teachers:
        tokens = [pool_tokens(item[2][teacher], max_target_tokens) for item in items]
        targets[teacher] = pad_sequence(tokens, batch_first=True)  # (batch, max tokens, feature)
        n_tokens[teacher] = torch.tensor([t.shape[0] for t in tokens])
        token_samples = samples_per_unit / data.token_rate[teacher]  # samples per (unpooled) teacher token
        centres[teacher] = pad_sequence([
            pool_tokens(item[3][teacher] + (torch.arange(item[2][teacher].shape[0], dtype=torch.float64)[:, None]
                                             + 0.5) * token_samples, max_target_tokens)[:, 0]
            for item in items], batch_first=True)  # (batch, max tokens) in samples of the segment
    return Batch(data.name, [item[0] for item in items], values, lengths, data.sampling_rate, targets, n_tokens,
                 centres, data.fixed_montage)


class DistillationData:
    """Plans and reads distillation batches. `epoch_plan` is metadata only; `batches` does the I/O."""

    def __init__(self, datasets: list[DataSet], stores: dict[str, FeatureStore], batch_size: int,
                 shuffle_blocks: int, prefetch_blocks: int, val_fraction: float, seed: int,
                 crop_min_fraction: float | None = None, max_target_tokens: int = 256, rank: int = 0,
                 world_size: int = 1, max_channels: int | None = None, target_standardisation: str = "corpus"):
        self.datasets = {d.name: d for d in datasets}
        self.rank, self.world_size = rank, world_size  # data-parallel: this rank reads blocks rank::world_size
        self.stores = stores
        self.batch_size, self.shuffle_blocks, self.prefetch = batch_size, shuffle_blocks, prefetch_blocks
        self.seed, self.crop_min_fraction, self.max_target_tokens = seed, crop_min_fraction, max_target_tokens
        self.max_channels = max_channels
        self.teachers = list(stores)
        # per-feature statistics of each store over the training data sets only (never the probe tasks), for
        # standardised targets; a constant feature keeps std 1e-6
        self.mean, self.std = {}, {}
        for teacher, store in stores.items():
            mean, std = target_statistics(store, list(self.datasets))
            self.mean[teacher] = torch.tensor(mean, dtype=torch.float32)
            self.std[teacher] = torch.tensor(std, dtype=torch.float32).clamp_min(1e-6)
        # the same statistics as numpy arrays, for standardising in place (`standardised`)
        self._mean_np = {t: m.numpy() for t, m in self.mean.items()}
        self._std_np = {t: s.numpy() for t, s in self.std.items()}
        # per source: each data set's own mean and spread of the standardised targets, {data set: {teacher: (F,)}}
        self.source_loc, self.source_scale = {}, {}
        if target_standardisation == "source":
            for d in datasets:
                self.source_loc[d.name], self.source_scale[d.name] = {}, {}
                for teacher, store in stores.items():
                    mean, std = target_statistics(store, [d.name])
                    self.source_loc[d.name][teacher] = (torch.tensor(mean, dtype=torch.float32)
                                                        - self.mean[teacher]) / self.std[teacher]
                    # a feature (nearly) constant within a source has its errors magnified at most 1 / SOURCE_MIN_SCALE
                    self.source_scale[d.name][teacher] = (torch.tensor(std, dtype=torch.float32)
                                                          / self.std[teacher]).clamp_min(SOURCE_MIN_SCALE)
        self.val_rows = {d.name: np.array([is_validation(s.id, val_fraction) for s in d.segments], bool)
                         for d in datasets}
        self.blocks = [(d.name, b) for d in datasets for b in range(d.n_blocks)]
        if len(self.blocks) < world_size:
            raise ValueError(f"{len(self.blocks)} store blocks cannot be shared by {world_size} ranks: use fewer "
                             "processes or smaller store chunks (extract.compression.chunk_segments)")

    @property
    def n_train(self) -> int:
        return int(sum((~rows).sum() for rows in self.val_rows.values()))

    def block_rows(self, dataset: str, block: int) -> range:
        data = self.datasets[dataset]
        return range(block * data.block_size, min((block + 1) * data.block_size, len(data.segments)))

    def epoch_plan(self, epoch: int) -> list[tuple[list[tuple[str, int]], list[tuple[str, np.ndarray]]]]:
        """[(blocks to read, [(data set, segment rows of one batch), ...]), ...]: this rank's training epoch.

        Every rank shuffles the blocks the same way and takes every world_size-th one, so ranks read disjoint
        blocks; all ranks run the same number of steps (the smallest rank's), as data-parallel training needs.
        """
        plan = self._rank_plan(epoch, self.rank)
        if self.world_size > 1:
            steps = min(sum(len(b) for _, b in self._rank_plan(epoch, r)) for r in range(self.world_size))
            plan = _first_batches(plan, steps)
        return plan

    def _rank_plan(self, epoch: int, rank: int):
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.blocks[i] for i in rng.permutation(len(self.blocks))]
        if self.world_size > 1:  # (a single process keeps exactly the plan it always had)
            order = order[rank :: self.world_size]
            rng = np.random.default_rng([self.seed, epoch, rank])
        plan = []
        for start in range(0, len(order), self.shuffle_blocks):
            buffer = order[start : start + self.shuffle_blocks]
            batches = []
            for dataset in sorted({name for name, _ in buffer}):  # a batch holds one data set (one channel count)
                rows = np.concatenate([np.array(self.block_rows(name, b)) for name, b in buffer if name == dataset])
                rows = rows[~self.val_rows[dataset][rows]]
                rows = rows[rng.permutation(len(rows))]
                batches += [(dataset, rows[i : i + self.batch_size]) for i in range(0, len(rows), self.batch_size)]
            plan.append((buffer, [batches[i] for i in rng.permutation(len(batches))]))
        return plan

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, batches to skip in it) of a global step; epochs differ in batch count (partial batches)."""
        epoch = 0
        while step >= (n := sum(len(batches) for _, batches in self.epoch_plan(epoch))):
            if n == 0:
                raise ValueError("an epoch has no training batch: every segment is held out for validation"
                                 + (f", or one of the {self.world_size} ranks got blocks without training segments"
                                    if self.world_size > 1 else ""))
            step, epoch = step - n, epoch + 1
        return epoch, step

    def validation_plan(self) -> list[tuple[list[tuple[str, int]], list[tuple[str, np.ndarray]]]]:
        plan = []
        for name, block in self.blocks[self.rank :: self.world_size]:  # ranks share the validation blocks
            rows = np.array(self.block_rows(name, block))
            rows = rows[self.val_rows[name][rows]]
            if len(rows):
                plan.append(([(name, block)], [(name, rows[i : i + self.batch_size])
                                               for i in range(0, len(rows), self.batch_size)]))
        return plan

    def read_block(self, dataset: str, block: int) -> dict:
        """Raw values of the block's segments and every teacher's tokens: one chunk per store.

        Each segment keeps its valid tokens only, in the store's dtype (float16 by default): the loader holds a
        buffer of blocks plus its read-ahead, and padded float32 rows took ~3x the memory. `_collate` standardises
        them.
        """
        data = self.datasets[dataset]
        rows = self.block_rows(dataset, block)
        values_of = SegmentValues(data.reader)
        values_of.preload([data.segments[r] for r in rows])
        values = [values_of(data.segments[r]) for r in rows]
        targets = {}
        for teacher, store in self.stores.items():
            features, counts, _ = store.read_chunk(dataset, block, as_stored=True)
            targets[teacher] = [features[k, : int(counts[k])].copy() for k in range(len(rows))]  # (n_k, F) each
        return {"first_row": rows.start, "values": values, "targets": targets}

    def standardised(self, teacher: str, tokens: np.ndarray) -> torch.Tensor:
        """(n, F) stored tokens -> float32 standardised by the training statistics, in place with numpy (~10x
        faster than torch's broadcast arithmetic on these shapes); a NaN (never written) becomes 0."""
        out = np.nan_to_num(tokens.astype(np.float32), copy=False)
        np.subtract(out, self._mean_np[teacher], out=out)
        np.divide(out, self._std_np[teacher], out=out)
        return torch.from_numpy(out)

    def _prefetched(self, plan) -> Iterator[tuple[dict, list]]:
        """Each buffer's blocks with its batches; a background thread reads up to `prefetch_blocks` blocks ahead
        of the buffer in use (so at most shuffle_blocks + prefetch_blocks + 1 blocks are held at once).

        Between buffers the heap's free pages go back to the system: batches of new lengths and channel counts
        leave holes glibc never returns, and resident memory climbed with the largest batches seen."""
        if self.prefetch == 0:
            for buffer, batches in plan:
                release_free_memory()
                yield {b: self.read_block(*b) for b in buffer}, batches
            return
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def read_all():
            try:
                for buffer, _ in plan:
                    for block in buffer:
                        if stop.is_set():
                            return
                        ready.put((block, self.read_block(*block)))
            except BaseException as exc:  # re-raised in the consumer
                ready.put(exc)

        thread = threading.Thread(target=read_all, name="distill-prefetch", daemon=True)
        thread.start()
        try:
            for buffer, batches in plan:
                blocks = {}  # the previous buffer's blocks are dropped here, before the next ones arrive,
                release_free_memory()  # and what they and the training steps on them freed goes back to the system
                for _ in buffer:
                    item = ready.get()
                    if isinstance(item, BaseException):
                        raise item
                    blocks[item[0]] = item[1]
                yield blocks, batches
        finally:
            stop_reader(thread, stop, ready)

    def batches(self, plan, skip: int = 0, augment_seed: int | None = None) -> Iterator[Batch]:
        """Materialise the plan's batches, skipping the first `skip` (resume) without reading their blocks.

        augment_seed: training batches get their random crops and channel subsets from (augment_seed, batch
        index), so a resumed run draws the same ones; None (validation) leaves segments whole."""
        to_read, skipped = [], 0
        for buffer, batches in plan:
            if not to_read and skipped + len(batches) <= skip:  # whole buffer already trained on: not read
                skipped += len(batches)
                continue
            to_read.append((buffer, batches))
        first, index = skip - skipped, skip
        for blocks, batches in self._prefetched(to_read):
            for dataset, rows in batches[first:]:
                index += 1
                yield self._collate(dataset, rows, blocks, augment_seed, index)
            first = 0
            del blocks  # not held while the next buffer is read (`_prefetched` releases it)

    def _collate(self, dataset: str, rows: np.ndarray, blocks: dict, augment_seed: int | None, index: int) -> Batch:
        data = self.datasets[dataset]
        block_size = data.block_size
        items = []
        for row in rows:
            block = blocks[(dataset, int(row) // block_size)]
            k = int(row) - block["first_row"]
            values = block["values"][k]
            targets = {t: self.standardised(t, block["targets"][t][k]) for t in self.teachers}
            items.append((data.segments[row].id, values, targets, dict.fromkeys(self.teachers, 0.0)))
        if augment_seed is not None and self.crop_min_fraction is not None:
            rng = np.random.default_rng([augment_seed, index])
            items = [self._crop(item, data, rng) for item in items]
        subsets = (augment_seed is not None and self.max_channels is not None
                   and items[0][1].shape[0] > self.max_channels)  # one data set per batch: one channel count
        if subsets:
            rng = np.random.default_rng([augment_seed, index, 1])
            items = [self._channel_subset(item, rng) for item in items]
        batch = collate_segments(data, self.teachers, items, self.max_target_tokens)
        if dataset in self.source_loc:
            batch.target_loc, batch.target_scale = self.source_loc[dataset], self.source_scale[dataset]
        if subsets:
            batch.fixed_montage = False  # channel c of a subset is no longer the montage's c-th sensor
        return batch

    def _channel_subset(self, item, rng: np.random.Generator):
        """`max_channels` of the segment's channels, drawn without replacement and kept in montage order.

        The targets stay those of all channels: the teachers' features are channel averages (and spreads), which
        a random subset estimates; the student's channel attention still sees several channels at once.
        """
        segment_id, values, targets, offsets = item
        keep = np.sort(rng.choice(values.shape[0], self.max_channels, replace=False))
        return segment_id, values[keep], targets, offsets

    def _crop(self, item, data: DataSet, rng: np.random.Generator):
        """A random crop cut at token boundaries of the coarsest teacher, with every teacher's matching tokens.

        Finer teachers keep the tokens lying wholly inside the crop, so all grids stay aligned to within one
        of their own tokens.
        """
        segment_id, values, targets, _ = item
        coarsest = min(self.teachers, key=lambda t: data.token_rate[t])
        n = targets[coarsest].shape[0]
        keep = max(1, int(np.ceil(n * rng.uniform(self.crop_min_fraction, 1.0))))
        if keep >= n:
            return item
        first = int(rng.integers(0, n - keep + 1))
        seconds = (first / data.token_rate[coarsest], (first + keep) / data.token_rate[coarsest])
        samples_per_unit = data.sampling_rate or 1.0  # unknown rate: token times are in samples
        a = int(round(seconds[0] * samples_per_unit))
        b = min(values.shape[1], int(round(seconds[1] * samples_per_unit)))
        if b - a < 1:
            return item
        cropped, offsets = {}, {}
        for teacher, tokens in targets.items():
            rate = data.token_rate[teacher]
            i0 = int(np.ceil(seconds[0] * rate - 1e-9))
            i1 = max(i0 + 1, int(np.floor(seconds[1] * rate + 1e-9)))
            cropped[teacher] = tokens[i0 : min(i1, tokens.shape[0])]
            offsets[teacher] = i0 / rate * samples_per_unit - a  # first kept token's start, in crop samples
            if cropped[teacher].shape[0] == 0:
                return item
        return segment_id, values[:, a:b], cropped, offsets


def _first_batches(plan, n: int):
    """The plan cut after its first n batches (buffers past the cut are dropped, not read)."""
    kept = []
    for buffer, batches in plan:
        if n <= 0:
            break
        kept.append((buffer, batches[:n]))
        n -= len(batches)
    return kept


def stop_reader(thread: threading.Thread, stop: threading.Event, ready: queue.Queue) -> None:
    """Ask a read-ahead thread to stop and wait for it, emptying the queue it may be blocked on when full."""
    stop.set()
    while thread.is_alive():
        try:
            ready.get_nowait()
        except queue.Empty:
            thread.join(timeout=0.1)


def distillation_data(params: Params, rank: int = 0, world_size: int = 1) -> DistillationData:
    """What `distill` trains on: the data sets of `distill.datasets` (default: every pretraining set), their raw
    series and every teacher's store, the stores checked against params (stale or foreign ones are refused)."""
    from data_catalog.catalog import load_catalog

    config = params.distill
    catalog = load_catalog(params.prepare.catalog)
    names = config.datasets or [e.name for e in catalog.datasets if e.role == "pretrain"]
    teachers = list(params.extract.teachers)
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in teachers}
    datasets = open_training_data([catalog.get(name) for name in names], catalog, params.prepare.series_store,
                                  stores, params.segments.max_samples)
    check_stores(stores, {t: params.extract.teachers[t].feature_config() for t in teachers},
                 params.segments.model_dump(), datasets)
    return DistillationData(datasets, stores, config.batch_size, config.shuffle_blocks, config.prefetch_blocks,
                            config.val_fraction, config.seed,
                            crop_min_fraction=config.crop.min_fraction if config.crop.enabled else None,
                            max_target_tokens=config.max_target_tokens, rank=rank, world_size=world_size,
                            max_channels=config.max_channels,
                            target_standardisation=config.target_standardisation)


def open_training_data(datasets, catalog, series_store: str, stores: dict[str, FeatureStore],
                       max_samples: int) -> list[DataSet]:
    """Segments of each training data set, with the block layout read from the stores."""
    from data_catalog.catalog import open_reader

    block_sizes = {store.manifest.compression.chunk_segments for store in stores.values()}
    if len(block_sizes) != 1:  # a block is the same segment range in every store
        raise StoreCoverageError(f"feature stores use different chunk_segments {sorted(block_sizes)}")
    block_size = block_sizes.pop()

    out = []
    for entry in datasets:
        reader = open_reader(entry, catalog, series_store)
        segments = segment_series(reader.ids, known_lengths(reader), max_samples)
        missing = [name for name, store in stores.items() if entry.name not in store.manifest.groups]
        if missing:
            raise StoreCoverageError(f"feature stores of {missing} have no data set {entry.name!r}; run extract "
                                     "for it (or leave it out of distill.datasets)")
        groups = {name: store.manifest.groups[entry.name] for name, store in stores.items()}
        out.append(DataSet(
            name=entry.name, reader=reader, segments=segments,
            sampling_rate=next(iter(groups.values())).sampling_rate,
            n_blocks=-(-len(segments) // block_size), block_size=block_size,
            token_rate={name: group.token_rate for name, group in groups.items()},
            fixed_montage=entry.fixed_montage,
        ))
    return out
