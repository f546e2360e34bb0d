"""Plain (non-private) local training and evaluation of the tabular models."""

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
    """Train ``model`` in place with mini-batch SGD; return the mean loss of the last epoch.

    The SGD step is written out rather than taken from ``torch.optim``: constructing a
    torch optimizer imports ``torch._dynamo``, which costs seconds in every fresh process -
    and Flower's deployment engine starts a fresh ClientApp process for every message.
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    last = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total, seen = 0.0, 0
        for start in range(0, len(xt), batch_size):
            idx = perm[start : start + batch_size]
            for p in params:
                p.grad = None
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        last = total / max(seen, 1)
    return last


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
