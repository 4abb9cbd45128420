"""Tiny stand-ins with the interface of braindecode's CBraMod and Labram, for tests/test_paper_teachers.py.

They let the `braindecode` teacher's own logic (loading through huggingface_hub's from_pretrained, windows, rates,
channel pooling, layers, montages) be tested where braindecode is not installed (CI installs no braindecode: see
the `braindecode` extra). They are not the models: the real classes are tested when braindecode imports.
Both mix information across channels, as the real models do, so "sees all channels" is observable.
"""

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

LABRAM_CHANNEL_ORDER = ["FP1", "FP2", "C3", "CZ", "C4", "O1", "O2"]  # the electrodes TinyLabramLike knows


class _Mix(nn.Module):
    """A residual block mixing every vector with the mean over channels and over patches."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (batch, channels, patches, dim)
        return h + torch.tanh(self.linear(h + h.mean(dim=1, keepdim=True) + h.mean(dim=2, keepdim=True)))


class TinyCrissCross(nn.Module, PyTorchModelHubMixin):
    """CBraMod's interface: forward(x (batch, channels, patches * patch_size), return_features=True) ->
    {"features": (batch, channels, patches, emb_dim)}; blocks in encoder.layers; _patch_size and sfreq set."""

    def __init__(self, patch_size: int = 20, d_model: int = 8, emb_dim: int = 6, n_layer: int = 2,
                 sfreq: float = 100.0):
        super().__init__()
        self._patch_size = patch_size
        self.sfreq = sfreq
        self.patch = nn.Linear(patch_size, d_model)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_Mix(d_model) for _ in range(n_layer))
        self.proj_out = nn.Linear(d_model, emb_dim)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        batch, channels, length = x.shape
        h = self.patch(x.view(batch, channels, length // self._patch_size, self._patch_size))
        for layer in self.encoder.layers:
            h = layer(h)
        out = self.proj_out(h)  # (batch, channels, patches, emb_dim)
        return {"features": out, "cls_token": None} if return_features else out.mean(dim=(1, 2))


class _TokenMix(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (batch, 1 + tokens, dim)
        return h + torch.tanh(self.linear(h + h.mean(dim=1, keepdim=True)))


class TinyLabramLike(nn.Module, PyTorchModelHubMixin):
    """Labram's interface: forward(x (batch, channels, n_times), return_features=True, ch_names=[...]) ->
    {"features": (batch, channels * patches, embed_dim)} channel-major, CLS first in blocks' outputs; fixed n_times."""

    def __init__(self, patch_size: int = 20, n_times: int = 80, embed_dim: int = 8, num_layers: int = 2):
        super().__init__()
        self.patch_size = patch_size
        self.n_times = n_times
        self.embed_dim = embed_dim
        self.patch = nn.Linear(patch_size, embed_dim)
        self.position = nn.Embedding(len(LABRAM_CHANNEL_ORDER), embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(_TokenMix(embed_dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, return_features: bool = False, *, ch_names: list[str] | None = None):
        batch, channels, length = x.shape
        if length != self.n_times:
            raise ValueError(f"expected {self.n_times} samples, got {length}")
        index = torch.tensor([LABRAM_CHANNEL_ORDER.index(n.upper()) for n in ch_names], device=x.device)
        h = self.patch(x.view(batch, channels, -1, self.patch_size)) + self.position(index)[None, :, None]
        h = torch.cat([self.cls_token.expand(batch, -1, -1), h.flatten(1, 2)], dim=1)  # (batch, 1 + C * P, D)
        for block in self.blocks:
            h = block(h)
        return {"features": h[:, 1:], "cls_token": h[:, 0]} if return_features else h[:, 0]
