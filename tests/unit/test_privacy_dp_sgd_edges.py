"""DP-SGD facade edges: each refused parameter with its message, the mode each request gets, the
loss over non-empty Poisson batches, a task's own training step, input dtypes, and layers whose
batch or running statistics would leak the data past per-sample clipping.

Statistical checks name their error rate; every run has a fixed seed, so a check that holds
holds on every run.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedinfra.errors import ConfigError
from fedinfra.privacy import dp_sgd
from fedinfra.privacy.accounting import compute_epsilon
from fedinfra.privacy.dp_sgd import (
    _install_secure_noise,
    _pick_mode,
    choose_mode,
    make_private_compatible,
    sample_rate_for,
    steps_for,
    train_dp_sgd,
)
from fedinfra.privacy.noise import secure_generator

LN3 = math.log(3.0)


def _data(n: int = 40, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (np.abs(x[:, 0] * 3).astype(np.int64) % 3)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _conv() -> nn.Module:
    """Not fused (a Conv1d), and under 90 % of its parameters in Linear layers: Opacus hooks."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 16, 3), nn.Flatten(), nn.Linear(32, 3))


def _linear_heavy_not_fused() -> nn.Module:
    """Not fused (a LayerNorm), but 97.6 % of its parameters in Linear layers: ghost clipping."""
    return nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.Linear(64, 64))


def _train(model: nn.Module, x: np.ndarray | None = None, y: np.ndarray | None = None, **kw: object) -> object:
    if x is None or y is None:
        x, y = _data()
    params: dict[str, object] = {
        "epochs": 1, "batch_size": 10, "lr": 0.2, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
        "delta": 1e-3, "accountant": "rdp", "seed": 7,
    }
    params.update(kw)
    return train_dp_sgd(model, x, y, **params)  # type: ignore[arg-type]


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


# --- sampling rate and steps -------------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "n", "q"), [(1, 1, 1.0), (1, 4, 0.25), (3, 2, 1.0)])
def test_the_sample_rate_is_batch_size_over_n_capped_at_one(batch_size: int, n: int, q: float) -> None:
    assert sample_rate_for(batch_size=batch_size, dataset_size=n) == q


def test_an_empty_training_set_is_refused_with_that_reason() -> None:
    with pytest.raises(ConfigError, match=r"^the training set is empty$"):
        sample_rate_for(batch_size=1, dataset_size=0)


def test_zero_epochs_are_refused_naming_the_count() -> None:
    with pytest.raises(ConfigError, match=r"^epochs must be >= 1 \(got 0\)$"):
        steps_for(epochs=0, sample_rate=0.5)


# --- mode ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("linear_params", "mode"), [(9, "ghost"), (8, "hooks")])
def test_ghost_clipping_from_exactly_ninety_percent_of_parameters_in_linear_layers(
    linear_params: int, mode: str
) -> None:
    model = nn.Sequential(nn.Linear(linear_params, 1, bias=False), nn.PReLU())  # PReLU: 1 parameter

    assert choose_mode(model) == mode


def test_a_model_with_one_trainable_parameter_gets_a_mode() -> None:
    assert choose_mode(nn.Linear(1, 1, bias=False)) == "ghost"


def test_a_model_without_trainable_parameters_is_refused() -> None:
    model = nn.Linear(4, 3).requires_grad_(False)

    with pytest.raises(ConfigError, match=r"^model has no trainable parameters$"):
        choose_mode(model)


@pytest.mark.parametrize(
    ("model", "mode", "own_step", "expected"),
    [
        (_mlp, "auto", False, "fused"),
        (_mlp, "fused", False, "fused"),
        (_mlp, "ghost", False, "ghost"),
        (_mlp, "hooks", False, "hooks"),
        (_mlp, "auto", True, "hooks"),
        (_mlp, "ghost", True, "hooks"),
        (_mlp, "hooks", True, "hooks"),
        (_conv, "auto", False, "hooks"),
        (_conv, "ghost", False, "ghost"),
        (_linear_heavy_not_fused, "auto", False, "ghost"),
        (_linear_heavy_not_fused, "auto", True, "hooks"),
    ],
)
def test_each_request_gets_its_mode(model: object, mode: str, own_step: bool, expected: str) -> None:
    assert _pick_mode(model(), mode, input_ndim=2, own_step=own_step) == expected  # type: ignore[operator, arg-type]


def test_fused_is_refused_for_a_task_with_its_own_step() -> None:
    msg = (
        "mode 'fused' cannot train this model: the task supplies its own training step (batch_loss); "
        "use mode 'auto', 'ghost' or 'hooks'"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
        _pick_mode(_mlp(), "fused", input_ndim=2, own_step=True)


def test_fused_is_refused_for_a_model_it_cannot_train_naming_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"^mode 'fused' cannot train this model: Unflatten .*; use mode 'auto'"):
        _pick_mode(_conv(), "fused", input_ndim=2, own_step=False)


@pytest.mark.parametrize(("model", "mode", "expected"), [(_mlp, "hooks", "hooks"), (_conv, "auto", "hooks")])
def test_the_run_reports_the_mode_it_trained_with(model: object, mode: str, expected: str) -> None:
    r = _train(model(), mode=mode)  # type: ignore[operator]

    assert r.mode == expected  # type: ignore[attr-defined]


def test_an_unknown_mode_is_refused_instead_of_silently_meaning_auto() -> None:
    with pytest.raises(ConfigError, match=r"^mode must be one of 'auto', 'fused', 'ghost', 'hooks' \(got 'gohst'\)$"):
        _train(_mlp(), mode="gohst")


# --- parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["noise_multiplier", "max_grad_norm", "lr"])
@pytest.mark.parametrize("value", [0.0, math.inf])
def test_each_positive_parameter_is_refused_at_zero_and_infinity_by_name(name: str, value: float) -> None:
    model = _mlp()
    before = _weights(model)

    with pytest.raises(ConfigError, match=f"^{name} must be a positive finite number \\(got {value!r}\\)$"):
        _train(model, **{name: value})

    assert _same(before, _weights(model))


@pytest.mark.parametrize("momentum", [1.0, -0.1])
def test_momentum_outside_zero_to_one_is_refused(momentum: float) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"momentum must be in [0, 1) (got {momentum})")):
        _train(_mlp(), momentum=momentum)


def test_momentum_is_used() -> None:
    a, b = _mlp(), _mlp()

    _train(a, momentum=0.0, epochs=2)
    _train(b, momentum=0.9, epochs=2)  # same seed: same batches and noise, only the momentum differs

    assert not _same(_weights(a), _weights(b))


def test_negative_steps_before_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^steps_before must be >= 0 \(got -1\)$"):
        _train(_mlp(), steps_before=-1)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (np.zeros(40, np.float32), np.zeros(40, np.int64)),  # one feature per example, not a row
        (np.zeros((40, 4), np.float32), np.zeros((40, 1), np.int64)),  # labels as a column
        (np.zeros((40, 4), np.float32), np.zeros(39, np.int64)),  # one label short
    ],
)
def test_features_and_labels_that_do_not_match_are_refused(x: np.ndarray, y: np.ndarray) -> None:
    msg = f"features {x.shape} and labels {y.shape} do not match"
    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
        _train(_mlp(), x, y)


def test_the_defaults_are_the_prv_accountant_and_no_earlier_steps() -> None:
    x, y = _data()

    r = train_dp_sgd(_mlp(), x, y, epochs=1, batch_size=10, lr=0.2, noise_multiplier=1.0, max_grad_norm=1.0,
                     delta=1e-3, seed=7)

    assert (r.accountant, r.total_steps, r.steps) == ("prv", 4, 4)
    assert r.epsilon == compute_epsilon(noise_multiplier=1.0, sample_rate=0.25, steps=4, delta=1e-3, accountant="prv")


def test_the_result_reports_the_parameters_of_the_run() -> None:
    r = _train(_mlp(), noise_multiplier=1.5, max_grad_norm=0.5, delta=np.float32(1e-3))

    assert r.delta == float(np.float32(1e-3))  # type: ignore[attr-defined]
    assert type(r.delta) is float  # type: ignore[attr-defined]
    assert (r.accountant, r.sample_rate, r.noise_multiplier, r.max_grad_norm) == ("rdp", 0.25, 1.5, 0.5)  # type: ignore[attr-defined]
    assert math.isfinite(r.loss)  # type: ignore[attr-defined]


# --- the loss and empty Poisson batches --------------------------------------------------------------


def _zero_linear() -> nn.Module:
    model = nn.Linear(4, 3)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model


@pytest.mark.parametrize("mode", ["fused", "ghost", "hooks"])
def test_the_loss_averages_only_the_non_empty_poisson_batches(mode: str) -> None:
    # q = 1/20 over 40 steps: a step is empty with probability 0.95^20 = 0.36, so a run without an
    # empty step has probability 0.64^40 < 1e-7 (seed 7 has several). A zero model at lr 1e-9 stays
    # within 1e-8 of zero, so every non-empty batch's cross-entropy is ln 3 to 1e-6; an empty batch
    # counted as loss 0 would pull the mean below that.
    x, y = _data(n=20)

    r = _train(_zero_linear(), x, y, batch_size=1, epochs=2, lr=1e-9, mode=mode)

    assert r.loss == pytest.approx(LN3, abs=1e-6)  # type: ignore[attr-defined]


def test_a_run_whose_every_batch_is_empty_reports_no_loss_and_still_adds_noise() -> None:
    # n = 2 at q = 1/2 for 2 steps: both batches are empty with probability 1/16; seed 5 draws that.
    model = _zero_linear()
    x, y = np.ones((2, 4), np.float32), np.array([0, 1])

    r = _train(model, x, y, batch_size=1, epochs=1, seed=5)

    assert math.isnan(r.loss)  # type: ignore[attr-defined]
    assert r.steps == 2  # type: ignore[attr-defined]
    assert float(model.weight.detach().abs().min()) > 0  # the noise of the empty steps moved every weight


def test_drawing_the_noise_ahead_for_a_large_model_changes_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    inline, ahead = _mlp(), _mlp()

    _train(inline)
    monkeypatch.setattr(dp_sgd, "PREFETCH_MIN_PARAMS", 1)  # every model counts as large
    _train(ahead)

    assert _same(_weights(inline), _weights(ahead))


# --- a task's own training step ----------------------------------------------------------------------


def test_a_task_step_replaces_the_criterion_and_trains_with_hooks() -> None:
    via_criterion, via_step = _mlp(), _mlp()

    a = _train(via_criterion, mode="hooks", criterion=nn.CrossEntropyLoss(label_smoothing=0.3))
    b = _train(via_step, batch_loss=lambda m, xb, yb: F.cross_entropy(m(xb), yb, label_smoothing=0.3))

    assert b.mode == "hooks"  # type: ignore[attr-defined]
    assert b.loss == a.loss  # type: ignore[attr-defined]
    assert _same(_weights(via_criterion), _weights(via_step))


def test_a_task_step_is_never_called_with_an_empty_batch() -> None:
    # q = 1/20 over 20 steps: at least one empty step with probability 1 - 0.64^20 > 0.9999 (seed 7: several).
    sizes: list[int] = []

    def step(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        assert xb.shape[0] > 0, "called with an empty batch"
        sizes.append(int(xb.shape[0]))
        return F.cross_entropy(m(xb), yb)

    x, y = _data(n=20)
    r = _train(_zero_linear(), x, y, batch_size=1, batch_loss=step)

    assert 0 < len(sizes) < r.steps  # type: ignore[attr-defined]


def test_a_warning_from_the_task_step_reaches_the_caller() -> None:
    def step(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        warnings.warn("labels look unbalanced", UserWarning, stacklevel=2)
        return F.cross_entropy(m(xb), yb)

    with pytest.warns(UserWarning, match="labels look unbalanced"):
        _train(_mlp(), batch_loss=step)


def test_a_criterion_that_sums_over_the_batch_is_made_to_average() -> None:
    mean, summed = _mlp(), _mlp()

    a = _train(mean, mode="hooks", criterion=nn.CrossEntropyLoss(reduction="mean"))
    b = _train(summed, mode="hooks", criterion=nn.CrossEntropyLoss(reduction="sum"))

    assert b.loss == a.loss  # type: ignore[attr-defined]
    assert _same(_weights(mean), _weights(summed))


# --- inputs ----------------------------------------------------------------------------------------


def test_float64_features_and_int32_labels_train_as_float32_and_int64() -> None:
    x, y = _data()
    a, b = _mlp(), _mlp()

    _train(a, x, y)
    _train(b, x.astype(np.float64), y.astype(np.int32))

    assert _same(_weights(a), _weights(b))


def test_float_targets_stay_floats() -> None:
    # w . x with squared error: at w = 0 example i's gradient is -2 y x_i = -0.5 e_1 (norm 0.5 < C = 1,
    # not clipped); one step at q = 1 moves w_1 by +0.5 lr, plus noise of std sigma C / n = 0.005.
    # Targets cast to integers (0) would leave w_1 at noise only: 100 standard deviations away.
    n = 200
    model = nn.Linear(4, 1, bias=False)
    nn.init.zeros_(model.weight)
    x = np.zeros((n, 4), np.float32)
    x[:, 0] = 1.0
    y = np.full(n, 0.25, np.float32)

    _train(model, x, y, batch_size=n, lr=1.0, criterion=nn.MSELoss(), output=lambda raw: raw.squeeze(-1))

    assert float(model.weight.detach()[0, 0]) == pytest.approx(0.5, abs=6 * 0.005)


def test_a_batch_of_one_gets_noise_of_std_sigma_c() -> None:
    # One example (q = 1, expected batch 1) with gradient 0: every coordinate of the step is noise
    # of std sigma * C / 1 = 2. The sample std of 2000 draws is within 10 % of it with probability
    # > 0.99999 (relative standard error 1/sqrt(4000) = 1.6 %); a batch counted as 2 would give 1.
    model = nn.Linear(2000, 1, bias=False)
    nn.init.zeros_(model.weight)
    x = np.zeros((1, 2000), np.float32)
    y = np.zeros(1, np.float32)

    _train(model, x, y, batch_size=1, lr=1.0, noise_multiplier=2.0, max_grad_norm=1.0, delta=0.5,
           criterion=nn.MSELoss(), output=lambda raw: raw.squeeze(-1))

    assert float(model.weight.detach().double().std()) == pytest.approx(2.0, rel=0.10)


# --- layers Opacus cannot make private, and batch statistics ----------------------------------------


def test_a_model_in_eval_mode_is_refused_with_opacus_reason() -> None:
    model = _mlp().eval()

    msg = "model has layers DP-SGD does not support: Model needs to be in training mode; replace them"
    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
        make_private_compatible(model)


def test_a_layer_opacus_fails_to_convert_is_refused_with_its_error() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4, proj_size=2))

    msg = "model cannot be made DP-compatible by Opacus: Error(s) in loading state_dict"
    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}"):
        make_private_compatible(model)


def _frozen_batchnorm() -> nn.Module:
    return nn.BatchNorm1d(8).requires_grad_(False)


@pytest.mark.parametrize("norm", [lambda: nn.BatchNorm1d(8, affine=False), _frozen_batchnorm])
def test_a_batchnorm_without_trainable_parameters_is_refused(norm: object) -> None:
    # Opacus' validator skips layers without trainable parameters, yet in training mode this one
    # normalises each example with its batch's statistics and keeps running means of the data.
    model = nn.Sequential(nn.Linear(4, 8), norm(), nn.ReLU(), nn.Linear(8, 3))  # type: ignore[operator]
    before = _weights(model)

    with pytest.raises(ConfigError, match=r"^model has layers DP-SGD does not support: 1: BatchNorm1d "):
        make_private_compatible(model)
    with pytest.raises(ConfigError):
        _train(model)

    assert _same(before, _weights(model))
    assert int(model[1].num_batches_tracked) == 0  # type: ignore[index]


def test_an_instancenorm_keeping_running_statistics_is_converted_and_training_it_unconverted_is_refused() -> None:
    model = nn.Sequential(nn.Unflatten(1, (2, 2)), nn.InstanceNorm1d(2, affine=True, track_running_stats=True),
                          nn.Flatten(), nn.Linear(4, 3))

    fixed, changes = make_private_compatible(model)

    assert changes == ("1: InstanceNorm1d with running stats -> InstanceNorm1d",)
    assert not fixed[1].track_running_stats  # type: ignore[index]
    with pytest.raises(ConfigError, match="make_private_compatible"):
        _train(model)


def test_training_an_unconverted_model_names_the_fix() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    msg = "model has layers DP-SGD cannot train (e.g. BatchNorm); call make_private_compatible first"

    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
        _train(model)


# --- the secure noise hook ---------------------------------------------------------------------------


def test_the_same_clipped_sum_is_never_noised_twice() -> None:
    # Opacus marks a clipped sum once it is noised; releasing it again with fresh noise would
    # average the noise away (Opacus: "no gradient can be used twice").
    from opacus.optimizers import DPOptimizer

    param = nn.Parameter(torch.zeros(10))
    opt = DPOptimizer(torch.optim.SGD([param], lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=1)
    _install_secure_noise(opt, secure_generator(seed=3))
    param.summed_grad = torch.zeros(10)  # type: ignore[attr-defined]
    opt.add_noise()  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match="zero_grad"):
        opt.add_noise()  # type: ignore[attr-defined]


class _AlwaysMean(nn.Module):
    """A loss with a ``reduction`` attribute it ignores: one number per batch, never one per example."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)


def test_mode_fused_trains_on_the_fused_path_which_needs_one_loss_per_example() -> None:
    # Opacus' hooks differentiate the batch mean and would train with this loss; the fused path
    # needs per-example losses and refuses it, so the refusal shows which path trained.
    with pytest.raises(ConfigError, match=r"^criterion _AlwaysMean with reduction='none' returned shape \(\), not one"):
        _train(_mlp(), mode="fused", criterion=_AlwaysMean())
    assert _train(_mlp(), mode="hooks", criterion=_AlwaysMean()).mode == "hooks"  # type: ignore[attr-defined]
