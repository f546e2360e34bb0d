"""Plaintext aggregation counts each site once and takes no NaN or infinity (issues 13, 16, 20)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array

from fedinfra.aggregation.rounds import Reply, RoundSpec, UpdateRejected, start_round
from fedinfra.config import JobSpec

LAYOUT = (("w", (4, 5)), ("b", (5,)))


def _arrays(value: float) -> dict[str, Array]:
    return {name: Array(np.full(shape, value, dtype=np.float32)) for name, shape in LAYOUT}


def _round() -> object:
    return start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=JobSpec(), he_public=None))


def test_a_second_reply_from_one_site_is_rejected_and_the_first_counts_once() -> None:
    agg = _round()
    agg.accept(Reply(site="a", weight=1.0, config={}, arrays=_arrays(1.0)))  # type: ignore[attr-defined]

    with pytest.raises(UpdateRejected) as info:
        agg.accept(Reply(site="a", weight=1.0, config={}, arrays=_arrays(5.0)))  # type: ignore[attr-defined]
    agg.accept(Reply(site="b", weight=1.0, config={}, arrays=_arrays(3.0)))  # type: ignore[attr-defined]

    assert info.value.check == "protocol"
    mean = agg.finish().mean  # type: ignore[attr-defined]
    assert np.all(mean["w"] == 2.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_update_is_rejected_and_leaves_the_sum_intact(bad: float) -> None:
    agg = _round()
    agg.accept(Reply(site="a", weight=1.0, config={}, arrays=_arrays(1.0)))  # type: ignore[attr-defined]
    poisoned = _arrays(0.0)
    w = np.zeros((4, 5), dtype=np.float32)
    w[2, 3] = bad
    poisoned["w"] = Array(w)

    with pytest.raises(UpdateRejected) as info:
        agg.accept(Reply(site="x", weight=1.0, config={}, arrays=poisoned))  # type: ignore[attr-defined]

    assert info.value.check == "finite"
    mean = agg.finish().mean  # type: ignore[attr-defined]
    assert np.all(np.isfinite(mean["w"]))
    assert np.all(mean["w"] == 1.0)


@pytest.mark.parametrize("weight", [np.nan, np.inf, 0.0, -1.0])
def test_a_non_finite_or_non_positive_weight_is_rejected(weight: float) -> None:
    agg = _round()
    with pytest.raises(UpdateRejected):
        agg.accept(Reply(site="a", weight=weight, config={}, arrays=_arrays(1.0)))  # type: ignore[attr-defined]
    assert agg.count == 0  # type: ignore[attr-defined]
