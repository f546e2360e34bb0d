"""Fused per-sample clipping for DP-SGD on Linear networks: no Opacus, no per-sample gradients.

For a Linear layer ``z = a W^T + b`` applied to one example (a row), the gradient of that
example's loss is ``dL/dW = b_i^T a_i`` with ``b_i = dL/dz_i``: an outer product, so its
Frobenius norm is ``||a_i|| ||b_i||`` (Goodfellow 2015, "Efficient Per-Example Gradient
Computations", arXiv:1510.01799). The per-example gradient norm of a whole network of such
layers is then

    ||g_i||^2 = sum over layers of ||a_i||^2 ||b_i||^2  (+ ||b_i||^2 for a bias),

computed from one forward pass (the inputs ``a`` of every Linear layer) and one backward
pass (the gradients ``b`` at their outputs) - the "ghost norm" of Li et al. 2022, "Large
Language Models Can Be Strong Differentially Private Learners", and Bu et al. 2023,
"Differentially Private Optimization on Large Model at Small Cost" (book-keeping: the
clipped sum is taken from the same ``a`` and ``b``, so no second backward pass is needed).
With the clip factors ``c_i`` the clipped *sum* of per-example gradients of a layer is one
matrix product, ``(c * b)^T a`` (and ``sum_i c_i b_i`` for its bias): the cost of one
non-private backward pass plus two row norms per layer, and no ``B x d_out x d_in`` tensor.

Why the result is the DP-SGD step Opacus takes (Abadi et al. 2016, Alg. 1), bit for bit up
to float rounding:

* The per-example loss is the criterion with ``reduction="none"`` averaged over any
  non-batch dimensions - the loss Opacus' ghost clipping differentiates, and what Opacus'
  hooks obtain by multiplying the gradient of the batch-mean loss by the batch size.
* ``c_i = min(1, C / (||g_i|| + 1e-6))``, the formula of Opacus 1.6's
  ``DPOptimizer.clip_and_accumulate`` and ``get_clipping_coef``; every example's
  contribution to the sum has norm ``<= C``, which is all the sensitivity analysis uses.
* Noise N(0, (z C)^2) is drawn per parameter, in the optimizer's parameter order, right
  after the step's Poisson mask, from the same :func:`fedinfra.privacy.noise.secure_generator`
  with :func:`fedinfra.privacy.noise.gaussian` in float64, added in float64 and cast once -
  the same draws in the same order as the Opacus path's ``_install_secure_noise``, so one
  seed gives the same masks and the same noise in both paths. For large models a worker
  thread draws them one step ahead (:func:`prefetched`; they do not depend on the data), from
  the same generator in the same order, so not one value changes.
* The noised sum is divided by the *expected* batch size ``round(q n)`` (Opacus'
  ``expected_batch_size`` with ``loss_reduction="mean"``), not the realised one, which
  would leak the batch size.

Sampling, the number of steps and the accounting are the caller's
(:func:`fedinfra.privacy.dp_sgd.train_dp_sgd`) and unchanged, so the guarantee is too.

Only models made of ``nn.Linear`` layers (with or without bias) and parameter-free
elementwise activations, ``nn.Flatten`` and ``nn.Identity`` in an ``nn.Sequential`` (nested
Sequentials are flattened) qualify; the input of every Linear layer must be one row per
example. Anything else - convolutions, normalisation, dropout, embeddings, custom modules -
stays on Opacus.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedinfra.privacy.noise import gaussian

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import torch
    from torch import nn

#: Opacus 1.6 adds this to the norm before dividing (``clip_and_accumulate``, ``get_clipping_coef``).
OPACUS_NORM_EPS = 1e-6

#: Parameter-free, elementwise (per-example) modules the fused path passes through.
_PASS_THROUGH = (
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid",
    "Hardtanh", "Hardsigmoid", "Hardswish", "Softplus", "Softsign", "Tanhshrink", "LogSigmoid", "Identity",
)


@dataclass(frozen=True)
class FusedPlan:
    """The layers of a qualifying model in call order (nested Sequentials flattened), and its Linear layers."""

    layers: tuple[nn.Module, ...]
    linears: tuple[nn.Linear, ...]


def _flatten(model: nn.Module) -> list[nn.Module]:
    from torch import nn as tnn

    if isinstance(model, tnn.Sequential):
        return [leaf for child in model for leaf in _flatten(child)]
    return [model]


def unsupported_layer(model: nn.Module, input_ndim: int) -> str | None:
    """Why ``model`` cannot take the fused path (naming the first offending layer), or None if it can.

    Types are matched exactly (a subclass may override ``forward``), and a module used twice
    is refused: its per-example gradient would be a sum of outer products, whose norm the
    formula above does not give.
    """
    from torch import nn as tnn

    pass_through = tuple(getattr(tnn, name) for name in _PASS_THROUGH)
    rows = input_ndim == 2
    linears = 0
    seen: set[int] = set()
    for layer in _flatten(model):
        name = type(layer).__name__
        if id(layer) in seen and any(True for _ in layer.parameters()):
            return f"{name} is used twice"
        seen.add(id(layer))
        if type(layer) is tnn.Linear:
            if not rows:
                return "a Linear layer receives more than one row per example; add nn.Flatten() before it"
            linears += 1
        elif type(layer) is tnn.Flatten:
            if layer.start_dim != 1 or layer.end_dim != -1:
                return f"Flatten(start_dim={layer.start_dim}, end_dim={layer.end_dim}) does not flatten to rows"
            rows = True
        elif type(layer) not in pass_through:
            return f"{name} is not a Linear layer or a parameter-free activation"
        elif any(True for _ in layer.parameters()) or any(True for _ in layer.buffers()):
            return f"{name} has parameters or buffers"
    if linears == 0:
        return "the model has no Linear layer"
    return None


def plan_for(model: nn.Module) -> FusedPlan:
    """The fused plan of a model :func:`unsupported_layer` accepted."""
    from torch import nn as tnn

    layers = tuple(_flatten(model))
    return FusedPlan(layers=layers, linears=tuple(m for m in layers if isinstance(m, tnn.Linear)))


def clipped_grad_sums(
    plan: FusedPlan,
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    max_grad_norm: float,
    criterion: nn.Module,
    output: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[dict[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Sum over the batch of the per-example gradients, each clipped to ``max_grad_norm``.

    Returns the clipped sum of every trainable parameter and the per-example losses. One
    forward pass records every Linear layer's input ``a``; one backward pass (to the layer
    outputs only, so no weight gradient is formed) gives ``b``. See the module docstring.
    """
    import torch
    import torch.nn.functional as F

    acts: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    h = xb
    with torch.enable_grad():
        for layer in plan.layers:
            if isinstance(layer, torch.nn.Linear):
                acts.append(h.detach())
                bias = None if layer.bias is None else layer.bias.detach()
                h = F.linear(h, layer.weight.detach(), bias)
                if not h.requires_grad:
                    h.requires_grad_(True)
                outs.append(h)
            else:
                h = layer(h)
        per_example = _per_example_loss(criterion, output(h), yb)
        backs = torch.autograd.grad(per_example.sum(), outs)
    sq: torch.Tensor | float = 0.0
    for layer, a, b in zip(plan.linears, acts, backs, strict=True):
        bb = b.square().sum(1)
        if layer.weight.requires_grad:
            aa = a.square().sum(1)
            if layer.bias is not None and layer.bias.requires_grad:
                aa += 1.0  # ||a||^2 ||b||^2 + ||b||^2
            sq = sq + aa * bb
        elif layer.bias is not None and layer.bias.requires_grad:
            sq = sq + bb
    factor = (max_grad_norm / (torch.as_tensor(sq).sqrt() + OPACUS_NORM_EPS)).clamp(max=1.0).unsqueeze(1)
    sums: dict[torch.Tensor, torch.Tensor] = {}
    for layer, a, b in zip(plan.linears, acts, backs, strict=True):
        cb = b * factor
        if layer.weight.requires_grad:
            sums[layer.weight] = cb.t().mm(a)
        if layer.bias is not None and layer.bias.requires_grad:
            sums[layer.bias] = cb.sum(0)
    return sums, per_example.detach()


def _per_example_loss(criterion: nn.Module, out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """The criterion with ``reduction="none"``, averaged over non-batch dimensions (Opacus' per-sample loss)."""
    from fedinfra.errors import ConfigError

    old = getattr(criterion, "reduction", "mean")
    setattr(criterion, "reduction", "none")  # noqa: B010 - a loss module attribute torch does not type
    try:
        loss: torch.Tensor = criterion(out, yb)
    finally:
        setattr(criterion, "reduction", old)  # noqa: B010
    if loss.dim() == 0 or loss.shape[0] != out.shape[0]:
        raise ConfigError(
            f"criterion {type(criterion).__name__} with reduction='none' returned shape {tuple(loss.shape)}, "
            f"not one loss per example ({out.shape[0]}); give it a working reduction attribute"
        )
    return loss.reshape(loss.shape[0], -1).mean(1) if loss.dim() > 1 else loss


#: One step's randomness: the Poisson-sampled rows, and the float64 noise of every parameter.
Draw = tuple["npt.NDArray[np.intp]", list["npt.NDArray[np.float64]"]]


def draws(
    rng: np.random.Generator, *, n: int, q: float, steps: int, std: float, shapes: list[tuple[int, ...]]
) -> Iterator[Draw]:
    """Every step's Poisson sample and noise, in the order the Opacus path draws them.

    Per step: one uniform per example (included when ``< q``), then
    :func:`fedinfra.privacy.noise.gaussian` for each parameter in optimizer order. None of it
    depends on the data, so it may be produced ahead of the step that uses it
    (:func:`prefetched`) without changing a single value.
    """
    for _ in range(steps):
        rows = np.flatnonzero(rng.random(n) < q)
        yield rows, [gaussian(rng, std, shape) for shape in shapes]


def prefetched(items: Iterator[Draw], depth: int = 2) -> Iterator[Draw]:
    """``items``, produced by a worker thread up to ``depth`` ahead of the consumer.

    numpy releases the GIL while it fills arrays with normal draws, so the noise of the next
    step is drawn on the second core while torch computes this step's clipped sum. The
    worker is the only user of the generator and keeps its order; an error in it is raised
    here, and the worker stops when the consumer does.
    """
    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))

    worker = threading.Thread(target=work, name="dp-sgd-noise", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join()


def noised_mean_gradients(
    params: list[nn.Parameter],
    sums: dict[torch.Tensor, torch.Tensor],
    noises: list[npt.NDArray[np.float64]],
    *,
    expected_batch_size: int,
) -> None:
    """Set ``p.grad = (sum + noise) / expected_batch_size`` for every parameter, in order.

    ``noises`` come from :func:`draws` (:func:`fedinfra.privacy.noise.gaussian`, float64); the
    clipped sum is widened exactly to float64, added, and the result cast once to the
    parameter's dtype; then the division, in that dtype - what Opacus' ``add_noise`` under
    :func:`fedinfra.privacy.dp_sgd._install_secure_noise` followed by ``scale_grad`` does.
    """
    import torch

    for p, noise in zip(params, noises, strict=True):
        summed = sums.get(p)
        if summed is not None:
            noise += summed.detach().numpy()
        grad = torch.from_numpy(noise).to(p.dtype)
        grad /= expected_batch_size
        p.grad = grad
