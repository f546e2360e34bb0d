"""CT or MR? A small CNN over DICOM images (pydicom's own test files)."""

from __future__ import annotations

from torch import nn

import fedinfra


class ModalityCNN(fedinfra.Task):
    """Classifies 32x32 grey DICOM images into their sub-folder classes (ct, mr)."""

    kind = "binary"

    def build_model(self) -> nn.Module:
        """One conv block with GroupNorm, pooled to 4x4, and a Linear head."""
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.GroupNorm(2, 4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 2),
        )
