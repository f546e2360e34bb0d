"""Models for tabular data: multinomial logistic regression and a small MLP.

Both use only Linear layers (and ReLU), the case where Opacus' ghost clipping is fastest.
Weights travel as an ordered ``{name: float32 ndarray}`` dict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedinfra.types import NDArrays

if TYPE_CHECKING:
    import torch

    from fedinfra.config import ModelSpec


def build_model(spec: ModelSpec, *, num_features: int, num_classes: int, seed: int) -> torch.nn.Module:
    """Build the model ``spec`` names, initialised deterministically from ``seed``.

    The built-in :class:`~fedinfra.task.builtin.TabularTask` builds it: one code path.
    """
    from fedinfra.task import new_model
    from fedinfra.task.builtin import TabularTask

    task = TabularTask(
        {"features": num_features, "classes": num_classes, "model": spec.kind, "hidden": list(spec.hidden)}
    )
    return new_model(task, seed=seed)


def get_weights(model: torch.nn.Module) -> NDArrays:
    """Copy the model's parameters out as float32 numpy arrays (state-dict order)."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def set_weights(model: torch.nn.Module, weights: NDArrays) -> None:
    """Load ``weights`` into ``model``; names and shapes must match exactly."""
    import torch

    state = model.state_dict()
    if set(state) != set(weights):
        raise ValueError(f"weight names differ: expected {sorted(state)}, got {sorted(weights)}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(weights[k], dtype=np.float32)) for k in state})
