"""The distillation objective: per-teacher projection heads, token alignment and the per-token loss.

Unknown in the paper, chosen from multi-teacher distillation practice (RADIO, Theia) and exposed in params:
targets are standardised per feature with the store's statistics; the loss per teacher is
cosine_weight * (1 - cos) + smooth_l1_weight * smooth-L1, averaged over valid tokens; teachers are summed with
per-teacher weights; the adaptive-patching penalties are added with `patching_weight`.
"""

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn


class TeacherHeads(nn.Module):
    """One projection head per teacher, from the student's token space (hidden) to that teacher's features.

    `linear` (default): LayerNorm + Linear, so whatever the teachers know must be linearly readable from the
    student's own tokens (and their mean, the pooled embedding); `mlp` adds a GELU hidden layer (RADIO-style),
    which lets the head, not the student, do part of the work.
    """

    def __init__(self, hidden_size: int, feature_dims: dict[str, int], kind: str = "linear"):
        super().__init__()

        def head(dim: int) -> nn.Module:
            if kind == "linear":
                return nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, dim))
            return nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                 nn.Linear(hidden_size, dim))

        self.heads = nn.ModuleDict({name: head(dim) for name, dim in feature_dims.items()})

    def forward(self, teacher: str, tokens: torch.Tensor) -> torch.Tensor:
        return self.heads[teacher](tokens)  # (batch, tokens, hidden) -> (batch, tokens, feature)


def token_mask(n_tokens: torch.Tensor, length: int) -> torch.Tensor:
    """(batch,) counts -> (batch, length) bool, True on valid tokens."""
    return torch.arange(length, device=n_tokens.device)[None, :] < n_tokens[:, None]


def resample_tokens(tokens: torch.Tensor, n_from: torch.Tensor, n_to: torch.Tensor) -> torch.Tensor:
    """Linearly resample each series' valid tokens onto another grid: (batch, N, H) -> (batch, max n_to, H)."""
    out = tokens.new_zeros(tokens.shape[0], int(n_to.max()), tokens.shape[2])
    for i in range(tokens.shape[0]):
        valid = tokens[i, : int(n_from[i])].T[None]  # (1, H, n_from)
        out[i, : int(n_to[i])] = F.interpolate(valid, size=int(n_to[i]), mode="linear", align_corners=False)[0].T
    return out


def token_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cosine_weight: float,
               smooth_l1_weight: float, beta: float) -> torch.Tensor:
    """Cosine + smooth-L1 between (batch, tokens, feature) tensors, averaged over the valid tokens."""
    prediction, target = prediction.float(), target.float()
    cosine = 1 - F.cosine_similarity(prediction, target, dim=-1)                       # (batch, tokens)
    smooth_l1 = F.smooth_l1_loss(prediction, target, beta=beta, reduction="none").mean(-1)  # (batch, tokens)
    per_token = cosine_weight * cosine + smooth_l1_weight * smooth_l1
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


class DistillationObjective(nn.Module):
    """Runs the student on a batch, aligns its tokens with each teacher's grid, and returns the losses."""

    def __init__(self, heads: TeacherHeads, weights: dict[str, float], alignment: str, cosine_weight: float,
                 smooth_l1_weight: float, smooth_l1_beta: float, patching_weight: float):
        super().__init__()
        self.heads, self.weights, self.alignment = heads, weights, alignment
        self.cosine_weight, self.smooth_l1_weight, self.beta = cosine_weight, smooth_l1_weight, smooth_l1_beta
        self.patching_weight = patching_weight

    def forward(self, student: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts: one per teacher (unweighted) and `patching`."""
        # Student tokens on each teacher's grid, pooled over channels: {teacher: (batch, N_k, hidden)}
        on_grid, patching = {}, []
        if self.alignment == "force_stride":
            grids = defaultdict(list)  # teachers sharing a token grid share one student forward
            for teacher, counts in batch.n_tokens.items():
                grids[tuple(counts.tolist())].append(teacher)
            for teachers in grids.values():
                out = student(batch.values, batch.lengths, sampling_rate=batch.sampling_rate,
                              num_tokens=batch.n_tokens[teachers[0]])
                tokens = out.last_hidden_state.mean(dim=1)  # (batch, channels, N_k, H) -> (batch, N_k, H)
                patching.append(out.patching_loss)
                on_grid.update({teacher: tokens for teacher in teachers})
        else:
            out = student(batch.values, batch.lengths, sampling_rate=batch.sampling_rate)
            tokens = out.last_hidden_state.mean(dim=1)  # (batch, N, H), N from adaptive patching
            patching.append(out.patching_loss)
            for teacher, counts in batch.n_tokens.items():
                on_grid[teacher] = resample_tokens(tokens, out.num_tokens, counts)

        parts = {}
        for teacher, tokens in on_grid.items():
            target = batch.targets[teacher]                       # (batch, N_k, F_k), standardised
            prediction = self.heads(teacher, tokens[:, : target.shape[1]])
            mask = token_mask(batch.n_tokens[teacher], target.shape[1])
            parts[teacher] = token_loss(prediction, target, mask, self.cosine_weight, self.smooth_l1_weight,
                                        self.beta)
        parts["patching"] = torch.stack(patching).mean()
        total = sum(self.weights[t] * parts[t] for t in on_grid) + self.patching_weight * parts["patching"]
        return total, parts
