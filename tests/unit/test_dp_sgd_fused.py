"""Fused per-sample clipping (Goodfellow 2015 norms, ghost-clipping sums) is Opacus' DP-SGD step.

The clipped sum must equal what Opacus' hooks (materialised per-sample gradients) produce, for
examples above and below the clip norm; a whole ``train_dp_sgd`` run must match the Opacus
path; and a model with a layer the fused path does not cover must still go through Opacus.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from fedinfra.errors import ConfigError
from fedinfra.privacy import choose_mode, train_dp_sgd
from fedinfra.privacy.dp_sgd_fused import clipped_grad_sums, plan_for, unsupported_layer

CLIP = 1.0


def _model(bias: bool = True, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3, bias=bias))


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples as 2x3 "images": half scaled up 20x (clipped at C = 1), half down 100x (not clipped)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2, 3, generator=g)
    x[: n // 2] *= 20.0
    x[n // 2 :] *= 0.01
    return x, torch.randint(0, 3, (n,), generator=g)


def _opacus_clipped_sums(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float = CLIP
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Opacus hooks: per-sample gradients, then ``DPOptimizer.clip_and_accumulate``; and the norms."""
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=clip,
                      expected_batch_size=len(x), loss_reduction="mean")
    with warnings.catch_warnings():  # Opacus' hooks on a first layer whose input needs no grad
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        nn.CrossEntropyLoss()(gsm(x), y).backward()
    norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in opt.grad_samples], dim=1).norm(dim=1)
    opt.clip_and_accumulate()
    sums = [p.summed_grad.detach().clone() for p in opt.params]  # type: ignore[attr-defined]
    gsm._close()
    return sums, norms


@pytest.mark.parametrize("bias", [True, False])
def test_the_fused_clipped_sum_is_opacus_hooks_clipped_sum(bias: bool) -> None:
    x, y = _batch()
    model = _model(bias)
    _, norms = _opacus_clipped_sums(_model(bias), x, y)
    clip = float(norms.sort().values[7:9].mean())  # half of the examples above the clip, half below
    expected, _ = _opacus_clipped_sums(_model(bias), x, y, clip)
    assert (norms > clip).sum() == (norms < clip).sum() == 8

    sums, losses = clipped_grad_sums(plan_for(model), x, y, max_grad_norm=clip, criterion=nn.CrossEntropyLoss(),
                                     output=lambda raw: raw)

    params = [p for p in model.parameters() if p.requires_grad]
    assert len(sums) == len(params) == len(expected) == (4 if bias else 2)
    for p, want in zip(params, expected, strict=True):
        torch.testing.assert_close(sums[p], want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses, nn.CrossEntropyLoss(reduction="none")(model(x), y))


def test_a_frozen_layer_is_left_out_of_the_norm_and_the_sum() -> None:
    x, y = _batch()
    model, reference = _model(True), _model(True)
    for m in (model, reference):
        m[1].requires_grad_(False)
    expected, _ = _opacus_clipped_sums(reference, x, y)

    sums, _ = clipped_grad_sums(plan_for(model), x, y, max_grad_norm=CLIP, criterion=nn.CrossEntropyLoss(),
                                output=lambda raw: raw)

    assert list(sums) == [model[3].weight, model[3].bias]
    for got, want in zip(sums.values(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def _data(n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2, 3)).astype(np.float32)
    x[: n // 2] *= 20.0  # far above the clip norm
    return x, rng.integers(0, 3, n).astype(np.int64)


def _run(mode: str, bias: bool, seed: int = 7, **kw: object) -> tuple[object, list[torch.Tensor]]:
    x, y = _data()
    model = _model(bias)
    params: dict[str, object] = {
        "epochs": 2, "batch_size": 40, "lr": 0.3, "momentum": 0.5, "noise_multiplier": 0.8,
        "max_grad_norm": CLIP, "delta": 1e-3, "accountant": "rdp", "seed": seed,
    }
    params.update(kw)
    result = train_dp_sgd(model, x, y, mode=mode, **params)  # type: ignore[arg-type]
    return result, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("bias", [True, False])
def test_with_zero_noise_a_fused_run_is_the_opacus_run(bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedinfra.privacy import dp_sgd, dp_sgd_fused

    def no_noise(rng: np.random.Generator, std: float, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)

    monkeypatch.setattr(dp_sgd, "gaussian", no_noise)
    monkeypatch.setattr(dp_sgd_fused, "gaussian", no_noise)
    fused, fused_w = _run("auto", bias)
    hooks, hooks_w = _run("hooks", bias)

    assert fused.mode == "fused"  # type: ignore[attr-defined]
    assert hooks.mode == "hooks"  # type: ignore[attr-defined]
    assert fused_w[0].abs().max() > 0.01  # the run moved the weights
    for a, b in zip(fused_w, hooks_w, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fused.loss == pytest.approx(hooks.loss, rel=1e-5)  # type: ignore[attr-defined]


def test_one_seed_draws_the_same_sample_and_noise_in_both_paths() -> None:
    fused, fused_w = _run("auto", True)
    ghost, ghost_w = _run("ghost", True)
    _, other_w = _run("auto", True, seed=8)

    for a, b in zip(fused_w, ghost_w, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fused_w[0], other_w[0])
    for name in ("steps", "total_steps", "epsilon", "delta", "sample_rate", "noise_multiplier", "max_grad_norm"):
        assert getattr(fused, name) == getattr(ghost, name), name


def test_an_empty_poisson_batch_still_adds_noise_in_the_fused_path() -> None:
    x, y = _data(n=240)
    model = _model(True)
    before = [p.detach().clone() for p in model.parameters()]
    # q = 1/240: about a third of the 240 steps have an empty batch; the run must not fail.
    result = train_dp_sgd(model, x, y, epochs=1, batch_size=1, lr=0.1, noise_multiplier=1.0, max_grad_norm=CLIP,
                          delta=1e-3, accountant="rdp", seed=1)

    assert result.mode == "fused"
    assert result.steps == 240
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("model", "ndim", "reason"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)), 2, "LayerNorm"),
        (nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 2)), 2, "Dropout"),
        (nn.Sequential(nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 2)), 2, "PReLU"),
        (nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2)), 3, "Conv1d"),
        (nn.Sequential(nn.Linear(4, 2)), 3, "more than one row per example"),
        (nn.Sequential(nn.Flatten(0), nn.Linear(4, 2)), 3, "Flatten"),
    ],
)
def test_layers_outside_the_fused_path_are_named(model: nn.Module, ndim: int, reason: str) -> None:
    assert reason in (unsupported_layer(model, ndim) or "")


def test_a_layer_used_twice_is_refused() -> None:
    shared = nn.Linear(4, 4)

    assert "used twice" in (unsupported_layer(nn.Sequential(shared, nn.ReLU(), shared), 2) or "")


def test_a_model_with_an_unsupported_layer_still_trains_through_opacus() -> None:
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    kw: dict[str, object] = {"epochs": 1, "batch_size": 40, "lr": 0.1, "noise_multiplier": 1.0,
                             "max_grad_norm": CLIP, "delta": 1e-3, "accountant": "rdp", "seed": 1}

    assert train_dp_sgd(model, x, y, **kw).mode == choose_mode(model) == "hooks"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="LayerNorm"):
        train_dp_sgd(model, x, y, mode="fused", **kw)  # type: ignore[arg-type]


def test_a_task_training_step_goes_through_opacus_hooks() -> None:
    x, y = _data()
    model = _model(True)

    def step(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = nn.functional.cross_entropy(m(xb), yb)
        return loss

    result = train_dp_sgd(model, x, y, epochs=1, batch_size=40, lr=0.1, noise_multiplier=1.0, max_grad_norm=CLIP,
                          delta=1e-3, accountant="rdp", seed=1, batch_loss=step)

    assert result.mode == "hooks"


def test_drawing_the_noise_ahead_in_a_thread_changes_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedinfra.privacy import dp_sgd

    monkeypatch.setattr(dp_sgd, "PREFETCH_MIN_PARAMS", 10**9)
    _, inline_w = _run("auto", True)
    monkeypatch.setattr(dp_sgd, "PREFETCH_MIN_PARAMS", 0)
    ahead, ahead_w = _run("auto", True)

    assert ahead.mode == "fused"  # type: ignore[attr-defined]
    for a, b in zip(inline_w, ahead_w, strict=True):
        assert torch.equal(a, b)


def test_an_error_while_drawing_ahead_reaches_the_training_loop() -> None:
    from fedinfra.privacy.dp_sgd_fused import Draw, prefetched

    def failing() -> Iterator[Draw]:
        yield np.arange(2), [np.zeros(1)]
        raise RuntimeError("entropy source failed")

    got = prefetched(failing())
    assert next(got)[0].tolist() == [0, 1]
    with pytest.raises(RuntimeError, match="entropy source failed"):
        next(got)
