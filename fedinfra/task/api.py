"""The public task API: what a user writes to train their own model with fedinfra.

A :class:`Task` says four things and may say a fifth:

1. ``build_model()`` - any ``torch.nn.Module``;
2. ``load_data(source)`` - turn the site's declared data (handed over by the site *after*
   its policy gates and PHI/PII scan passed) into torch ``Dataset`` objects, train and eval;
3. ``loss()`` - a torch loss module (it needs a ``reduction`` attribute: DP-SGD's ghost
   clipping asks it for per-sample losses, Li et al. 2022);
4. ``kind`` - ``"binary"``, ``"multiclass"`` or ``"regression"``, which fixes the metrics
   (:mod:`fedinfra.task.metrics`);
5. optionally ``training_step(model, x, y)`` - the loss of one batch, if the default
   ``loss()(model(x), y)`` is not what the model needs.

The line is drawn lower than Flower's ``ClientApp`` (which owns messaging) and NVFlare's
``Learner`` (which owns the loop): a task never sees weights on the wire, optimisers,
privacy or encryption. The framework owns the loop, so DP-SGD (Opacus), user-level DP,
compression and encrypted aggregation apply to every task unchanged, and a task cannot
release anything the site's accounting does not cover.

A job names its task by import path (``[task] ref = "xray_task:XrayTask"``); the table
``[task.config]`` is passed to the constructor as ``config``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from fedinfra.config import DatasetDecl

Kind = Literal["binary", "multiclass", "regression"]
KINDS: tuple[Kind, ...] = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Table:
    """Examples as arrays: features ``x`` (``n x ...``), labels ``y`` (``n``), column names."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.generic]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.x.shape[0]} feature rows but {self.y.shape[0]} labels")


@dataclass(frozen=True)
class DataSource:
    """A site's data as the site hands it to a task: already scanned and admitted.

    ``read()`` returns the training examples; ``read_eval()`` the evaluation examples
    when the source has its own (a simulated site's test shard), else ``None`` and the
    task splits ``read()`` itself. ``declaration`` is the manifest's ``[dataset]`` table
    (``None`` in simulation of a bundled set); ``path`` the resolved file or folder.
    """

    read: Callable[[], Table]
    read_eval: Callable[[], Table | None] = field(default=lambda: None)
    declaration: DatasetDecl | None = None
    path: Path | None = None


@dataclass(frozen=True)
class TaskData:
    """A site's data as torch datasets: training part and (optional) evaluation part."""

    train: Dataset[Any]
    eval: Dataset[Any] | None = None
    feature_names: tuple[str, ...] = ()


class Task:
    """Base class of every fedinfra task; subclass it and override :meth:`build_model`.

    Construct with the job's ``[task.config]`` table. Tasks must be deterministic given
    the config: the coordinator and every site build the same model independently.
    """

    #: What the model predicts; fixes the loss default and the metrics.
    kind: ClassVar[Kind] = "multiclass"
    #: Share of a site's examples kept for federated evaluation when its source has no
    #: evaluation part of its own.
    eval_fraction: ClassVar[float] = 0.2

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})

    # -- what a task must say ------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """Return a freshly initialised model (the framework seeds torch first)."""
        raise NotImplementedError(f"{type(self).__name__}.build_model is not implemented")

    # -- what a task may override --------------------------------------------------------
    def load_data(self, source: DataSource) -> TaskData:
        """Turn the site's data into torch datasets (default: tensors, seeded hold-out)."""
        from torch.utils.data import TensorDataset

        train = source.read()
        held = source.read_eval()
        if held is None:
            train, held = _split(train, self.eval_fraction)
        return TaskData(
            train=TensorDataset(*self._tensors(train)),
            eval=TensorDataset(*self._tensors(held)) if len(held.y) else None,
            feature_names=train.names,
        )

    def loss(self) -> nn.Module:
        """The training loss: cross-entropy for classification, squared error for regression."""
        from torch import nn

        return nn.MSELoss() if self.kind == "regression" else nn.CrossEntropyLoss()

    def output(self, raw: torch.Tensor) -> torch.Tensor:
        """Map the model's raw output to what the loss and metrics take.

        The default squeezes a regression model's single output column.
        """
        if self.kind == "regression" and raw.ndim == 2 and raw.shape[1] == 1:
            return raw.squeeze(1)
        return raw

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: nn.Module) -> torch.Tensor:
        """The loss of one batch; the framework does the backward pass and the (private) step.

        Overriding this switches DP-SGD from ghost clipping to per-sample gradients (hooks),
        since ghost clipping needs the plain ``loss(output, y)`` form.
        """
        out: torch.Tensor = loss(self.output(model(x)), y)
        return out

    def expected_features(self) -> int | None:
        """Inputs per example the model takes (flattened), checked at admission; ``None`` = any."""
        return None

    def example_input(self, model: nn.Module) -> torch.Tensor | None:
        """One input batch of the shape ``model`` takes, for export (ONNX traces the model with it).

        The default is a zero row of :meth:`expected_features` inputs, or of the first
        layer's ``in_features`` when the model starts with a ``Linear``; ``None`` when
        neither says (a CNN must override this, e.g. ``torch.zeros(1, 1, 8, 8)``).
        """
        import torch
        from torch import nn

        features = self.expected_features()
        if features is None:
            first = next((m for m in model.modules() if not isinstance(m, nn.Sequential | nn.Identity)), None)
            features = first.in_features if isinstance(first, nn.Linear) else None
        return None if features is None else torch.zeros(1, features)

    # -- helpers -------------------------------------------------------------------------
    def _tensors(self, table: Table) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        y_dtype = np.float32 if self.kind == "regression" else np.int64
        return (
            torch.from_numpy(np.ascontiguousarray(table.x, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(table.y, dtype=y_dtype)),
        )

    @classmethod
    def overrides_training_step(cls) -> bool:
        """Whether the task brings its own :meth:`training_step`."""
        return cls.training_step is not Task.training_step


def _split(table: Table, fraction: float) -> tuple[Table, Table]:
    """Keep the last ``fraction`` of a seeded permutation for evaluation (at least one row)."""
    n = len(table.y)
    if n < 2:
        return table, Table(table.x[:0], table.y[:0], table.names)
    order = np.random.default_rng(0).permutation(n)
    cut = min(n - 1, max(1, int(n * (1 - fraction))))
    tr, te = np.sort(order[:cut]), np.sort(order[cut:])
    return Table(table.x[tr], table.y[tr], table.names), Table(table.x[te], table.y[te], table.names)
