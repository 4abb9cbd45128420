"""The distillation training loop, kept as plain as nanoGPT's train.py: set-up, a loop, checkpoints, reports.

Only feature stores and raw series are read; no teacher adapter is imported or built here.

Data-parallel training: run under torchrun (`step-pipeline distill --nproc N` starts it). Every rank builds the
same model from the same seed, reads its own blocks of the stores (DistillationData shards them), and DDP
averages the gradients (gloo on CPU, nccl on GPU), so the ranks stay identical; rank 0 alone writes
checkpoints, reports and the model, which load in a single process as usual.
"""

import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from data_catalog.catalog import load_catalog
from pipeline.distill.loader import DistillationData, check_stores, open_training_data
from pipeline.distill.objective import DistillationObjective, TeacherHeads
from pipeline.distill.reports import write_model_card, write_reports
from pipeline.feature_store import FeatureStore, store_location
from pipeline.student import STEPConfig, STEPEncoder
from schemas.params import Params

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("distill.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): from torchrun's environment when it launched us, else (0, 1, device)."""
    device = pick_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size, device


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (themselves when not distributed)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


class StudentWithObjective(torch.nn.Module):
    """The student and its heads as one module whose forward is the loss: what DDP wraps (one forward per
    step even when force_stride runs the student once per token grid)."""

    def __init__(self, student: STEPEncoder, objective: DistillationObjective):
        super().__init__()
        self.student, self.objective = student, objective

    def forward(self, batch):
        return self.objective(self.student, batch)


def check_ranks_in_sync(model, heads, device) -> None:
    """Raise unless every rank holds the same weights (DDP's promise; a broken set-up breaks it silently)."""
    checksum = sum(p.detach().double().sum().item() for p in list(model.parameters()) + list(heads.parameters()))
    sums = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, torch.tensor([checksum], dtype=torch.float64, device=device))
    sums = [s.item() for s in sums]
    if max(sums) != min(sums):
        raise RuntimeError(f"ranks diverged: parameter checksums {sums}")
    log.info("all %d ranks hold identical weights (checksum %.6f)", len(sums), sums[0])


def learning_rate(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to `min_ratio * peak` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(directory: Path, model, heads, optimizer, step: int, history: dict) -> None:
    """Weights as safetensors, the rest (optimizer, step, history, RNG) as tensors/plain data; written atomically."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {f"student.{k}": v.contiguous() for k, v in model.state_dict().items()}
    weights |= {f"heads.{k}": v.contiguous() for k, v in heads.state_dict().items()}
    save_file(weights, tmp / "weights.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "history": history,
                "torch_rng": torch.get_rng_state()}, tmp / "training_state.pt")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def load_checkpoint(directory: Path, model, heads, optimizer) -> tuple[int, dict]:
    weights = load_file(directory / "weights.safetensors")
    model.load_state_dict({k[len("student."):]: v for k, v in weights.items() if k.startswith("student.")})
    heads.load_state_dict({k[len("heads."):]: v for k, v in weights.items() if k.startswith("heads.")})
    state = torch.load(directory / "training_state.pt", weights_only=True)  # never unpickle arbitrary objects
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["history"]


@torch.no_grad()
def validation_loss(objective, model, data: DistillationData, device, autocast) -> dict[str, float]:
    """Mean losses over the held-out segments (each rank evaluates its share, the sums are combined)."""
    model.eval()
    names = ["total", *data.teachers, "patching"] + (["summary"] if objective.summary_weight > 0 else [])
    sums, count = dict.fromkeys(names, 0.0), 0
    for batch in data.batches(data.validation_plan()):
        with autocast:
            total, parts = objective(model, batch.to(device))
        for name, value in {"total": total, **parts}.items():
            sums[name] += float(value) * len(batch.segment_ids)
        count += len(batch.segment_ids)
    model.train()
    *sums_all, count_all = sum_over_ranks([sums[name] for name in names] + [count], device)
    return {name: value / max(count_all, 1) for name, value in zip(names, sums_all)}


def distill(params: Params, resume: bool = False, device: str | None = None, max_steps: int | None = None) -> dict:
    """Train the student on every teacher's store; returns the final metrics."""
    config = params.distill
    if max_steps is not None:
        config = config.model_copy(update={"max_steps": max_steps})
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)  # every rank: the same initial weights
    rank, world_size, device = init_distributed(device or config.device)
    try:
        return _train(params, config, resume, rank, world_size, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(params: Params, config, resume: bool, rank: int, world_size: int, device: torch.device) -> dict:
    main_process = rank == 0

    # ---- data: feature stores (checked against params) + the raw series they were made from
    catalog = load_catalog(params.prepare.catalog)
    names = config.datasets or [e.name for e in catalog.datasets if e.role == "pretrain"]
    entries = [catalog.get(name) for name in names]
    teachers = list(params.extract.teachers)
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in teachers}
    datasets = open_training_data(entries, catalog, params.prepare.series_store, stores, params.segments.max_samples)
    check_stores(stores, {t: params.extract.teachers[t].feature_config() for t in teachers},
                 params.segments.model_dump(), datasets)
    data = DistillationData(datasets, stores, config.batch_size, config.shuffle_blocks, config.prefetch_blocks,
                            config.val_fraction, config.seed,
                            crop_min_fraction=config.crop.min_fraction if config.crop.enabled else None,
                            max_target_tokens=config.max_target_tokens, rank=rank, world_size=world_size)
    log.info("distilling from %s on %d training segments of %s (rank %d of %d)", teachers, data.n_train, names,
             rank, world_size)

    # ---- model, heads, objective, optimiser
    student_config = STEPConfig.from_preset(params.student.preset, **params.student.overrides)
    model = STEPEncoder(student_config).to(device)
    dims = {t: s.manifest.feature_dim for t, s in stores.items()}
    heads = TeacherHeads(student_config.hidden_size, dims, config.head, summary=config.summary_weight > 0).to(device)
    weights = {t: config.teacher_weights.get(t, 1.0) for t in teachers}
    objective = DistillationObjective(heads, weights, config.alignment, config.cosine_weight,
                                      config.smooth_l1_weight, config.smooth_l1_beta, config.patching_weight,
                                      config.summary_weight)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=config.lr,
                                  betas=(0.9, 0.95), weight_decay=config.weight_decay)
    loss_of_batch = StudentWithObjective(model, objective)  # (batch) -> (loss, parts)
    if world_size > 1:  # averages gradients over ranks in backward(); unused: the stride MLP under force_stride
        loss_of_batch = torch.nn.parallel.DistributedDataParallel(loss_of_batch, find_unused_parameters=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)

    checkpoint = Path(config.checkpoint_dir) / "latest"
    step, history = 0, {"train": [], "val": []}
    if resume and checkpoint.exists():
        step, history = load_checkpoint(checkpoint, model, heads, optimizer)
        log.info("resumed from %s at step %d", checkpoint, step)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting from scratch", checkpoint)

    # ---- the loop: epochs of a deterministic plan; resuming skips the batches already trained on
    if step == 0:  # the validation loss before any training: what distillation starts from
        history["val"].append({"step": 0} | validation_loss(objective, model, data, device, autocast))
        log.info("step 0: val %.4f", history["val"][-1]["total"])
    started, seen = time.perf_counter(), 0
    progress = tqdm(total=config.max_steps, initial=step, desc="distill", unit="step", dynamic_ncols=True,
                    disable=not main_process)
    model.train()
    while step < config.max_steps:
        epoch, skip = data.locate(step)
        plan = data.epoch_plan(epoch)
        for batch in data.batches(plan, skip=skip, crop_seed=config.seed * 1_000_003 + epoch):
            lr = learning_rate(step, config.lr, config.warmup_steps, config.max_steps, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                loss, parts = loss_of_batch(batch.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(heads.parameters()),
                                                       config.grad_clip)
            optimizer.step()
            step += 1
            seen += len(batch.segment_ids) * world_size

            losses = {"total": loss.item()} | {name: value.item() for name, value in parts.items()}
            if world_size > 1:  # the mean over ranks' batches, like the gradient
                losses = dict(zip(losses, (v / world_size for v in sum_over_ranks(list(losses.values()), device))))
            row = {"step": step, "lr": lr, "grad_norm": grad_norm.item(), "total": losses["total"]}
            history["train"].append(row | losses)
            progress.update(1)
            progress.set_postfix(loss=f"{row['total']:.3f}", seg_per_s=f"{seen / (time.perf_counter() - started):.1f}")
            if step % config.val_every == 0 or step == config.max_steps:
                history["val"].append({"step": step} | validation_loss(objective, model, data, device, autocast))
                log.info("step %d: train %.4f, val %.4f", step, row["total"], history["val"][-1]["total"])
            if (step % config.checkpoint_every == 0 or step == config.max_steps) and main_process:
                save_checkpoint(checkpoint, model, heads, optimizer, step, history)
            if step >= config.max_steps:
                break
    progress.close()
    wall = time.perf_counter() - started
    if world_size > 1:
        check_ranks_in_sync(model, heads, device)
        if not main_process:
            return {}

    # ---- outputs: the encoder in Hugging Face format, a model card, metrics and plots
    output = Path(config.output_dir)
    model.save_pretrained(output)
    metrics = write_reports(Path(config.reports_dir) / "distill", history, teachers, wall, seen)
    write_model_card(output, params, stores, names, metrics)
    log.info("saved %s after %d steps (%.0f s)", output, step, wall)
    return metrics
