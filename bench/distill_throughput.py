"""Distillation throughput: today's training step against the new one (and bf16 autocast), in lockstep.

Every mode gets its own student, heads and AdamW from the same seed and trains on the very same batches of the
default data (params.yaml, the extracted stores): batch i is run by every mode before batch i + 1 is read, so a
machine that slows down mid-run (other processes on 2 cores) slows every mode alike. Reports segments/s per mode,
the mean train loss over the last quarter of the steps, and the ratio new / today as the last line, e.g.
`distill_throughput: ratio=1.08 (goal >= 2)`.

Modes:
- today: the step as of the profile in docs/benchmarks.md ("Training speed"): channel attention always runs its full
  attention, even over one channel, and every segment shows all its channels;
- new: the shipped code path (attention over one channel is exactly out_proj(v_proj(x)): no q, k, no copies), and
  `distill.max_channels` of params (or --max-channels): the same batches as training reads them (the loader's
  augment seed), so a segment with more channels shows the seeded random subset of that many that `distill`
  would draw; this mode trains on fewer channel-tokens per batch, against the same targets;
- bf16: the new path under torch.autocast(bfloat16) (`distill.bf16`), optional with --bf16 (slow on CPUs without
  native bf16: ~11x slower than float32 on this AVX2 machine).

    .venv/bin/python bench/distill_throughput.py [--steps 60 | --epoch] [--quick] [--bf16] [--max-channels K]

`--padding` times nothing: it prints how many of one epoch's channel-tokens (and of its attention cost, sum of N^2)
are padding, with the distilled model's own stride choice: the most that batching by length could save.
"""

import argparse
import itertools
import time

import numpy as np
import torch

from pipeline.distill.loader import distillation_data, epoch_augment_seed
from pipeline.distill.train import student_and_objective
from pipeline.student import modeling_step
from pipeline.student.modeling_step import STEPEncoder
from schemas.params import load_params


def block_forward_today(self, hidden: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """STEPBlock.forward before the one-channel shortcut (the reference the ratio is measured against)."""
    batch, channels, tokens, width = hidden.shape
    x = self.time_norm(hidden).reshape(batch * channels, tokens, width)
    x = self.time_attention(x, key_mask=token_mask.repeat_interleave(channels, dim=0))
    hidden = hidden + self.dropout(x.view(batch, channels, tokens, width))
    x = self.channel_norm(hidden).transpose(1, 2).reshape(batch * tokens, channels, width)
    x = self.channel_attention(x)
    hidden = hidden + self.dropout(x.view(batch, tokens, channels, width).transpose(1, 2))
    return hidden + self.dropout(self.mlp(self.mlp_norm(hidden)))


class Trainer:
    """One mode's student, heads, objective and optimiser; `step(batch)` returns (seconds, loss)."""

    def __init__(self, params, stores, mode: str):
        config = params.distill
        torch.manual_seed(config.seed)
        self.model, self.heads, self.objective, self.optimizer = student_and_objective(
            params, config, stores, torch.device("cpu"))
        self.parameters = list(self.model.parameters()) + list(self.heads.parameters())
        self.mode, self.grad_clip = mode, config.grad_clip
        self.max_channels = None if mode == "today" else config.max_channels
        self.seconds, self.segments, self.losses = 0.0, 0, []

    def step(self, batch) -> None:
        new_forward = modeling_step.STEPBlock.forward
        if self.mode == "today":
            modeling_step.STEPBlock.forward = block_forward_today
        try:
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.mode == "bf16"):
                loss, _ = self.objective(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
            self.optimizer.step()
            self.seconds += time.perf_counter() - started
        finally:
            modeling_step.STEPBlock.forward = new_forward
        self.segments += len(batch.segment_ids)
        self.losses.append(loss.item())


def padding_overhead(data, model: STEPEncoder, augment_seed: int | None = None) -> tuple[float, float, dict]:
    """(padded / valid channel-tokens, padded / valid sum of N^2, {data set: padded / valid channel-tokens}) over
    the first epoch's training batches, as training reads them with `augment_seed` (channel subsets drawn)."""
    padded, valid = {}, {}  # data set -> (channel-tokens, sum of N^2)
    with torch.no_grad():
        for batch in data.batches(data.epoch_plan(0), augment_seed=augment_seed):
            rate = torch.tensor(batch.sampling_rate or float("nan"), dtype=torch.float64).expand(len(batch.lengths))
            _, n_tokens, _ = model.choose_strides(batch.lengths, rate, None)  # (B,) tokens of each segment
            batch_size, channels = batch.values.shape[:2]
            longest = int(n_tokens.max())
            padded_counts = batch_size * channels * np.array([longest, longest**2])
            padded[batch.dataset] = padded.get(batch.dataset, 0) + padded_counts
            valid_counts = channels * np.array([int(n_tokens.sum()), int((n_tokens**2).sum())])
            valid[batch.dataset] = valid.get(batch.dataset, 0) + valid_counts
    tokens, attention = sum(padded.values()) / sum(valid.values())
    return float(tokens), float(attention), {name: float(padded[name][0] / valid[name][0]) for name in padded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="12 steps per mode (under 2 minutes)")
    parser.add_argument("--epoch", action="store_true",
                        help="exactly the first epoch's batches (what every epoch of a full run holds, reshuffled), "
                        "instead of --steps: the ratio a whole distillation sees")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--max-channels", type=int, help="the new mode's distill.max_channels (default: params')")
    parser.add_argument("--padding", action="store_true",
                        help="print the first epoch's padding overhead under the distilled model's strides, and stop")
    args = parser.parse_args()
    steps = 12 if args.quick else args.steps

    params = load_params(args.params)
    if args.max_channels:
        params.distill.max_channels = args.max_channels
    data = distillation_data(params)
    if args.padding:
        model = STEPEncoder.from_pretrained(params.distill.output_dir).eval()
        first_epoch = epoch_augment_seed(params.distill.seed, 0)
        tokens, attention, by_dataset = padding_overhead(data, model, augment_seed=first_epoch)
        for name, ratio in sorted(by_dataset.items(), key=lambda item: -item[1]):
            print(f"{name}: {ratio:.3f}")
        print(f"distill_throughput: padding={tokens:.3f} (padded / valid channel-tokens of one epoch; "
              f"attention, sum of N^2: {attention:.3f})")
        return
    if args.epoch:
        steps = sum(1 for _ in data.batches(data.epoch_plan(0)))
    modes = ["today", "new"] + (["bf16"] if args.bf16 else [])
    trainers = {mode: Trainer(params, data.stores, mode) for mode in modes}

    def batches(augmented: bool):
        """The first `steps` batches: whole segments, or as training reads them (channel subsets drawn)."""
        return itertools.islice(itertools.chain.from_iterable(
            data.batches(data.epoch_plan(e), augment_seed=epoch_augment_seed(params.distill.seed, e) if augmented
                         else None)
            for e in itertools.count()), steps)

    for whole, augmented in zip(batches(False), batches(True)):  # batch i of both is the same segments
        for trainer in trainers.values():
            trainer.step(whole if trainer.max_channels is None else augmented)

    for mode, trainer in trainers.items():
        tail = trainer.losses[-max(1, steps // 4):]
        print(f"{mode}: {trainer.segments / trainer.seconds:.1f} segments/s, train loss over the last quarter "
              f"{sum(tail) / len(tail):.4f} ({steps} steps, max_channels {trainer.max_channels})")
    ratio = trainers["today"].seconds / trainers["new"].seconds
    print(f"distill_throughput: ratio={ratio:.2f} (new / today segments/s; goal >= 2)")


if __name__ == "__main__":
    main()
