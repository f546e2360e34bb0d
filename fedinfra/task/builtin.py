"""The built-in tasks: the scenarios fedinfra ships, written against the public API.

A job without a ``[task]`` table trains :class:`TabularTask` with the sizes of its bundled
data set; it runs exactly the code path a user's task runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fedinfra.task.api import Kind, Task

if TYPE_CHECKING:
    from torch import nn

#: Import path of the built-in tabular task (what a job without ``[task]`` trains).
TABULAR_REF = "fedinfra.task.builtin:TabularTask"


class TabularTask(Task):
    """Multinomial logistic regression (``model = "logreg"``) or an MLP over table rows.

    Config: ``features`` and ``classes`` (ints), ``model`` (``"logreg"`` | ``"mlp"``),
    ``hidden`` (MLP widths). Only Linear layers (and ReLU): the case where Opacus' ghost
    clipping is fastest (Li et al. 2022).
    """

    kind: ClassVar[Kind] = "multiclass"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self.features = int(cfg["features"])
        self.classes = int(cfg["classes"])
        self.model_kind = str(cfg.get("model", "logreg"))
        self.hidden = [int(h) for h in cfg.get("hidden", [32])]
        if self.features < 1 or self.classes < 2:
            raise ValueError(f"features must be >= 1 and classes >= 2 (got {self.features}, {self.classes})")
        if self.model_kind not in ("logreg", "mlp"):
            raise ValueError(f"model must be 'logreg' or 'mlp' (got {self.model_kind!r})")

    def build_model(self) -> nn.Module:
        """A Linear layer, or Linear-ReLU blocks of the ``hidden`` widths and a Linear head."""
        from torch import nn

        if self.model_kind == "logreg":
            return nn.Sequential(nn.Linear(self.features, self.classes))
        layers: list[nn.Module] = []
        width = self.features
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, self.classes))
        return nn.Sequential(*layers)

    def expected_features(self) -> int:
        """Columns per row the model takes."""
        return self.features


class BinaryTabularTask(TabularTask):
    """:class:`TabularTask` for a two-class target, reporting ROC AUC as its headline."""

    kind: ClassVar[Kind] = "binary"


class RegressionTabularTask(TabularTask):
    """Linear regression or an MLP regressor over table rows (one output)."""

    kind: ClassVar[Kind] = "regression"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__({"classes": 2, **(config or {})})
        self.classes = 1
