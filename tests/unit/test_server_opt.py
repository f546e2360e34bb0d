"""The server optimiser step (``fedinfra.aggregation.server_opt``): FedAvg with a server rate and momentum.

Every site of an HE run applies the same step to its own copy of the model, so the step must
be exactly ``w + lr * m`` with ``m <- beta * m + update`` in float32, and its state must
survive a checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedinfra.aggregation.server_opt import ServerOptimizer


def _w(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype=np.float32)}


@pytest.mark.parametrize("lr", [0.0, -0.1, math.nan])
def test_the_server_rate_must_be_positive(lr: float) -> None:
    with pytest.raises(ValueError, match=rf"^server lr must be > 0 \(got {lr}\)$"):
        ServerOptimizer(lr=lr, momentum=0.0)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, math.nan])
def test_the_momentum_must_be_in_zero_one(momentum: float) -> None:
    with pytest.raises(ValueError, match=rf"^server momentum must be in \[0, 1\) \(got {momentum}\)$"):
        ServerOptimizer(lr=1.0, momentum=momentum)


def test_the_bounds_themselves_zero_momentum_and_a_tiny_rate_are_accepted() -> None:
    opt = ServerOptimizer(lr=1e-30, momentum=0.0)
    assert opt.lr.dtype == np.float32
    assert opt.momentum.dtype == np.float32
    assert ServerOptimizer(lr=1.0, momentum=0.999).momentum == np.float32(0.999)


def test_without_momentum_the_step_is_the_rate_times_the_update_and_keeps_no_state() -> None:
    opt = ServerOptimizer(lr=0.5, momentum=0.0)
    weights = _w(1.0, 2.0)

    new = opt.step(weights, {"w": np.array([2.0, -4.0], dtype=np.float64)})

    assert new["w"].dtype == np.float32
    assert new["w"].tolist() == [2.0, 0.0]
    assert weights["w"].tolist() == [1.0, 2.0]  # not modified
    assert opt.velocity is None
    assert opt.state() == {}


def test_with_momentum_the_velocity_accumulates_the_updates() -> None:
    opt = ServerOptimizer(lr=0.5, momentum=0.5)
    w1 = opt.step(_w(0.0, 0.0), {"w": np.array([2.0, 4.0], dtype=np.float64)})
    assert w1["w"].tolist() == [1.0, 2.0]  # m = u1
    assert opt.velocity is not None
    assert opt.velocity["w"].dtype == np.float32

    w2 = opt.step(w1, {"w": np.array([2.0, 0.0], dtype=np.float32)})

    assert opt.velocity["w"].tolist() == [3.0, 2.0]  # m = 0.5 * m + u2
    assert w2["w"].tolist() == [2.5, 3.0]
    assert w2["w"].dtype == np.float32


def test_the_momentum_state_survives_a_checkpoint() -> None:
    opt = ServerOptimizer(lr=0.5, momentum=0.5)
    opt.step(_w(0.0), _w(2.0))
    state = opt.state()
    assert list(state) == ["velocity/w"]
    assert state["velocity/w"].tolist() == [2.0]

    restored = ServerOptimizer(lr=0.5, momentum=0.5)
    restored.load_state({**state, "other/w": np.array([9.0], dtype=np.float32)})
    assert restored.velocity is not None
    assert list(restored.velocity) == ["w"]
    assert restored.step(_w(0.0), _w(2.0))["w"].tolist() == opt.step(_w(0.0), _w(2.0))["w"].tolist() == [1.5]

    empty = ServerOptimizer(lr=0.5, momentum=0.5)
    empty.load_state({"other/w": np.array([9.0], dtype=np.float32)})
    assert empty.velocity is None
