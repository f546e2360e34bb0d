"""Caravan insurance purchase: logistic regression with ROC AUC as the headline.

About 6% of customers bought, so accuracy ~94% is what predicting "No" for everyone
scores; ROC AUC (and balanced accuracy) say whether the model ranks buyers higher.
"""

from __future__ import annotations

import numpy as np
from torch import nn

import fedinfra


class CaravanTask(fedinfra.Task):
    """Binary task over the 85 coded Caravan features, standardised at each site."""

    kind = "binary"

    def build_model(self) -> nn.Module:
        """Logistic regression: one Linear layer, two logits."""
        return nn.Sequential(nn.Linear(85, 2))

    def load_data(self, source: fedinfra.DataSource) -> fedinfra.TaskData:
        """Standardise with the site's own training statistics (nothing about them leaves)."""
        train, held = source.read(), source.read_eval()
        mean, std = train.x.mean(axis=0), train.x.std(axis=0)
        std[std == 0] = 1.0

        def scaled(t: fedinfra.Table) -> fedinfra.Table:
            return fedinfra.Table(((t.x - mean) / std).astype(np.float32), t.y, t.names)

        return super().load_data(
            fedinfra.DataSource(
                read=lambda: scaled(train), read_eval=lambda: None if held is None else scaled(held)
            )
        )
