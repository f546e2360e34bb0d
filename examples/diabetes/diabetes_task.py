"""Diabetes progression (sklearn's diabetes set): a regression task reporting MSE and MAE."""

from __future__ import annotations

import numpy as np
from torch import nn

import fedinfra


class DiabetesRegression(fedinfra.Task):
    """Linear regression on ``features`` baseline variables; the target is scaled by ``target_scale``."""

    kind = "regression"

    def build_model(self) -> nn.Module:
        """One Linear layer with a single output."""
        return nn.Sequential(nn.Linear(int(self.config.get("features", 10)), 1))

    def load_data(self, source: fedinfra.DataSource) -> fedinfra.TaskData:
        """Scale the target to about unit size so one learning rate fits every site."""
        scale = float(self.config.get("target_scale", 100.0))

        def scaled(t: fedinfra.Table | None) -> fedinfra.Table | None:
            return None if t is None else fedinfra.Table(t.x, (np.asarray(t.y) / scale).astype(np.float32), t.names)

        train, held = scaled(source.read()), scaled(source.read_eval())
        assert train is not None
        return super().load_data(fedinfra.DataSource(read=lambda: train, read_eval=lambda: held))
