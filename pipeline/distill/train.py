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

from pipeline.distill.loader import DistillationData, distillation_data, epoch_augment_seed
from pipeline.distill.memory import bound_allocator_arenas, peak_resident_gb, resident_gb
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


class NonFiniteLossError(FloatingPointError):
    """A step gave a NaN or infinite loss or gradient: stopped before it reaches the weights, naming the batch."""

    def __init__(self, step: int, batch, loss: torch.Tensor, grad_norm: torch.Tensor, parts: dict, checkpoint: Path):
        values = {name: round(value.item(), 4) for name, value in parts.items()}
        super().__init__(
            f"step {step + 1}: loss {loss.item()}, gradient norm {grad_norm.item()} (parts {values}) on data set "
            f"{batch.dataset!r}, segments {batch.segment_ids[:3]}{' ...' if len(batch.segment_ids) > 3 else ''} "
            f"(values {tuple(batch.values.shape)}, lengths {int(batch.lengths.min())}..{int(batch.lengths.max())}); "
            f"no update was applied, and {checkpoint} (if any) holds the last good weights for --resume")


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
def validation_loss(objective, model, data: DistillationData, device, autocast) -> tuple[dict, dict]:
    """Mean losses over the held-out segments, overall and per data set (so a source the student fails to fit
    stands out); each rank evaluates its share, the sums are combined."""
    model.eval()
    names = ["total", *data.teachers, "patching", *objective.summary_level_weights()] + (
        ["structure"] if objective.structure_weight > 0 else [])
    sources = list(data.datasets)
    sums = {source: dict.fromkeys(names, 0.0) for source in sources}
    counts = dict.fromkeys(sources, 0)
    for batch in data.batches(data.validation_plan()):
        with autocast:
            total, parts = objective(model, batch.to(device))
        for name, value in {"total": total, **parts}.items():
            sums[batch.dataset][name] += float(value) * len(batch.segment_ids)
        counts[batch.dataset] += len(batch.segment_ids)
    model.train()
    flat = [sums[source][name] for source in sources for name in names] + [counts[source] for source in sources]
    flat = sum_over_ranks(flat, device)
    sums_all = {source: dict(zip(names, flat[i * len(names):(i + 1) * len(names)]))
                for i, source in enumerate(sources)}
    counts_all = dict(zip(sources, flat[len(sources) * len(names):]))
    total_count = max(sum(counts_all.values()), 1)
    overall = {name: sum(sums_all[source][name] for source in sources) / total_count for name in names}
    by_source = {source: {name: sums_all[source][name] / counts_all[source] for name in names}
                 for source in sources if counts_all[source] > 0}
    return overall, by_source


def record_validation(history: dict, step: int, objective, model, data, device, autocast) -> dict:
    """Validation losses (overall and per source) and resident memory at `step`, appended to the history."""
    overall, by_source = validation_loss(objective, model, data, device, autocast)
    history["val"].append({"step": step} | overall)
    # setdefault: a checkpoint from before these records resumes too
    history.setdefault("val_by_source", []).extend({"step": step, "dataset": source} | losses
                                                   for source, losses in by_source.items())
    history.setdefault("memory", []).append({"step": step, "rss_gb": round(resident_gb(), 3),
                                             "peak_rss_gb": round(peak_resident_gb(), 3)})
    return overall


def kernel_biases_from_corpus(params: Params, student_config: STEPConfig) -> list[float]:
    """The student's fixed-kernel biases: each kernel's median output over a fixed sample of 256 pretraining
    segments, as the minirocket teacher fits its own (the same sample and code), so the saved model carries them."""
    from data_catalog.catalog import load_catalog
    from pipeline.minirocket import corpus_sample, fit_corpus_biases
    from schemas.teachers import MiniRocketTeacher

    spec = MiniRocketTeacher(dilations=tuple(student_config.structure_kernel_dilations), biases_per_kernel=1)
    sample = corpus_sample(load_catalog(params.prepare.catalog), params.prepare.series_store,
                           params.segments.max_samples, spec.fit_series, "the student's kernel biases")
    log.info("student: fitting %d fixed-kernel biases on %d corpus segments", 84 * len(spec.dilations), len(sample))
    return fit_corpus_biases(spec, sample)


KERNEL_COMPONENT_SERIES = 512  # corpus segments the `kernels` part's principal components are fitted on


def kernel_component_sample(params: Params) -> list[np.ndarray]:
    """The fixed sample of pretraining segments that every student's kernel components are fitted on (the distilled
    student at the end of distillation, its random-weight twins in evaluation and fine-tuning)."""
    from data_catalog.catalog import load_catalog
    from pipeline.minirocket import corpus_sample

    return corpus_sample(load_catalog(params.prepare.catalog), params.prepare.series_store,
                         params.segments.max_samples, KERNEL_COMPONENT_SERIES, "the student's kernel components")


def student_and_objective(params: Params, config, stores: dict[str, FeatureStore], device: torch.device):
    """A fresh student (params.student) with one head per teacher store, the objective and AdamW over both:
    (model, heads, objective, optimizer). `config` is params.distill, possibly with max_steps overridden."""
    student_config = STEPConfig.from_preset(params.student.preset, **params.student.overrides)
    if student_config.structure_kernel_dilations and student_config.structure_kernel_biases is None:
        student_config.structure_kernel_biases = kernel_biases_from_corpus(params, student_config)
    model = STEPEncoder(student_config).to(device)
    dims = {t: s.manifest.feature_dim for t, s in stores.items()}
    structure_dim = student_config.structure_lags + student_config.structure_bands if config.structure_weight else 0
    if config.structure_weight and not structure_dim:
        raise ValueError("distill.structure_weight > 0 needs fine-structure inputs to predict: set the student's "
                         "structure_lags or structure_bands (student.overrides), or distill.structure_weight: 0")
    if config.max_channels is not None and student_config.montage_channels:
        raise ValueError("distill.max_channels shows the student channel subsets, which break the channel identities "
                         "of student.overrides.montage_channels: set one of them, not both")
    summary = config.summary_weight > 0 or config.relation_weight > 0
    if student_config.embedding_size and not summary:
        raise ValueError("student.overrides.embedding_size > 0 needs the summary loss to train the embedding "
                         "projection: set distill.summary_weight (or relation_weight) > 0, or embedding_size: 0")
    heads = TeacherHeads(student_config.hidden_size, dims, config.head, summary=summary,
                         structure_dim=structure_dim,
                         summary_moments=len(config.summary_pooling.split("+")),
                         summary_width=student_config.embedding_size or None).to(device)
    weights = {t: config.teacher_weights.get(t, 1.0) for t in stores}
    objective = DistillationObjective(heads, weights, config.alignment, config.cosine_weight,
                                      config.smooth_l1_weight, config.smooth_l1_beta, config.patching_weight,
                                      config.summary_weight, config.structure_weight, config.summary_pooling,
                                      config.token_target, config.relation_weight, config.relation_temperature)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=config.lr,
                                  betas=(0.9, 0.95), weight_decay=config.weight_decay)
    return model, heads, objective, optimizer


def distill(params: Params, resume: bool = False, device: str | None = None, max_steps: int | None = None) -> dict:
    """Train the student on every teacher's store; returns the final metrics."""
    config = params.distill
    if max_steps is not None:
        config = config.model_copy(update={"max_steps": max_steps})
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)  # every rank: the same initial weights
    bound_allocator_arenas()
    rank, world_size, device = init_distributed(device or config.device)
    try:
        return _train(params, config, resume, rank, world_size, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(params: Params, config, resume: bool, rank: int, world_size: int, device: torch.device) -> dict:
    main_process = rank == 0

    # ---- data: feature stores (checked against params) + the raw series they were made from
    data = distillation_data(params, rank, world_size)
    stores, teachers, names = data.stores, data.teachers, list(data.datasets)
    log.info("distilling from %s on %d training segments of %s (rank %d of %d)", teachers, data.n_train, names,
             rank, world_size)

    # ---- model, heads, objective, optimiser
    model, heads, objective, optimizer = student_and_objective(params, config, stores, device)
    loss_of_batch = StudentWithObjective(model, objective)  # (batch) -> (loss, parts)
    if world_size > 1:  # averages gradients over ranks in backward(); unused: the stride MLP under force_stride
        loss_of_batch = torch.nn.parallel.DistributedDataParallel(loss_of_batch, find_unused_parameters=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)

    checkpoint = Path(config.checkpoint_dir) / "latest"
    step, history = 0, {"train": [], "val": [], "val_by_source": [], "memory": []}
    if resume and checkpoint.exists():
        step, history = load_checkpoint(checkpoint, model, heads, optimizer)
        log.info("resumed from %s at step %d", checkpoint, step)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting from scratch", checkpoint)

    # ---- the loop: epochs of a deterministic plan; resuming skips the batches already trained on
    if step == 0:  # the validation loss before any training: what distillation starts from
        record_validation(history, 0, objective, model, data, device, autocast)
        log.info("step 0: val %.4f", history["val"][-1]["total"])
    started, seen = time.perf_counter(), 0
    progress = tqdm(total=config.max_steps, initial=step, desc="distill", unit="step", dynamic_ncols=True,
                    disable=not main_process)
    model.train()
    while step < config.max_steps:
        epoch, skip = data.locate(step)
        plan = data.epoch_plan(epoch)
        for batch in data.batches(plan, skip=skip, augment_seed=epoch_augment_seed(config.seed, epoch)):
            lr = learning_rate(step, config.lr, config.warmup_steps, config.max_steps, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                loss, parts = loss_of_batch(batch.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(heads.parameters()),
                                                       config.grad_clip)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):  # before the step: weights stay finite
                raise NonFiniteLossError(step, batch, loss, grad_norm, parts, checkpoint)
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
                record_validation(history, step, objective, model, data, device, autocast)
                log.info("step %d: train %.4f, val %.4f, resident %.2f GB", step, row["total"],
                         history["val"][-1]["total"], history["memory"][-1]["rss_gb"])
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
    if model.config.kernel_components:  # fixed, fitted on the trained model's own tokens (its learned strides)
        sample = kernel_component_sample(params)
        log.info("student: fitting %d kernel components on %d corpus segments", model.config.kernel_components,
                 len(sample))
        model.fit_kernel_components(sample)
    model.save_pretrained(output)
    metrics = write_reports(Path(config.reports_dir) / "distill", history, teachers, wall, seen)
    write_model_card(output, params, stores, names, metrics)
    log.info("saved %s after %d steps (%.0f s)", output, step, wall)
    return metrics
