"""Task metrics as sums: each site computes additive counts, only their total is used.

Every figure here is a function of per-site *sums* (counts, confusion cells, score
histograms, error sums), so the coordinator needs only the element-wise total - which is
what secure aggregation releases (Bonawitz et al. 2017) and what the design asks of
anything leaving a site: "losses, counts and metrics travel inside the secure aggregate".

* classification: accuracy; balanced accuracy (mean per-class recall, Brodersen et al.
  2010); macro F1 (binary: F1 of class 1); ROC AUC from per-class score histograms
  (one-vs-rest, macro-averaged for multiclass, Hand & Till 2001). Scores are binned into
  :data:`BINS` equal bins of [0, 1]: the AUC is exact up to ties within a bin (the
  trapezoid over binned ROC points, as Spark's ``BinaryClassificationMetrics`` with
  ``numBins``).
* regression: MSE and MAE.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedinfra.task.api import Kind

if TYPE_CHECKING:
    import torch

#: Score-histogram bins per class for ROC AUC.
BINS = 100
#: Classes above which score histograms are not kept (the sums would outgrow a message).
MAX_AUC_CLASSES = 32

Sums = dict[str, npt.NDArray[np.float64]]

#: The headline metric of each kind, first in reports.
HEADLINE: dict[str, str] = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "mse"}


def metric_sums(kind: Kind, outputs: torch.Tensor, y: torch.Tensor, loss_sum: float) -> Sums:
    """The additive sums of one site's evaluation (outputs after :meth:`Task.output`)."""
    import torch

    n = int(y.shape[0])
    sums: Sums = {"count": np.array([n], dtype=np.float64), "loss": np.array([loss_sum], dtype=np.float64)}
    if kind == "regression":
        err = outputs.reshape(n).double() - y.reshape(n).double()
        sums["sq_err"] = np.array([float((err**2).sum())])
        sums["abs_err"] = np.array([float(err.abs().sum())])
        return sums
    classes = int(outputs.shape[1])
    pred = outputs.argmax(dim=1)
    yy = y.long()
    onehot_pred = torch.nn.functional.one_hot(pred, classes).double()
    onehot_true = torch.nn.functional.one_hot(yy.clamp(0, classes - 1), classes).double()
    tp = (onehot_pred * onehot_true).sum(0)
    sums["correct"] = np.array([float(tp.sum())])
    sums["tp"] = tp.numpy()
    sums["fp"] = (onehot_pred * (1 - onehot_true)).sum(0).numpy()
    sums["fn"] = ((1 - onehot_pred) * onehot_true).sum(0).numpy()
    if classes <= MAX_AUC_CLASSES:
        probs = torch.softmax(outputs.double(), dim=1)
        bins = (probs * BINS).long().clamp(0, BINS - 1)  # n x C
        pos = np.zeros((classes, BINS))
        neg = np.zeros((classes, BINS))
        b = bins.numpy()
        t = onehot_true.numpy().astype(bool)
        for c in range(classes):
            pos[c] = np.bincount(b[t[:, c], c], minlength=BINS)
            neg[c] = np.bincount(b[~t[:, c], c], minlength=BINS)
        sums["score_pos"] = pos.reshape(-1)
        sums["score_neg"] = neg.reshape(-1)
    return sums


def add_sums(parts: Iterable[Mapping[str, Any]]) -> Sums:
    """Element-wise total of several sites' sums; names and lengths must agree."""
    total: Sums = {}
    for part in parts:
        for key, value in part.items():
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
            if key in total:
                if total[key].shape != arr.shape:
                    raise ValueError(f"metric sums {key!r} have lengths {total[key].size} and {arr.size}")
                total[key] = total[key] + arr
            else:
                total[key] = arr.copy()
    return total


def _auc(pos: npt.NDArray[np.float64], neg: npt.NDArray[np.float64]) -> float:
    """Area under the ROC curve from score histograms (ties within a bin count half)."""
    p, q = pos.sum(), neg.sum()
    if p == 0 or q == 0:
        return math.nan
    # Walk bins from high score to low: each positive outranks the negatives in lower bins.
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (neg_below + 0.5 * neg)).sum() / (p * q))


def finalize(kind: Kind, sums: Mapping[str, Any]) -> dict[str, float]:
    """The task's metrics from total sums; ``nan`` where undefined (no examples, one class)."""
    s = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in sums.items()}
    n = float(s["count"][0]) if "count" in s else 0.0
    if n <= 0:
        return {"loss": math.nan}
    out: dict[str, float] = {"loss": float(s["loss"][0]) / n}
    if kind == "regression":
        out["mse"] = float(s["sq_err"][0]) / n
        out["mae"] = float(s["abs_err"][0]) / n
        return out
    tp, fp, fn = s["tp"], s["fp"], s["fn"]
    out["accuracy"] = float(s["correct"][0]) / n
    support = tp + fn
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    out["balanced_accuracy"] = float(recall[present].mean()) if present.any() else math.nan
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    out["f1"] = float(f1[1]) if kind == "binary" and len(f1) == 2 else float(f1[present].mean())
    if "score_pos" in s:
        classes = len(tp)
        pos = s["score_pos"].reshape(classes, -1)
        neg = s["score_neg"].reshape(classes, -1)
        if kind == "binary" and classes == 2:
            out["roc_auc"] = _auc(pos[1], neg[1])
        else:
            aucs = [_auc(pos[c], neg[c]) for c in range(classes)]
            valid = [a for a in aucs if not math.isnan(a)]
            out["roc_auc"] = float(np.mean(valid)) if valid else math.nan
    return out


#: The names and lengths of a task's evaluation sums, in a fixed order (the secure-sum layout).
SumsLayout = tuple[tuple[str, int], ...]


def sums_layout(task: Any, model: Any) -> SumsLayout:
    """The layout of ``task``'s evaluation sums for ``model``, fixed before any site reports.

    Computed from an empty evaluation batch shaped by :meth:`Task.example_input`, so the
    coordinator and every site derive the same layout from the job alone (a secure sum's
    length must not come from a reply; Bonawitz et al. 2017 fix the vector length up
    front). A task whose input shape is unknown (``example_input`` is ``None``) carries the
    core sums only: example count, loss sum and (classification) correct.
    """
    import torch

    from fedinfra.task.training import predict

    example = task.example_input(model)
    if example is None:
        core: SumsLayout = (("count", 1), ("loss", 1))
        return core if task.kind == "regression" else (*core, ("correct", 1))
    x = example.detach().cpu().numpy().astype(np.float32)
    outputs = predict(task, model, x)[:0]
    y = torch.zeros((0,), dtype=torch.float32 if task.kind == "regression" else torch.int64)
    sums = metric_sums(task.kind, outputs, y, 0.0)
    return tuple((name, int(np.asarray(v).size)) for name, v in sums.items())


def flatten_sums(sums: Mapping[str, Any], layout: SumsLayout) -> npt.NDArray[np.float64]:
    """``sums`` as one vector in ``layout``'s order; a name missing or of another length is refused."""
    parts = []
    for name, size in layout:
        if name not in sums:
            raise ValueError(f"evaluation sums lack {name!r}, which the task's layout has")
        arr = np.asarray(sums[name], dtype=np.float64).reshape(-1)
        if arr.size != size:
            raise ValueError(f"evaluation sum {name!r} has {arr.size} values, the task's layout {size}")
        parts.append(arr)
    return np.concatenate(parts) if parts else np.zeros(0)


def unflatten_sums(vector: npt.NDArray[Any], layout: SumsLayout) -> Sums:
    """Inverse of :func:`flatten_sums`."""
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.size != sum(size for _, size in layout):
        raise ValueError(f"evaluation vector of {v.size} values does not match the layout")
    out: Sums = {}
    pos = 0
    for name, size in layout:
        out[name] = v[pos : pos + size].copy()
        pos += size
    return out


def evaluate_sums(task: Any, model: Any, x: npt.NDArray[np.float32], y: npt.NDArray[Any]) -> Sums:
    """Evaluate ``model`` on ``(x, y)`` as additive sums (see :func:`metric_sums`)."""
    import torch

    from fedinfra.task.training import predict

    outputs = predict(task, model, x)
    yt = torch.from_numpy(y)
    loss_fn = task.loss()
    reduction = getattr(loss_fn, "reduction", "mean")
    with torch.no_grad():
        loss_fn.reduction = "sum"
        try:
            loss_sum = float(loss_fn(outputs, yt)) if len(y) else 0.0
        finally:
            loss_fn.reduction = reduction
    return metric_sums(task.kind, outputs, yt, loss_sum)
