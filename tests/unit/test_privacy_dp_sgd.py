"""DP-SGD facade: mode choice, BatchNorm conversion, determinism, accounting across rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedinfra.errors import ConfigError
from fedinfra.privacy import (
    choose_mode,
    compute_epsilon,
    make_private_compatible,
    sample_rate_for,
    steps_for,
    train_dp_sgd,
)


def _data(n: int = 200, d: int = 8, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    return x, y[:, None].repeat(1, 1).ravel() % k


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(model: nn.Module, **kw: object) -> object:
    x, y = _data()
    params: dict[str, object] = {
        "epochs": 2, "batch_size": 32, "lr": 0.2, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
        "delta": 1e-3, "accountant": "rdp", "seed": 11,
    }
    params.update(kw)
    return train_dp_sgd(model, x, y, **params)  # type: ignore[arg-type]


def test_linear_models_use_ghost_clipping() -> None:
    assert choose_mode(_mlp()) == "ghost"


def test_conv_heavy_models_use_hooks() -> None:
    model = nn.Sequential(nn.Conv1d(1, 64, 9), nn.Flatten(), nn.Linear(64 * 2, 2))

    assert choose_mode(model) == "hooks"


def test_batchnorm_is_converted_and_reported() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    fixed, changes = make_private_compatible(model)

    assert changes == ("1: BatchNorm1d -> GroupNorm",)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fixed.modules())


def test_training_an_unconverted_batchnorm_model_is_refused_before_any_step() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    before = [p.detach().clone() for p in model.parameters()]

    with pytest.raises(ConfigError, match="make_private_compatible"):
        _train(model)

    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_seed_makes_training_deterministic() -> None:
    a, b = _mlp(), _mlp()

    ra, rb = _train(a), _train(b)

    assert ra == rb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_ghost_and_hooks_give_the_same_update() -> None:
    a, b = _mlp(), _mlp()

    _train(a, mode="ghost")
    _train(b, mode="hooks")

    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_result_reports_steps_mode_and_epsilon_of_the_whole_run() -> None:
    q = sample_rate_for(batch_size=32, dataset_size=200)

    r = _train(_mlp(), steps_before=25)

    assert r.steps == steps_for(epochs=2, sample_rate=q) == 12  # type: ignore[attr-defined]
    assert r.total_steps == 37  # type: ignore[attr-defined]
    assert r.mode == "fused"  # type: ignore[attr-defined]  (Linear + ReLU: the fused path)
    expected = compute_epsilon(noise_multiplier=1.0, sample_rate=q, steps=37, delta=1e-3, accountant="rdp")
    assert r.epsilon == pytest.approx(expected)  # type: ignore[attr-defined]


def test_different_seeds_draw_different_noise() -> None:
    a, b = _mlp(), _mlp()

    _train(a, seed=1)
    _train(b, seed=2)

    assert not torch.equal(a[0].weight, b[0].weight)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"delta": 0.01}, "1/n"),
        ({"batch_size": 0}, "batch_size"),
        ({"accountant": "moments"}, "accountant"),
    ],
)
def test_bad_parameters_fail_before_training(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        _train(_mlp(), **kwargs)
