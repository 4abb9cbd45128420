"""The `minirocket` teacher: MiniRocket's fixed kernels (pipeline/minirocket.py), PPV per token.

The same 84 kernels at fixed dilations (a token grid has no series length to space them by) run over the whole
standardised series; each token's features are the PPV of the output positions inside its cell, above biases fitted
once on the pretraining corpus (quantiles of the convolution outputs of a fixed, seeded sample of corpus series;
`pipeline.minirocket.fit_corpus_biases`, called by extraction before any store is written). The biases' hash is in
the store manifest, so a store fitted differently is refused.
"""

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.minirocket import NUM_KERNELS, convolve
from pipeline.teachers.base import WindowedTeacher
from schemas.teachers import MiniRocketTeacher


class MiniRocketTeacherAdapter(WindowedTeacher):
    """PPV per token of fixed MiniRocket kernels at fixed dilations, above corpus-fitted biases.

    Input: each channel standardised over the whole series (scale-free), taken as samples (no rate). Output per
    token: (dilations x 84 kernels x biases_per_kernel) proportions in [0, 1], channels averaged."""

    domain = "timeseries"
    native_rate = None
    input_scaling = "standard"

    def __init__(self, name: str, spec: MiniRocketTeacher):
        super().__init__(name, spec)
        self.samples_per_token = spec.samples_per_token
        self.dilations = list(spec.dilations)
        # Windows overlap by more than the widest kernel's reach, so stitched tokens see full context.
        self.max_context = spec.max_context_tokens * spec.samples_per_token
        self.feature_dim = len(self.dilations) * NUM_KERNELS * spec.biases_per_kernel
        self.biases = None if spec.biases is None else torch.tensor(spec.biases, dtype=torch.float32).reshape(
            len(self.dilations), NUM_KERNELS, spec.biases_per_kernel)

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        if self.biases is None:
            raise RuntimeError(f"teacher {self.name!r}: biases are not fitted; extraction fits them from the "
                               "pretraining corpus (pipeline.minirocket.fit_corpus_biases) first")
        x = torch.from_numpy(windows[:, 0])  # (items, T)
        items, length = x.shape
        hop = self.samples_per_token
        n_tokens = max(1, math.ceil(length / hop))
        # Token cells: pad the output to n_tokens * hop positions; padded positions are left out of each PPV.
        valid = torch.zeros(n_tokens * hop, dtype=torch.bool)
        valid[:length] = True
        counts = valid.view(n_tokens, hop).sum(-1).clamp_min(1)  # (n_tokens,)
        features = []
        for d, dilation in enumerate(self.dilations):
            outputs = convolve(x, dilation)  # (items, 84, T)
            outputs = F.pad(outputs, (0, n_tokens * hop - length), value=-math.inf)  # never above a bias
            cells = outputs.view(items, NUM_KERNELS, n_tokens, hop)
            ppv = torch.stack([(cells > bias[None, :, None, None]).sum(dim=-1) / counts  # (items, 84, n_tokens)
                               for bias in self.biases[d].T], dim=-1)  # (items, 84, n_tokens, B)
            features.append(ppv.permute(0, 2, 1, 3).flatten(2))  # (items, n_tokens, 84 * B)
        return torch.cat(features, dim=-1)  # (items, n_tokens, feature_dim)

    def describe(self) -> dict:
        biases = self.spec.biases or []
        return {
            "kind": "minirocket",
            "model_id": "minirocket:ppv-per-token",
            "revision": None,
            "weights_sha256": hashlib.sha256(np.asarray(biases, dtype=np.float32).tobytes()).hexdigest(),
            "layer": None,
            "native_rate": None,
            "feature_dim": self.feature_dim,
            "token_hop_samples": self.samples_per_token,
            "dilations": self.dilations,
            "biases_per_kernel": self.spec.biases_per_kernel,
            "packages": {"torch": torch.__version__.split("+")[0]},
        }
