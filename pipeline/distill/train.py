"""The distillation training loop, kept as plain as nanoGPT's train.py: set-up, a loop, checkpoints, reports.

Only feature stores and raw series are read; no teacher adapter is imported or built here.
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
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from data_catalog.catalog import load_catalog
from pipeline.distill.loader import DistillationData, check_stores, open_training_data
from pipeline.distill.objective import DistillationObjective, TeacherHeads
from pipeline.distill.reports import write_model_card, write_reports
from pipeline.feature_store import FeatureStore
from pipeline.student import STEPConfig, STEPEncoder
from schemas.params import Params

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("distill.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


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
    model.eval()
    sums, count = {}, 0
    for batch in data.batches(data.validation_plan()):
        with autocast:
            total, parts = objective(model, batch.to(device))
        for name, value in {"total": total, **parts}.items():
            sums[name] = sums.get(name, 0.0) + float(value) * len(batch.segment_ids)
        count += len(batch.segment_ids)
    model.train()
    return {name: value / max(count, 1) for name, value in sums.items()}


def distill(params: Params, resume: bool = False, device: str | None = None, max_steps: int | None = None) -> dict:
    """Train the student on every teacher's store; returns the final metrics."""
    config = params.distill
    if max_steps is not None:
        config = config.model_copy(update={"max_steps": max_steps})
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = pick_device(device or config.device)

    # ---- data: feature stores (checked against params) + the raw series they were made from
    catalog = load_catalog(params.prepare.catalog)
    names = config.datasets or [e.name for e in catalog.datasets if e.role == "pretrain"]
    entries = [catalog.get(name) for name in names]
    teachers = list(params.extract.teachers)
    stores = {t: FeatureStore.open(Path(params.extract.store_dir) / f"{t}.zarr") for t in teachers}
    datasets = open_training_data(entries, catalog, params.prepare.series_store, stores, params.segments.max_samples)
    check_stores(stores, {t: params.extract.teachers[t].feature_config() for t in teachers},
                 params.segments.model_dump(), datasets)
    data = DistillationData(datasets, stores, config.batch_size, config.shuffle_blocks, config.prefetch_blocks,
                            config.val_fraction, config.seed,
                            crop_min_fraction=config.crop.min_fraction if config.crop.enabled else None,
                            max_target_tokens=config.max_target_tokens)
    log.info("distilling from %s on %d training segments of %s", teachers, data.n_train, names)

    # ---- model, heads, objective, optimiser
    student_config = STEPConfig.from_preset(params.student.preset, **params.student.overrides)
    model = STEPEncoder(student_config).to(device)
    dims = {t: s.manifest.feature_dim for t, s in stores.items()}
    heads = TeacherHeads(student_config.hidden_size, dims, config.head).to(device)
    weights = {t: config.teacher_weights.get(t, 1.0) for t in teachers}
    objective = DistillationObjective(heads, weights, config.alignment, config.cosine_weight,
                                      config.smooth_l1_weight, config.smooth_l1_beta, config.patching_weight)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=config.lr,
                                  betas=(0.9, 0.95), weight_decay=config.weight_decay)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)

    checkpoint = Path(config.checkpoint_dir) / "latest"
    step, history = 0, {"train": [], "val": []}
    if resume and checkpoint.exists():
        step, history = load_checkpoint(checkpoint, model, heads, optimizer)
        log.info("resumed from %s at step %d", checkpoint, step)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting from scratch", checkpoint)

    # ---- the loop: epochs of a deterministic plan; resuming skips the batches already trained on
    started, seen = time.perf_counter(), 0
    progress = tqdm(total=config.max_steps, initial=step, desc="distill", unit="step", dynamic_ncols=True)
    model.train()
    while step < config.max_steps:
        epoch, skip = data.locate(step)
        plan = data.epoch_plan(epoch)
        for batch in data.batches(plan, skip=skip, crop_seed=config.seed * 1_000_003 + epoch):
            lr = learning_rate(step, config.lr, config.warmup_steps, config.max_steps, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                loss, parts = objective(model, batch.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(heads.parameters()),
                                                       config.grad_clip)
            optimizer.step()
            step += 1
            seen += len(batch.segment_ids)

            row = {"step": step, "lr": lr, "grad_norm": grad_norm.item(), "total": loss.item()}
            history["train"].append(row | {name: value.item() for name, value in parts.items()})
            progress.update(1)
            progress.set_postfix(loss=f"{row['total']:.3f}", seg_per_s=f"{seen / (time.perf_counter() - started):.1f}")
            if step % config.val_every == 0 or step == config.max_steps:
                history["val"].append({"step": step} | validation_loss(objective, model, data, device, autocast))
                log.info("step %d: train %.4f, val %.4f", step, row["total"], history["val"][-1]["total"])
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                save_checkpoint(checkpoint, model, heads, optimizer, step, history)
            if step >= config.max_steps:
                break
    progress.close()
    wall = time.perf_counter() - started

    # ---- outputs: the encoder in Hugging Face format, a model card, metrics and plots
    output = Path(config.output_dir)
    model.save_pretrained(output)
    metrics = write_reports(Path(config.reports_dir) / "distill", history, teachers, wall, seen)
    write_model_card(output, params, stores, names, metrics)
    log.info("saved %s after %d steps (%.0f s)", output, step, wall)
    return metrics
