"""Plain (non-private) local training and evaluation of classifiers over arrays."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch


def train_local(
    model: torch.nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> float:
    """Train a classifier in place with mini-batch SGD; return the mean loss of the last epoch.

    The loop of every task (:func:`fedinfra.task.training.train_plain`) with the default
    classification task.
    """
    from fedinfra.task import Task
    from fedinfra.task.training import train_plain

    return train_plain(Task(), model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def evaluate(model: torch.nn.Module, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> tuple[float, float]:
    """Return (mean cross-entropy loss, accuracy) of ``model`` on ``(x, y)``."""
    import torch
    from torch import nn

    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
        acc = float((logits.argmax(dim=1).numpy() == y).mean())
    return loss, acc
