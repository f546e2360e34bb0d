"""Task metrics are computed from per-site sums whose total gives the pooled figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from fedinfra.task.metrics import BINS, add_sums, finalize, metric_sums


def _logits(rng: np.random.Generator, n: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = rng.integers(0, classes, size=n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[y]
    return torch.from_numpy(logits), torch.from_numpy(y)


@pytest.mark.parametrize(("kind", "classes"), [("binary", 2), ("multiclass", 4)])
def test_sums_over_three_sites_equal_sklearn_on_the_pooled_set(kind: str, classes: int) -> None:
    rng = np.random.default_rng(1)
    parts = [_logits(rng, n, classes) for n in (50, 80, 130)]

    total = finalize(kind, add_sums(metric_sums(kind, o, y, loss_sum=1.0) for o, y in parts))  # type: ignore[arg-type]

    out = torch.cat([o for o, _ in parts])
    y = torch.cat([t for _, t in parts]).numpy()
    pred = out.argmax(1).numpy()
    probs = torch.softmax(out, 1).numpy()
    assert total["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert total["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert total["loss"] == pytest.approx(3.0 / len(y))
    if kind == "binary":
        assert total["f1"] == pytest.approx(skm.f1_score(y, pred))
        assert total["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=2.0 / BINS)
    else:
        assert total["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
        expected = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
        assert total["roc_auc"] == pytest.approx(expected, abs=2.0 / BINS)


def test_regression_sums_give_mse_and_mae() -> None:
    rng = np.random.default_rng(2)
    pred, y = rng.normal(size=40), rng.normal(size=40)

    sums = add_sums(
        metric_sums("regression", torch.from_numpy(p), torch.from_numpy(t), loss_sum=0.0)
        for p, t in ((pred[:15], y[:15]), (pred[15:], y[15:]))
    )
    total = finalize("regression", sums)

    assert total["mse"] == pytest.approx(skm.mean_squared_error(y, pred))
    assert total["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))


def test_sums_of_different_shapes_are_refused() -> None:
    a = {"tp": np.zeros(2)}
    b = {"tp": np.zeros(3)}
    with pytest.raises(ValueError, match="'tp'"):
        add_sums([a, b])


def test_no_examples_gives_nan_not_a_division_error() -> None:
    assert np.isnan(finalize("binary", {"count": np.zeros(1), "loss": np.zeros(1)})["loss"])
