"""The framework's local training loop for any task (non-private; DP-SGD is in privacy).

The SGD step is written out rather than taken from ``torch.optim``: constructing a torch
optimizer imports ``torch._dynamo``, which costs seconds in every fresh process - and
Flower's deployment engine starts a fresh ClientApp process for every message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedinfra.errors import DataError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from fedinfra.task.api import Task


def as_arrays(dataset: Dataset[Any], *, regression: bool = False) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """Materialise a map-style dataset of ``(x, y)`` pairs as two arrays.

    A ``TensorDataset`` is taken as is; any other dataset is read item by item once
    (the site's data is then in memory, which the examples and built-in tasks fit).
    """
    import torch
    from torch.utils.data import TensorDataset

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x_t, y_t = dataset.tensors
    else:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError as exc:
            raise DataError("a task's dataset must be map-style (define __len__ and __getitem__)") from exc
        if n == 0:
            raise DataError("the task's dataset is empty")
        items = [dataset[i] for i in range(n)]
        if not all(isinstance(it, tuple | list) and len(it) == 2 for it in items[:1]):
            raise DataError("a task's dataset must yield (features, label) pairs")
        x_t = torch.stack([torch.as_tensor(it[0]) for it in items])
        y_t = torch.stack([torch.as_tensor(it[1]) for it in items])
    x = np.ascontiguousarray(x_t.detach().cpu().numpy(), dtype=np.float32)
    y = np.ascontiguousarray(y_t.detach().cpu().numpy(), dtype=np.float32 if regression else np.int64)
    if x.ndim < 2:
        x = x.reshape(-1, 1)
    return x, y


def train_plain(
    task: Task,
    model: nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> float:
    """Train ``model`` in place with mini-batch SGD; return the mean loss of the last epoch."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = task.loss()
    model.train()
    last = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total, seen = 0.0, 0
        for start in range(0, len(xt), batch_size):
            idx = perm[start : start + batch_size]
            for p in params:
                p.grad = None
            loss: Any = task.training_step(model, xt[idx], yt[idx], loss_fn)
            loss.backward()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        last = total / max(seen, 1)
    return last


def predict(task: Task, model: nn.Module, x: npt.NDArray[np.float32], *, batch_size: int = 1024) -> torch.Tensor:
    """The model's outputs (after :meth:`Task.output`) on ``x``, in eval mode, batched."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outs.append(task.output(model(torch.from_numpy(x[start : start + batch_size]))))
    return torch.cat(outs) if outs else torch.empty(0)
