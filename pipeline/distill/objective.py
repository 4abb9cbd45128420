"""The distillation objective: per-teacher projection heads, token alignment and the per-token loss.

Unknown in the paper, chosen from multi-teacher distillation practice (RADIO, Theia) and exposed in params:
targets are standardised per feature with the store's statistics; the loss per teacher is
cosine_weight * (1 - cos) + smooth_l1_weight * smooth-L1, averaged over valid tokens; teachers are summed with
per-teacher weights; the adaptive-patching penalties are added with `patching_weight`.

Summary loss (RADIO/UNIC-style, `summary_weight`): users read a pooled vector, so the student's pooled tokens
(mean and std over valid tokens, `pool_embedding`) are also mapped by a summary head per teacher to that teacher's
pooled standardised targets (mean and std over its valid tokens), with the same cosine + smooth-L1 form.

Relation loss (CompRess/SEED-style, `relation_weight`): a batch holds one data set, so within it each series'
summary prediction is compared with every series' pooled target: the softmax of those cosine similarities must
match the softmax of the teacher's own similarities among the targets. Regression spends its effort on the large
differences between data sets; this term asks for the neighbourhoods within one, which is what a probe reads.

Deviation targets (ours, `token_target: deviations`): the token losses compare each token minus its series' mean
over valid tokens, prediction and target alike, so what varies within a series is what they ask for; the series'
level is left to the summary loss.

Structure loss (ours, `structure_weight`): a head reads each final token back into that token's own fine-structure
inputs (lag increments and band powers), so the network keeps what its input said at every scale even where
no teacher asks for it (distillation alone dropped it: a random-weight student probed better on audio calls).
"""

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.student.pooling import pool_embedding


class TeacherHeads(nn.Module):
    """One projection head per teacher, from the student's token space (hidden) to that teacher's features.

    `linear` (default): LayerNorm + Linear, so whatever the teachers know must be linearly readable from the
    student's own tokens (and their mean, the pooled embedding); `mlp` adds a GELU hidden layer (RADIO-style),
    which lets the head, not the student, do part of the work.
    """

    def __init__(self, hidden_size: int, feature_dims: dict[str, int], kind: str = "linear", summary: bool = False,
                 structure_dim: int = 0, summary_moments: int = 2, summary_width: int | None = None):
        super().__init__()

        def head(width: int, dim: int) -> nn.Module:
            if kind == "linear":
                return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))
            return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, dim))

        self.heads = nn.ModuleDict({name: head(hidden_size, dim) for name, dim in feature_dims.items()})
        # summary heads: the student's pooled tokens (mean, std[, max]; of its embedding tokens, summary_width wide,
        # when the student has an embedding projection) -> the teacher's targets pooled the same way
        width = summary_width or hidden_size
        self.summary_heads = nn.ModuleDict(
            {name: head(summary_moments * width, summary_moments * dim) for name, dim in feature_dims.items()}
            if summary else {}
        )
        # structure head: each final token -> its own fine-structure inputs (lag increments, band powers)
        self.structure_head = head(hidden_size, structure_dim) if structure_dim else None

    def forward(self, teacher: str, tokens: torch.Tensor) -> torch.Tensor:
        return self.heads[teacher](tokens)  # (batch, tokens, hidden) -> (batch, tokens, feature)

    def summary(self, teacher: str, pooled: torch.Tensor) -> torch.Tensor:
        return self.summary_heads[teacher](pooled)  # (batch, moments hidden) -> (batch, moments feature)


def token_mask(n_tokens: torch.Tensor, length: int) -> torch.Tensor:
    """(batch,) counts -> (batch, length) bool, True on valid tokens."""
    return torch.arange(length, device=n_tokens.device)[None, :] < n_tokens[:, None]


def tokens_at(tokens: torch.Tensor, num_tokens: torch.Tensor, strides: torch.Tensor,
              centres: torch.Tensor) -> torch.Tensor:
    """The student's tokens linearly interpolated at other times: (batch, N, H) -> (batch, M, H).

    Student token n is centred at (n + 1/2) S samples (adaptive patching's window centres); `centres` (batch, M)
    are the target tokens' centres in samples. Aligning on time, not on token index, keeps a teacher grid that
    covers more or less than the series (a last partial token, a partial pooled group) from being stretched onto
    the student's. Times beyond the first or last student token take that token.
    """
    position = centres.double() / strides.double()[:, None] - 0.5  # (batch, M) fractional student index
    last = (num_tokens - 1).double()[:, None]
    position = torch.minimum(position.clamp(min=0.0), last)
    low = position.floor().long()  # (batch, M)
    high = torch.minimum(low + 1, last.long())
    weight = (position - low).to(tokens.dtype)[..., None]  # (batch, M, 1)
    gather = lambda index: tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[2]))  # noqa: E731
    return gather(low) * (1 - weight) + gather(high) * weight


def series_deviations(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each token minus its series' mean over the valid tokens: (batch, tokens, feature) -> same shape.

    Padding neither enters the mean nor matters afterwards (the losses mask it)."""
    weight = mask[..., None].to(tokens.dtype)  # (batch, tokens, 1)
    mean = (tokens * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1)  # (batch, 1, feature)
    return tokens - mean


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
                 smooth_l1_weight: float, smooth_l1_beta: float, patching_weight: float, summary_weight: float = 0.0,
                 structure_weight: float = 0.0, summary_pooling: str = "mean+std",
                 token_target: str = "tokens", relation_weight: float = 0.0, relation_temperature: float = 0.1):
        super().__init__()
        self.heads, self.weights, self.alignment = heads, weights, alignment
        self.cosine_weight, self.smooth_l1_weight, self.beta = cosine_weight, smooth_l1_weight, smooth_l1_beta
        self.patching_weight, self.summary_weight = patching_weight, summary_weight
        self.structure_weight, self.summary_pooling = structure_weight, summary_pooling
        self.token_target = token_target
        self.relation_weight, self.relation_temperature = relation_weight, relation_temperature

    def forward(self, student: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts: one per teacher (unweighted), `patching`, and `summary`, `relation` and
        `structure` when they are on."""
        # Student tokens on each teacher's grid, pooled over channels: {teacher: (batch, N_k, hidden)}
        on_grid, patching, outputs = {}, [], []
        if self.alignment == "force_stride":
            grids = defaultdict(list)  # teachers sharing a token grid share one student forward
            for teacher, counts in batch.n_tokens.items():
                grids[tuple(counts.tolist())].append(teacher)
            for teachers in grids.values():
                out = student(batch.values, batch.lengths, sampling_rate=batch.sampling_rate,
                              num_tokens=batch.n_tokens[teachers[0]], fixed_montage=batch.fixed_montage)
                tokens = out.last_hidden_state.mean(dim=1)  # (batch, channels, N_k, H) -> (batch, N_k, H)
                patching.append(out.patching_loss)
                outputs.append(out)
                on_grid.update({teacher: tokens for teacher in teachers})
        else:
            out = student(batch.values, batch.lengths, sampling_rate=batch.sampling_rate,
                          fixed_montage=batch.fixed_montage)
            tokens = out.last_hidden_state.mean(dim=1)  # (batch, N, H), N from adaptive patching
            patching.append(out.patching_loss)
            outputs.append(out)
            for teacher, centres in batch.token_centres.items():
                on_grid[teacher] = tokens_at(tokens, out.num_tokens, out.strides, centres)

        parts = {}
        for teacher, tokens in on_grid.items():
            target = batch.targets[teacher]                       # (batch, N_k, F_k), standardised
            prediction = self.heads(teacher, tokens[:, : target.shape[1]])
            if batch.target_scale is not None:  # errors in units of this data set's own spread (same frame)
                loc, scale = batch.target_loc[teacher], batch.target_scale[teacher]  # (F_k,) each
                prediction, target = (prediction - loc) / scale, (target - loc) / scale
            mask = token_mask(batch.n_tokens[teacher], target.shape[1])
            if self.token_target == "deviations":  # what changes within each series; its level is the summary's
                prediction, target = series_deviations(prediction, mask), series_deviations(target.float(), mask)
            parts[teacher] = token_loss(prediction, target, mask, self.cosine_weight, self.smooth_l1_weight,
                                        self.beta)
        parts["patching"] = torch.stack(patching).mean()
        total = sum(self.weights[t] * parts[t] for t in on_grid) + self.patching_weight * parts["patching"]
        summary_level = self.summary_level_weights()
        if summary_level:
            for name, loss in self.summary_loss(outputs[0], batch, getattr(student, "embedding_tokens", None)).items():
                parts[name] = loss
                total = total + summary_level[name] * loss
        if self.structure_weight > 0:
            parts["structure"] = self.structure_loss(outputs[0])
            total = total + self.structure_weight * parts["structure"]
        return total, parts

    def structure_loss(self, out) -> torch.Tensor:
        """Smooth-L1 between the structure head's reading of each final token and that token's own fine-structure
        inputs (in natural-log units), averaged over valid tokens and channels: the student must keep what its
        input said about each scale, including what no teacher asks for."""
        prediction = self.heads.structure_head(out.last_hidden_state)  # (B, C, N, J + K)
        # the lag and band log powers (undoing the input's 1/8); the fixed-kernel activities are not asked back:
        # 84 D proportions would outweigh the J + K powers the loss is for
        target = out.fine_structure.detach() * 8  # (B, C, N, J + K)
        mask = out.token_mask[:, None, :].expand(-1, target.shape[1], -1).flatten(0, 1)  # (B C, N)
        return token_loss(prediction.flatten(0, 1), target.flatten(0, 1), mask, 0.0, 1.0, self.beta)

    def summary_level_weights(self) -> dict[str, float]:
        """The summary-level losses that are on ({'summary': weight, 'relation': weight}, each only when > 0)."""
        return {name: weight for name, weight in (("summary", self.summary_weight), ("relation", self.relation_weight))
                if weight > 0}

    def summary_loss(self, out, batch, embedding_tokens=None) -> dict[str, torch.Tensor]:
        """The summary-level losses that are on, each a teacher-weighted mean over teachers: `summary` (summary-head
        outputs against pooled targets) and `relation` (their similarities within the batch against the targets').

        embedding_tokens: the student's map from final tokens to what its embedding pools (its embedding
        projection), so that the summary loss trains the very vector users read; None = the tokens themselves."""
        tokens = out.last_hidden_state if embedding_tokens is None else embedding_tokens(out.last_hidden_state)
        pooled = pool_embedding(tokens, out.token_mask, self.summary_pooling)  # (batch, moments E)
        losses: dict[str, list[torch.Tensor]] = {name: [] for name in self.summary_level_weights()}
        weights = []
        for teacher, target in batch.targets.items():
            mask = token_mask(batch.n_tokens[teacher], target.shape[1])  # (batch, N_k)
            pooled_target = pool_embedding(target[:, None].float(), mask, self.summary_pooling)  # (batch, moments F)
            prediction = self.heads.summary(teacher, pooled)
            if "summary" in losses:
                ones = torch.ones(prediction.shape[0], 1, dtype=torch.bool, device=prediction.device)
                losses["summary"].append(token_loss(prediction[:, None], pooled_target[:, None], ones,
                                                    self.cosine_weight, self.smooth_l1_weight, self.beta))
            if "relation" in losses:
                losses["relation"].append(relation_loss(prediction, pooled_target, self.relation_temperature))
            weights.append(self.weights[teacher])
        return {name: sum(w * loss for w, loss in zip(weights, per_teacher)) / max(sum(weights), 1e-12)
                for name, per_teacher in losses.items()}


def relation_loss(prediction: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy between the teacher's and the student's similarity distributions within a batch.

    prediction, target (batch, F). Row i of the target distribution is softmax_j(cos(t_i, t_j) / T), of the
    student's softmax_j(cos(p_i, t_j) / T): the prediction must sit among the batch's targets where its own target
    sits (near-identical targets share the mass, so no series is pushed away from its twin). 0 for a batch of one.
    """
    if prediction.shape[0] < 2:
        return prediction.sum() * 0.0
    p, t = F.normalize(prediction.float(), dim=-1), F.normalize(target.float(), dim=-1)
    student_logits = p @ t.T / temperature   # (batch, batch)
    teacher_logits = t @ t.T / temperature   # (batch, batch)
    teacher_probs = teacher_logits.softmax(dim=-1)
    return -(teacher_probs * student_logits.log_softmax(dim=-1)).sum(-1).mean()
