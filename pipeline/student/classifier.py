"""Classification: the STEP encoder with a linear head on its embedding (what pipeline/finetune.py trains and saves).

Kept beside modeling_step.py rather than in it so that each file stays readable top to bottom; registered with
AutoModelForSequenceClassification in pipeline/student/__init__.py.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from pipeline.student.configuration_step import STEPConfig
from pipeline.student.modeling_step import STEPEncoder
from pipeline.student.pooling import check_pooling, pool_embedding

def embedding_width(config: STEPConfig, pooling: str) -> int:
    """Width of one channel's embedding under `pooling` (what embed() returns per channel)."""
    if pooling == "pooled":
        return config.hidden_size
    token_width = config.embedding_size or config.hidden_size
    widths = {"mean": token_width, "std": token_width, "max": token_width, "stats": 2,
              "structure": 3 * config.fine_structure_width,
              "kernels": config.kernel_components or 3 * config.kernel_activity_width}
    return sum(widths[part] for part in check_pooling(pooling))


@dataclass
class STEPClassifierOutput(ModelOutput):
    """What STEPForClassification returns.

    loss: () cross-entropy of the logits against `labels` (None without labels).
    logits: (batch, num_labels).
    embedding: (batch, width) the vector the head read (embed()'s, differentiable).
    patching_loss: () the encoder's adaptive-patching penalty (add it to the loss when training).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    patching_loss: torch.Tensor | None = None


class STEPForClassification(PreTrainedModel):
    """The STEP encoder with a linear head on the very embedding `STEPEncoder.embed()` returns.

    The head reads the vector a linear probe reads (pooled token projections, series statistics, fine-structure
    vectors, per `config.classifier_pooling`, default `config.embedding_pooling`), standardised by two fixed
    buffers (a probe's scaler: `embedding_mean`, `embedding_scale`), then Linear(width, num_labels). Fine-tuning
    (pipeline/finetune.py) starts it from a probe's solution, so its first predictions are the probe's.
    `config.classifier_channels` > 0: series of a fixed montage of that many channels, whose per-channel vectors
    are concatenated in channel order (as evaluation does for such a task); 0: channels are averaged.

    Saved like the encoder (config.json + model.safetensors); the encoder's weights sit under `step.`, so
    `STEPEncoder.from_pretrained` (or AutoModel) on a saved classifier gives its fine-tuned encoder, and
    AutoModelForSequenceClassification gives the whole classifier.
    """

    config_class = STEPConfig
    base_model_prefix = "step"
    main_input_name = "values"

    def __init__(self, config: STEPConfig):
        super().__init__(config)
        self.pooling = getattr(config, "classifier_pooling", None) or config.embedding_pooling
        self.montage_channels = int(getattr(config, "classifier_channels", 0) or 0)
        width = embedding_width(config, self.pooling) * max(1, self.montage_channels)
        self.step = STEPEncoder(config)
        self.register_buffer("embedding_mean", torch.zeros(width))
        self.register_buffer("embedding_scale", torch.ones(width))
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module):
        """The encoder's initialisation for its modules; normal(initializer_range) for the head."""
        self.step._init_weights(module)

    def embedding(self, values: torch.Tensor, lengths: torch.Tensor | None = None,
                  sampling_rate: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, width) embeddings of a padded batch, differentiable, and the patching penalty; in eval mode the
        numbers `self.step.embed()` gives for the same series (tested)."""
        keep_channels = self.montage_channels > 0
        if keep_channels and values.shape[1] != self.montage_channels:
            raise ValueError(f"this classifier reads a fixed montage of {self.montage_channels} channels, got "
                             f"{values.shape[1]}")
        out = self.step(values, lengths, sampling_rate=sampling_rate, fixed_montage=keep_channels)
        if self.pooling == "pooled":
            return out.pooled, out.patching_loss
        vectors = pool_embedding(self.step.embedding_tokens(out.last_hidden_state), out.token_mask, self.pooling,
                                 keep_channels, out.statistics, out.fine_structure, out.kernel_activity,
                                 self.step.kernel_projection(self.pooling))
        return vectors, out.patching_loss

    @torch.no_grad()
    def block_inputs(self, values: torch.Tensor, lengths: torch.Tensor | None = None,
                     sampling_rate: float | torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        """Per series, what the Transformer blocks and the pooling read: `tokens` (C, N, D) the input of the first
        block, `statistics` (C, 2), `fine_structure` (C, N, J + K), `kernel_activity` (C, N, 84 D); N the series'
        own token count. They depend only on the weights before the blocks (patching, front end, input
        embeddings), so when those stay frozen they are computed once and `embedding_from_block_inputs` gives the
        embedding at the cost of the blocks alone."""
        captured = {}
        hook = self.step.blocks[0].register_forward_pre_hook(lambda _, args: captured.update(tokens=args[0]))
        try:
            out = self.step(values, lengths, sampling_rate=sampling_rate, fixed_montage=self.montage_channels > 0)
        finally:
            hook.remove()
        items = []
        for b, count in enumerate(out.num_tokens.tolist()):
            items.append({"tokens": captured["tokens"][b, :, :count],
                          "statistics": None if out.statistics is None else out.statistics[b],
                          "fine_structure": None if out.fine_structure is None else out.fine_structure[b, :, :count],
                          "kernel_activity": (None if out.kernel_activity is None
                                              else out.kernel_activity[b, :, :count])})
        return items

    def embedding_from_block_inputs(self, tokens: torch.Tensor, token_mask: torch.Tensor,
                                    statistics: torch.Tensor | None = None,
                                    fine_structure: torch.Tensor | None = None,
                                    kernel_activity: torch.Tensor | None = None) -> torch.Tensor:
        """(B, width) embeddings from a padded batch of `block_inputs` (tokens (B, C, N, D), token_mask (B, N)):
        the blocks, final LayerNorm and pooling of STEPEncoder.forward and embed(), differentiable."""
        hidden = tokens
        for block in self.step.blocks:
            hidden = block(hidden, token_mask)
        hidden = self.step.final_norm(hidden) * token_mask[:, None, :, None]  # (B, C, N, D), 0 at padded tokens
        if self.pooling == "pooled":
            return self.step.pooled_norm(hidden.sum(dim=(1, 2)) / (token_mask.sum(dim=1) * hidden.shape[1])[:, None])
        return pool_embedding(self.step.embedding_tokens(hidden), token_mask, self.pooling, self.montage_channels > 0,
                              statistics, fine_structure, kernel_activity,
                              self.step.kernel_projection(self.pooling))

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, width) embeddings -> (B, num_labels) logits: standardise with the fixed buffers, then Linear."""
        return self.classifier((embedding - self.embedding_mean) / self.embedding_scale)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor | None = None,
                sampling_rate: float | torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> STEPClassifierOutput:
        """values (B, C, T) padded on the right, lengths (B,), sampling_rate as for STEPEncoder; labels (B,) long
        class indices give the cross-entropy loss."""
        embedding, patching_loss = self.embedding(values, lengths, sampling_rate)
        logits = self.head(embedding)
        loss = None if labels is None else F.cross_entropy(logits, labels.to(logits.device).long())
        return STEPClassifierOutput(loss=loss, logits=logits, embedding=embedding, patching_loss=patching_loss)

    @torch.inference_mode()
    def predict_logits(self, series: Sequence[np.ndarray],
                       sampling_rate: float | Sequence[float | None] | np.ndarray | None = None,
                       batch_size: int = 32) -> np.ndarray:
        """(n, num_labels) float32 logits of arrays shaped (time,) or (channels, time), batched as embed() does
        (eval mode); argmax gives the class index (config.id2label names it)."""
        embeddings = self.step.embed(series, sampling_rate, batch_size=batch_size, pooling=self.pooling,
                                     keep_channels=self.montage_channels > 0)
        return self.head(torch.from_numpy(embeddings).to(self.device)).float().cpu().numpy()
