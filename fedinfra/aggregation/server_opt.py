"""The server optimiser step applied to the aggregated update.

FedAvg with a server learning rate and momentum (Hsu, Qi & Brown 2019, "FedAvgM";
Reddi et al. 2021, "Adaptive Federated Optimization"). In plaintext mode the coordinator
applies it; in HE mode the coordinator never sees the mean update, so every site applies
the same step to its own copy of the model after decrypting the aggregate - the state is
deterministic, so all copies stay identical.
"""

from __future__ import annotations

import numpy as np

from fedinfra.types import NDArrays


class ServerOptimizer:
    """``w <- w + lr * m``, with ``m <- beta * m + mean_update`` (``beta = 0``: plain FedAvg)."""

    def __init__(self, *, lr: float, momentum: float) -> None:
        if not lr > 0:
            raise ValueError(f"server lr must be > 0 (got {lr})")
        if not 0 <= momentum < 1:
            raise ValueError(f"server momentum must be in [0, 1) (got {momentum})")
        self.lr = np.float32(lr)
        self.momentum = np.float32(momentum)
        self.velocity: NDArrays | None = None

    def step(self, weights: NDArrays, mean_update: NDArrays) -> NDArrays:
        """Return the new weights (``weights`` is not modified)."""
        if self.momentum > 0:
            if self.velocity is None:
                self.velocity = {k: np.zeros_like(v, dtype=np.float32) for k, v in mean_update.items()}
            for k, v in mean_update.items():
                self.velocity[k] = self.momentum * self.velocity[k] + v.astype(np.float32)
            direction = self.velocity
        else:
            direction = mean_update
        return {k: (weights[k] + self.lr * direction[k]).astype(np.float32) for k in weights}

    def state(self) -> NDArrays:
        """The optimiser's state (momentum buffers) for checkpoints."""
        return {f"velocity/{k}": v for k, v in (self.velocity or {}).items()}

    def load_state(self, state: NDArrays) -> None:
        """Restore what :meth:`state` returned."""
        vel = {k.removeprefix("velocity/"): v for k, v in state.items() if k.startswith("velocity/")}
        self.velocity = vel or None
