"""Fused per-sample clipping at its edges, against per-example gradients computed one example at a time.

The reference here takes each example's gradient by its own backward pass (the definition of
a per-example gradient, Abadi et al. 2016, Alg. 1), clips it with Opacus' factor
``min(1, C / (||g|| + 1e-6))`` and sums: no Opacus, no outer products. The fused sums must
match it for a layer whose weight or whose bias alone is trained, and for a criterion with
per-output losses (MSE). Also pinned: the caller's criterion is left as it was, a criterion
without a per-example reduction is refused, every refused layer is named exactly, the draws
are the generator's in the documented order, the worker thread stops with its consumer, and
the noised mean is ``(sum + noise) / expected batch size``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import pytest
import torch
from torch import nn

from fedinfra.errors import ConfigError
from fedinfra.privacy.dp_sgd_fused import (
    OPACUS_NORM_EPS,
    Draw,
    FusedPlan,
    clipped_grad_sums,
    draws,
    noised_mean_gradients,
    plan_for,
    prefetched,
    unsupported_layer,
)
from fedinfra.privacy.noise import gaussian
from tests.unit.test_dp_sgd_fused import _batch as _fused_batch
from tests.unit.test_dp_sgd_fused import _model

T = TypeVar("T")


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """12 examples of the fused tests' batch (half clipped at C = 1, half not)."""
    return _fused_batch(12)


def _looped(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module, clip: float
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Per example: its own backward pass, Opacus' clip factor; the clipped sums, the norms, the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    norms, losses = [], []
    for i in range(len(x)):
        loss = criterion(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(g.square().sum() for g in grads))  # type: ignore[arg-type]
        factor = min(1.0, clip / (float(norm) + OPACUS_NORM_EPS))
        for s, g in zip(sums, grads, strict=True):
            s += factor * g
        norms.append(float(norm))
        losses.append(float(loss.detach()))
    return sums, torch.tensor(norms), torch.tensor(losses)


@pytest.mark.parametrize("frozen", ["weight", "bias"])
def test_a_layer_training_only_its_weight_or_only_its_bias_is_clipped_by_that_parameter_alone(frozen: str) -> None:
    x, y = _batch()
    model = _model()
    getattr(model[1], frozen).requires_grad_(False)
    want, norms, _ = _looped(model, x, y, nn.CrossEntropyLoss(), clip=1.0)
    assert (norms > 1.0).any()  # both sides of the clip
    assert (norms < 1.0).any()

    sums, _ = clipped_grad_sums(plan_for(model), x, y, max_grad_norm=1.0, criterion=nn.CrossEntropyLoss(),
                                output=lambda raw: raw)

    params = [p for p in model.parameters() if p.requires_grad]
    assert list(sums) == params  # the frozen parameter gets no sum
    assert len(sums) == 3
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(sums[p], w, rtol=1e-5, atol=1e-6)


def test_a_criterion_with_a_loss_per_output_is_averaged_per_example() -> None:
    """MSE with reduction='none' gives (B, 3); the example's loss is its mean, as in Opacus."""
    x, _ = _batch()
    y = torch.randn(12, 3, generator=torch.Generator().manual_seed(5))
    model = _model()
    want, norms, want_losses = _looped(model, x, y, nn.MSELoss(), clip=1.0)
    assert (norms > 1.0).any()
    assert (norms < 1.0).any()

    sums, losses = clipped_grad_sums(plan_for(model), x, y, max_grad_norm=1.0, criterion=nn.MSELoss(),
                                     output=lambda raw: raw)

    assert losses.shape == (12,)
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-7)
    for p, w in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(sums[p], w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_callers_criterion_keeps_its_reduction(reduction: str) -> None:
    x, y = _batch()
    criterion = nn.CrossEntropyLoss(reduction=reduction)

    clipped_grad_sums(plan_for(_model()), x, y, max_grad_norm=1.0, criterion=criterion, output=lambda raw: raw)

    assert criterion.reduction == reduction


class _Summed(nn.Module):
    """A criterion that ignores ``reduction``: one number for the whole batch."""

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, y, reduction="sum")


class _OneRow(_Summed):
    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().forward(out, y).reshape(1)


@pytest.mark.parametrize(("kind", "shape"), [(_Summed, "()"), (_OneRow, "(1,)")])
def test_a_criterion_without_one_loss_per_example_is_refused_naming_it(kind: type[nn.Module], shape: str) -> None:
    """Neither criterion has a ``reduction`` attribute; a fresh instance each time, so none is left from a run."""
    x, y = _batch()
    criterion, name = kind(), kind.__name__

    with pytest.raises(ConfigError) as err:
        clipped_grad_sums(plan_for(_model()), x, y, max_grad_norm=1.0, criterion=criterion, output=lambda raw: raw)

    assert str(err.value) == (
        f"criterion {name} with reduction='none' returned shape {shape}, not one loss per example (12); "
        "give it a working reduction attribute"
    )


def _with_buffer() -> nn.ReLU:
    relu = nn.ReLU()
    relu.register_buffer("scale", torch.ones(1))
    return relu


def _with_parameter() -> nn.ReLU:
    relu = nn.ReLU()
    relu.scale = nn.Parameter(torch.ones(1))
    return relu


@pytest.mark.parametrize(
    ("model", "ndim", "reason"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)), 2,
         "LayerNorm is not a Linear layer or a parameter-free activation"),
        (nn.Sequential(nn.Linear(4, 2)), 3,
         "a Linear layer receives more than one row per example; add nn.Flatten() before it"),
        (nn.Sequential(nn.Flatten(0), nn.Linear(4, 2)), 3,
         "Flatten(start_dim=0, end_dim=-1) does not flatten to rows"),
        (nn.Sequential(nn.Flatten(1, 1), nn.Linear(4, 2)), 3,
         "Flatten(start_dim=1, end_dim=1) does not flatten to rows"),
        (nn.Sequential(nn.Linear(4, 4), _with_buffer(), nn.Linear(4, 2)), 2, "ReLU has parameters or buffers"),
        (nn.Sequential(nn.Linear(4, 4), _with_parameter(), nn.Linear(4, 2)), 2, "ReLU has parameters or buffers"),
        (nn.Sequential(nn.Flatten(), nn.ReLU()), 3, "the model has no Linear layer"),
    ],
    ids=["layernorm", "rows", "flatten-start", "flatten-end", "buffer", "parameter", "no-linear"],
)
def test_each_refusal_names_its_layer_exactly(model: nn.Module, ndim: int, reason: str) -> None:
    assert unsupported_layer(model, ndim) == reason


def test_a_linear_layer_used_twice_is_refused_a_shared_activation_is_not() -> None:
    shared, relu = nn.Linear(4, 4), nn.ReLU()

    assert unsupported_layer(nn.Sequential(shared, relu, shared), 2) == "Linear is used twice"
    assert unsupported_layer(nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu, nn.Linear(4, 2)), 2) is None


def test_nested_sequentials_are_flattened_and_rows_follow_flatten() -> None:
    inner = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
    model = nn.Sequential(nn.Flatten(), inner, nn.Sequential(nn.Identity(), nn.Linear(5, 3)))

    assert unsupported_layer(model, 3) is None
    plan = plan_for(model)
    assert plan.layers == (model[0], inner[0], inner[1], model[2][0], model[2][1])
    assert plan.linears == (inner[0], model[2][1])


def test_each_step_draws_the_poisson_mask_then_each_parameters_noise_in_order() -> None:
    shapes = [(2, 3), (3,)]
    replay = np.random.default_rng(11)

    got = list(draws(np.random.default_rng(11), n=50, q=0.3, steps=3, std=0.7, shapes=shapes))

    assert len(got) == 3
    for rows, noises in got:
        np.testing.assert_array_equal(rows, np.flatnonzero(replay.random(50) < 0.3))
        assert len(noises) == len(shapes)
        for noise, shape in zip(noises, shapes, strict=True):
            np.testing.assert_array_equal(noise, gaussian(replay, 0.7, shape))


def _within(seconds: float, call: Callable[[], T]) -> T:
    """``call()`` on another thread; fail (instead of hanging the suite) if it takes longer than ``seconds``."""
    done: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            done.append((True, call()))
        except BaseException as exc:  # re-raised below
            done.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"still waiting after {seconds} s: the consumer or the worker is blocked"
    ok, value = done[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def _counted(produced: list[int], count: int) -> Iterator[Draw]:
    for i in range(count):
        produced.append(i)
        yield np.arange(i), [np.full(1, float(i))]


def test_prefetched_yields_every_item_in_order_then_stops_its_worker() -> None:
    before = threading.active_count()

    got = _within(10.0, lambda: [int(noises[0][0]) for _, noises in prefetched(_counted([], 7))])

    assert got == list(range(7))
    assert threading.active_count() <= before  # no worker left (another test's thread may end meanwhile)


def test_a_worker_waiting_on_a_full_queue_stops_when_the_consumer_does() -> None:
    produced: list[int] = []
    before = threading.active_count()
    early = prefetched(_counted(produced, 10_000), depth=2)
    assert int(_within(5.0, lambda: next(early))[1][0][0]) == 0
    for _ in range(3000):  # until the worker holds a fourth item it cannot put: two queued, the queue full
        if len(produced) >= 4:
            break
        threading.Event().wait(0.01)

    _within(5.0, early.close)  # the consumer stops: the worker must notice, not wait for room forever

    assert threading.active_count() <= before  # no worker left (another test's thread may end meanwhile)
    assert len(produced) == 4  # one consumed, two queued, one waiting to be put: nothing more drawn


def test_a_consumer_slower_than_the_poll_interval_still_gets_every_item() -> None:
    """A training step that takes longer than the worker's 0.05 s wait on a full queue must not end the stream."""

    def slowly() -> list[int]:
        got = []
        for _, noises in prefetched(_counted([], 4), depth=1):
            got.append(int(noises[0][0]))
            threading.Event().wait(0.2)  # the worker waits on a full queue four times its poll interval
        return got

    assert _within(5.0, slowly) == [0, 1, 2, 3]


def test_an_error_in_the_worker_reaches_the_consumer_instead_of_a_wait() -> None:
    def failing() -> Iterator[Draw]:
        yield np.arange(1), [np.zeros(1)]
        raise RuntimeError("entropy source failed")

    got = prefetched(failing())
    assert _within(5.0, lambda: next(got))[0].tolist() == [0]
    with pytest.raises(RuntimeError, match=r"^entropy source failed$"):
        _within(5.0, lambda: next(got))


def test_a_plan_whose_linear_layers_disagree_with_its_layers_is_refused() -> None:
    """Clipping with a layer left out of the norm would under-state every example's gradient norm."""
    x, y = _batch()
    plan = plan_for(_model())
    partial = FusedPlan(layers=plan.layers, linears=plan.linears[:1])

    with pytest.raises(ValueError, match="zip"):
        clipped_grad_sums(partial, x, y, max_grad_norm=1.0, criterion=nn.CrossEntropyLoss(), output=lambda raw: raw)


def test_an_example_whose_uniform_equals_q_is_left_out() -> None:
    """Inclusion is ``u < q`` for u uniform on [0, 1): probability exactly q (Poisson sampling, Abadi et al. 2016)."""
    u = float(np.random.default_rng(5).random(1)[0])

    (rows, _), = draws(np.random.default_rng(5), n=1, q=u, steps=1, std=1.0, shapes=[])
    (rows_above, _), = draws(np.random.default_rng(5), n=1, q=np.nextafter(u, 1.0), steps=1, std=1.0, shapes=[])

    assert rows.tolist() == []
    assert rows_above.tolist() == [0]


def test_noise_for_every_parameter_or_none_is_set() -> None:
    """A parameter left without its noise would be released with less than the planned noise: refused."""
    w, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))

    with pytest.raises(ValueError, match="zip"):
        noised_mean_gradients([w, b], {}, [np.zeros(2)], expected_batch_size=1)
    with pytest.raises(ValueError, match="zip"):
        noised_mean_gradients([w], {}, [np.zeros(2), np.zeros(1)], expected_batch_size=1)


def test_the_noised_gradient_is_sum_plus_noise_over_the_expected_batch_in_the_parameters_dtype() -> None:
    w = nn.Parameter(torch.zeros(2, 2, dtype=torch.float32))
    b = nn.Parameter(torch.zeros(2, dtype=torch.float32))
    sums = {w: torch.tensor([[1.0, 2.0], [3.0, 4.0]])}  # b had no clipped sum: noise only
    noises = [np.array([[0.5, -0.5], [0.25, 1.0]]), np.array([0.75, -1.5])]

    noised_mean_gradients([w, b], sums, noises, expected_batch_size=4)

    assert w.grad is not None
    assert b.grad is not None
    assert w.grad.dtype == b.grad.dtype == torch.float32
    torch.testing.assert_close(w.grad, torch.tensor([[0.375, 0.375], [0.8125, 1.25]]), rtol=0, atol=0)
    torch.testing.assert_close(b.grad, torch.tensor([0.1875, -0.375]), rtol=0, atol=0)
