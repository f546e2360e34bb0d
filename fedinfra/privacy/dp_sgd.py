"""Sample-level DP at a site: DP-SGD (Abadi et al. 2016), fused for Linear networks, else Opacus.

What one call does, and why:

* **Poisson sampling** - every step includes each example independently with probability
  ``q = batch_size / n``; the privacy analysis of the sampled Gaussian mechanism (Mironov,
  Talwar & Zhang 2019) assumes exactly this, not shuffled fixed-size batches. A step with
  an empty batch still releases noise and is still counted.
* **Per-sample clipping + Gaussian noise.** A model made only of Linear layers and
  parameter-free activations takes the *fused* path (:mod:`fedinfra.privacy.dp_sgd_fused`):
  per-example gradient norms from layer inputs and output gradients (Goodfellow 2015), the
  clipped sum as one matrix product per layer, no Opacus and no per-sample gradients; its
  clip factors, noise draws and scaling are Opacus' (that module says why, line by line),
  so the mechanism and its accounting are unchanged. Every other model goes through Opacus'
  ``DPOptimizer``, with a per-sample mode chosen for the model: *ghost clipping* (Li et
  al. 2022, "Large Language Models Can Be Strong Differentially Private Learners"; Bu et
  al. 2023) when nearly all parameters sit in Linear/Embedding layers - it gets per-sample
  gradient *norms* without materialising per-sample gradients, so memory stays near
  non-private training - and Opacus *hooks* otherwise. The mode is returned so it can be audited.
* **BatchNorm** mixes examples of a batch, which breaks per-sample privacy; Opacus'
  ``ModuleValidator.fix`` replaces it with GroupNorm and the change is returned. Layers
  Opacus cannot make private raise :class:`ConfigError` before any step runs, and so does a
  BatchNorm without trainable parameters or a norm keeping running statistics of the data,
  which Opacus' validator does not look at.
* **Accounting composes across rounds**: the caller passes the steps already taken in this
  run; the returned epsilon covers all of them (see :mod:`fedinfra.privacy.accounting`).
* **Randomness**: Poisson sampling and the Gaussian noise both come from one
  :func:`fedinfra.privacy.noise.secure_generator` - numpy's Philox-4x64 counter-based
  generator keyed with 256 bits from the OS CSPRNG (:mod:`secrets`) - not from torch's
  Mersenne Twister (whose state an observer of 624 outputs can reconstruct). The noise is
  drawn and added in float64 (four draws summed and halved, Holohan & Braghin 2021, §5.1,
  against the floating-point attack of Mironov 2012) and the noised gradient is then cast
  to the parameter's dtype. Opacus' ``secure_mode`` would need the unmaintained
  ``torchcsprng`` (no build for this torch), so the optimizer's ``add_noise`` is replaced
  by :func:`_install_secure_noise`. Tests pass a seed and get bit-identical runs; the key
  is never logged or returned.

The reported loss is the mean training loss over the sampled batches; it is *not*
differentially private and stays at the site (:mod:`fedinfra.privacy.release`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from fedinfra.errors import ConfigError
from fedinfra.privacy.accounting import check_accountant, check_delta, compute_epsilon
from fedinfra.privacy.noise import gaussian, secure_generator

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

Mode = Literal["fused", "ghost", "hooks"]

_MODES = ("auto", "fused", "ghost", "hooks")

#: Share of trainable parameters in Linear/Embedding layers above which ghost clipping is used.
GHOST_PARAM_SHARE = 0.9

#: Trainable parameters from which the fused path draws the next step's noise in a worker thread.
PREFETCH_MIN_PARAMS = 1 << 16


@dataclass(frozen=True)
class DPSGDResult:
    """What one DP-SGD call did (everything here may be audited; no seed, no data)."""

    loss: float
    steps: int
    total_steps: int
    mode: Mode
    epsilon: float
    delta: float
    accountant: str
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    model_changes: tuple[str, ...] = field(default_factory=tuple)


def _install_secure_noise(opt: Any, rng: np.random.Generator) -> None:
    """Make ``opt`` (an Opacus DP optimizer) draw its noise from ``rng`` in float64.

    Same contract as Opacus' ``DPOptimizer.add_noise`` (clipped sum in ``summed_grad``,
    noised result in ``grad``), with N(0, (z C)^2) from :func:`fedinfra.privacy.noise.gaussian`.
    """
    import torch
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    def add_noise() -> None:
        z = float(getattr(opt, "_adjusted_noise_multiplier", opt.noise_multiplier))
        std = z * float(opt.max_grad_norm)
        for p in opt.params:
            _check_processed_flag(p.summed_grad)
            summed = p.summed_grad.detach().to(torch.float64)
            noise = torch.from_numpy(gaussian(rng, std, tuple(summed.shape)))
            p.grad = (summed + noise).to(p.summed_grad.dtype).view_as(p)
            _mark_as_processed(p.summed_grad)

    setattr(opt, "add_noise", add_noise)  # noqa: B010 - replace the bound method on this instance


def _batch_statistics(model: nn.Module) -> str | None:
    """The first layer that uses statistics of the batch or of the data, trainable or not; else None.

    BatchNorm in training mode normalises each example with the statistics of its batch, so
    one example's gradient depends on the others and per-sample clipping no longer bounds its
    influence; BatchNorm and InstanceNorm with ``track_running_stats`` also keep running means
    of the private data in buffers that are released with the model, without noise. Opacus'
    validator only looks at layers with trainable parameters, so it passes a BatchNorm with
    ``affine=False`` or frozen parameters, and its fix leaves such a layer in place.
    """
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.instancenorm import _InstanceNorm

    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) or (isinstance(module, _InstanceNorm) and module.track_running_stats):
            return f"{name}: {type(module).__name__} (statistics of the batch or running statistics of the data)"
    return None


def _describe(module: nn.Module) -> str:
    """A layer's type, and whether it keeps running statistics (which Opacus' fix turns off)."""
    from torch.nn.modules.instancenorm import _InstanceNorm

    name = type(module).__name__
    return f"{name} with running stats" if isinstance(module, _InstanceNorm) and module.track_running_stats else name


def make_private_compatible(model: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """Return a model Opacus can train privately, and the list of replaced layers.

    A model that is already compatible is returned as is (same object, no changes).
    BatchNorm layers are replaced by GroupNorm via ``ModuleValidator.fix`` (which clones
    the model), and InstanceNorm stops tracking running statistics. Anything still invalid,
    including a BatchNorm without trainable parameters (:func:`_batch_statistics`), raises
    :class:`ConfigError`.
    """
    from opacus.validators import ModuleValidator

    if ModuleValidator.is_valid(model) and _batch_statistics(model) is None:
        return model, ()
    before = {name: _describe(m) for name, m in model.named_modules()}
    try:
        fixed = ModuleValidator.fix(model)
    except Exception as exc:
        raise ConfigError(f"model cannot be made DP-compatible by Opacus: {exc}") from exc
    errors = [str(e) for e in ModuleValidator.validate(fixed, strict=False)]
    if (left := _batch_statistics(fixed)) is not None:
        errors.append(left)
    if errors:
        raise ConfigError(f"model has layers DP-SGD does not support: {errors[0]}; replace them")
    after = {name: _describe(m) for name, m in fixed.named_modules()}
    changes = tuple(
        f"{name}: {before[name]} -> {after[name]}"
        for name in before
        if name in after and before[name] != after[name]
    )
    return fixed, changes


def choose_mode(model: nn.Module) -> Mode:
    """``ghost`` when >= 90 % of trainable parameters are in Linear/Embedding layers, else ``hooks``."""
    from torch import nn as tnn

    total = 0
    fast = 0
    for module in model.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        total += own
        if isinstance(module, tnn.Linear | tnn.Embedding):
            fast += own
    if total == 0:
        raise ConfigError("model has no trainable parameters")
    return "ghost" if fast / total >= GHOST_PARAM_SHARE else "hooks"


def sample_rate_for(*, batch_size: int, dataset_size: int) -> float:
    """Poisson sampling rate ``q = batch_size / n`` (capped at 1)."""
    if dataset_size < 1:
        raise ConfigError("the training set is empty")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    return min(1.0, batch_size / dataset_size)


def steps_for(*, epochs: int, sample_rate: float) -> int:
    """Steps of ``epochs`` epochs at ``sample_rate``: ``epochs * round(1/q)``. Known before training."""
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1 (got {epochs})")
    return epochs * max(1, round(1.0 / sample_rate))


def _check(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a positive finite number (got {value!r})")
    return v


def _pick_mode(model: nn.Module, mode: Mode | Literal["auto"], *, input_ndim: int, own_step: bool) -> Mode:
    """``fused`` whenever the model qualifies and the task has no own step, else Opacus' mode.

    ``auto`` falls back to :func:`choose_mode`; an explicit ``fused`` that cannot be honoured
    raises :class:`ConfigError` naming the reason; ``ghost``/``hooks`` always use Opacus.
    """
    from fedinfra.privacy.dp_sgd_fused import unsupported_layer

    opacus_mode = choose_mode(model)  # also refuses a model without trainable parameters
    if mode == "ghost" or mode == "hooks":
        return "hooks" if own_step else mode
    why = "the task supplies its own training step (batch_loss)" if own_step else unsupported_layer(model, input_ndim)
    if why is None:
        return "fused"
    if mode == "fused":
        raise ConfigError(f"mode 'fused' cannot train this model: {why}; use mode 'auto', 'ghost' or 'hooks'")
    return "hooks" if own_step else opacus_mode


@dataclass(frozen=True)
class _Loop:
    """What every DP-SGD loop shares: data, sampling, noise and the loss."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[Any]
    q: float
    steps: int
    rng: np.random.Generator
    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int
    criterion: nn.Module
    output: Callable[[torch.Tensor], torch.Tensor]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One Poisson-sampled batch: each example independently with probability q.

        The rows are gathered by numpy (torch's boolean-mask indexing took ~40x longer here).
        """
        import torch

        rows = np.flatnonzero(self.rng.random(self.x.shape[0]) < self.q)
        return torch.from_numpy(self.x[rows]), torch.from_numpy(self.y[rows])


def _train_fused(model: nn.Module, base_opt: torch.optim.Optimizer, loop: _Loop) -> list[float]:
    """DP-SGD steps with fused per-sample clipping (:mod:`fedinfra.privacy.dp_sgd_fused`), no Opacus.

    The masks and the noise (data-independent) are drawn by a worker thread one step ahead
    when the model is large enough for the noise to cost more than a thread hand-off.
    """
    import torch

    from fedinfra.privacy.dp_sgd_fused import clipped_grad_sums, draws, noised_mean_gradients, plan_for, prefetched

    plan = plan_for(model)
    params = [p for group in base_opt.param_groups for p in group["params"] if p.requires_grad]
    source = draws(
        loop.rng, n=loop.x.shape[0], q=loop.q, steps=loop.steps, std=loop.noise_multiplier * loop.max_grad_norm,
        shapes=[tuple(p.shape) for p in params],
    )
    if sum(p.numel() for p in params) >= PREFETCH_MIN_PARAMS:
        source = prefetched(source)
    losses: list[float] = []
    model.train()
    for rows, noises in source:
        base_opt.zero_grad(set_to_none=True)
        sums: dict[torch.Tensor, torch.Tensor] = {}
        if rows.size:
            xb, yb = torch.from_numpy(loop.x[rows]), torch.from_numpy(loop.y[rows])
            sums, per_example = clipped_grad_sums(
                plan, xb, yb, max_grad_norm=loop.max_grad_norm, criterion=loop.criterion, output=loop.output
            )
            losses.append(float(per_example.mean()))
        noised_mean_gradients(params, sums, noises, expected_batch_size=loop.expected_batch_size)
        base_opt.step()
    return losses


def _train_opacus(
    model: nn.Module,
    base_opt: torch.optim.Optimizer,
    loop: _Loop,
    chosen: Mode,
    batch_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None,
) -> list[float]:
    """DP-SGD steps through Opacus (ghost clipping or per-sample-gradient hooks)."""
    from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    common = {
        "noise_multiplier": loop.noise_multiplier,
        "max_grad_norm": loop.max_grad_norm,
        "expected_batch_size": loop.expected_batch_size,
        "loss_reduction": "mean",
    }
    criterion = loop.criterion
    gsm: GradSampleModule | GradSampleModuleFastGradientClipping
    if chosen == "ghost":
        gsm = GradSampleModuleFastGradientClipping(
            model, batch_first=True, loss_reduction="mean", max_grad_norm=loop.max_grad_norm, use_ghost_clipping=True
        )
        opt = DPOptimizerFastGradientClipping(base_opt, **common)
        dp_loss = DPLossFastGradientClipping(gsm, opt, criterion, "mean")
    else:
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(base_opt, **common)
    _install_secure_noise(opt, loop.rng)
    losses: list[float] = []
    with warnings.catch_warnings():
        # torch notes that the full backward hooks Opacus registers fire on module outputs
        # because inputs do not require grad: expected for a first layer, not actionable.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        try:
            gsm.train()
            for _ in range(loop.steps):
                xb, yb = loop.batch()
                opt.zero_grad(set_to_none=True)
                loss: Any
                if batch_loss is not None and xb.shape[0]:
                    loss = batch_loss(gsm, xb, yb)
                else:
                    out = loop.output(gsm(xb))
                    if chosen == "ghost":
                        loss = dp_loss(out, yb)
                    elif xb.shape[0]:
                        loss = criterion(out, yb)
                    else:  # an empty Poisson batch: no data, but the step still adds noise
                        loss = out.sum() * 0.0
                loss.backward()
                opt.step()
                if xb.shape[0]:
                    losses.append(float(loss.detach()))
        finally:
            gsm._close()
    return losses


def train_dp_sgd(
    model: nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64] | npt.NDArray[np.float32],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    steps_before: int = 0,
    accountant: str = "prv",
    momentum: float = 0.0,
    mode: Mode | Literal["auto"] = "auto",
    seed: int | None = None,
    criterion: nn.Module | None = None,
    output: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> DPSGDResult:
    """Train ``model`` in place with DP-SGD and return loss, steps, mode and run epsilon.

    ``model`` must already be DP-compatible (:func:`make_private_compatible`): converting
    here would silently train a copy. Every parameter is validated before the first step.
    ``x`` holds one example per row (any trailing shape: table rows, images); ``y`` class
    indices (int64) or regression targets (float32). ``criterion`` is the loss (default
    cross-entropy; it needs a ``reduction`` attribute), ``output`` maps the model's raw
    output to what it takes; ``batch_loss(model, x, y)`` replaces both (a task's own
    training step) and then per-sample gradients come from hooks, since ghost clipping
    and the fused path need the ``criterion(output, y)`` form.

    ``mode="auto"`` picks ``fused`` when the model qualifies
    (:func:`fedinfra.privacy.dp_sgd_fused.unsupported_layer`), else :func:`choose_mode`;
    ``ghost`` and ``hooks`` force Opacus, ``fused`` refuses a model that does not qualify.
    """
    import torch

    if mode not in _MODES:
        raise ConfigError(f"mode must be one of {', '.join(map(repr, _MODES))} (got {mode!r})")
    sigma = _check("noise_multiplier", noise_multiplier)
    clip = _check("max_grad_norm", max_grad_norm)
    step_lr = _check("lr", lr)
    check_accountant(accountant)
    if not 0 <= momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1) (got {momentum})")
    if steps_before < 0:
        raise ConfigError(f"steps_before must be >= 0 (got {steps_before})")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"features {x.shape} and labels {y.shape} do not match")
    n = int(x.shape[0])
    check_delta(delta, dataset_size=n)
    q = sample_rate_for(batch_size=batch_size, dataset_size=n)
    steps = steps_for(epochs=epochs, sample_rate=q)
    fixed, _ = make_private_compatible(model)
    if fixed is not model:
        raise ConfigError("model has layers DP-SGD cannot train (e.g. BatchNorm); call make_private_compatible first")
    chosen = _pick_mode(model, mode, input_ndim=x.ndim, own_step=batch_loss is not None)

    rng = secure_generator(seed)
    xs = np.ascontiguousarray(x, dtype=np.float32)
    ys = np.ascontiguousarray(y, dtype=np.float32 if y.dtype.kind == "f" else np.int64)
    base_opt = torch.optim.SGD(model.parameters(), lr=step_lr, momentum=momentum)
    if criterion is None:
        criterion = torch.nn.CrossEntropyLoss(reduction="mean")
    setattr(criterion, "reduction", "mean")  # noqa: B010 - a loss module attribute torch does not type
    loop = _Loop(
        x=xs, y=ys, q=q, steps=steps, rng=rng, noise_multiplier=sigma, max_grad_norm=clip,
        expected_batch_size=max(1, round(q * n)), criterion=criterion, output=output or (lambda raw: raw),
    )
    if chosen == "fused":
        losses = _train_fused(model, base_opt, loop)
    else:
        losses = _train_opacus(model, base_opt, loop, chosen, batch_loss)
    total = steps_before + steps
    eps = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=total, delta=delta, accountant=accountant)
    return DPSGDResult(
        loss=float(np.mean(losses)) if losses else math.nan,
        steps=steps,
        total_steps=total,
        mode=chosen,
        epsilon=eps,
        delta=float(delta),
        accountant=accountant,
        sample_rate=q,
        noise_multiplier=sigma,
        max_grad_norm=clip,
    )
