"""A third-party teacher as a plug-in would ship it: a tiny multichannel EEG-style model seeing all channels.

tests/test_teachers.py registers `EEGConvTeacher` under the `step_pipeline.teachers` entry-point group through a
temporary *.dist-info directory, the way an installed package would, and loads it with
`{kind: plugin, entry_point: tiny_eeg}`.
"""

import numpy as np
import torch
from torch import nn

from pipeline.teachers.base import WindowedTeacher, resolve_device


class TinyEEGNet(nn.Module):
    """Per-channel temporal convolution shared across channels, then attention-free pooling over channels.

    (batch, channels, T) -> (batch, T / hop, 2 * width): the mean and max over channels make the output size
    independent of the montage, as a brain foundation model's channel-agnostic pooling would.
    """

    def __init__(self, hop: int, width: int):
        super().__init__()
        self.temporal = nn.Conv1d(1, width, kernel_size=hop, stride=hop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        per_channel = torch.relu(self.temporal(x.reshape(batch * channels, 1, length)))  # (B*C, width, T/hop)
        per_channel = per_channel.view(batch, channels, per_channel.shape[1], -1)  # (B, C, width, T/hop)
        pooled = torch.cat([per_channel.mean(dim=1), per_channel.amax(dim=1)], dim=1)  # (B, 2*width, T/hop)
        return pooled.transpose(1, 2)  # (B, T/hop, 2*width)


class EEGConvTeacher(WindowedTeacher):
    """Entry point: called as EEGConvTeacher(name, spec) with a validated PluginTeacher spec."""

    domain = "brain"
    native_rate = 128.0
    sees_all_channels = True

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.device = resolve_device(spec.device)
        self.samples_per_token = int(spec.options.get("hop", 32))
        width = int(spec.options.get("width", 8))
        self.max_context = 16 * self.samples_per_token
        self.feature_dim = 2 * width
        torch.manual_seed(int(spec.options.get("seed", 0)))
        self.net = TinyEEGNet(self.samples_per_token, width).to(self.device).eval()

    def encode_window(self, windows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(windows).to(self.device)  # (items, channels, T)
        hop = self.samples_per_token
        padded = torch.nn.functional.pad(x, (0, -x.shape[-1] % hop))  # zeros to whole tokens
        return self.net(padded)

    def describe(self) -> dict:
        return {"kind": "plugin", "model_id": "tiny-eeg", "revision": None, "weights_sha256": "random-init",
                "layer": None, "native_rate": self.native_rate, "feature_dim": self.feature_dim}


def not_an_adapter(name, spec):
    """A broken plug-in: returns something that is not a TeacherAdapter."""
    return object()
