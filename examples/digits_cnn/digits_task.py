"""A small CNN over 8x8 digit images, written against the public task API."""

from __future__ import annotations

import torch
from torch import nn

import fedinfra


class DigitsCNN(fedinfra.Task):
    """Two conv blocks with GroupNorm (no BatchNorm: it mixes examples, which DP-SGD forbids)."""

    kind = "multiclass"

    def build_model(self) -> nn.Module:
        """The CNN, ``width`` channels in the first block."""
        width = int(self.config.get("width", 8))
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.GroupNorm(2, width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.GroupNorm(2, 2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 2 * 2, 10),
        )

    def example_input(self, model: nn.Module) -> torch.Tensor:
        """One 8x8 grey image: the shape ONNX export traces the CNN with."""
        return torch.zeros(1, 1, 8, 8)
