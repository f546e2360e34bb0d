"""A site checks that the model it was sent is the one the instruction names (issue 16).

The coordinator names, in every instruction, the SHA-256 of the global model - or under
HE of the encrypted aggregate - the instruction is built from, and logs the same digest
(``round.started``, as the subject of the previous ``aggregation.completed``, and in the
announcement of the checkpoint it asks the site to cosign with the instruction). The site
recomputes the digest from the bytes it received and refuses a mismatch; before cosigning it
checks, by an inclusion proof, that the checkpoint's announcement records the same digest
(:func:`fedinfra.site.receipts.check_logged_view`). Every site cosigns the same append-only
log, so a coordinator cannot hand different sites different models without being refused by
every site whose model is not the logged one (split views; RFC 9162 section 8.1.4).

Under HE a site that is already in sync receives no aggregate in the message; it then
checks nothing new here - its copy was checked when it was received.

Under ``secure_aggregation.mode = "secagg"`` the coordinator unmasks the mean and applies
the server step itself, so what reaches a site is the next global model, not the mean. The
site checks that model's distance from the last one it holds against what clipped means
and the job's server step (learning rate, momentum) can produce (:func:`check_secagg_model`;
derivation in :func:`secagg_mean_bound` and :func:`advance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedinfra.aggregation.digest import blob_digest, model_digest
from fedinfra.config.wire import TrainInstruction
from fedinfra.errors import VerificationError
from fedinfra.types import NDArrays

if TYPE_CHECKING:
    from fedinfra.config import JobSpec
    from fedinfra.config.secagg import SecureAggSpec
    from fedinfra.crypto.params import HEParams
    from fedinfra.site.context import SiteContext


def received_digest(*, encrypted: bool, base: NDArrays | None, aggregates: list[bytes]) -> str | None:
    """The digest of what arrived: the newest aggregate (HE), else the plaintext model."""
    if encrypted and aggregates:
        return blob_digest(aggregates[-1])
    if base is not None:
        return model_digest(base)
    return None


def check_view(instruction: TrainInstruction, received: str | None) -> None:
    """Refuse an instruction whose named model digest differs from what was received.

    Raises
    ------
    VerificationError
        If the instruction names no digest, or names another model than the one sent.
    """
    if instruction.model_digest is None:
        raise VerificationError("the instruction names no model digest; refusing to train on an unnamed model")
    if received is not None and received != instruction.model_digest:
        raise VerificationError("the model received is not the one the instruction names (digest mismatch); refused")


def check_mean_bound(mean: Any, params: HEParams, *, total_examples: int, sites: int | None = None) -> None:
    """Refuse a decrypted mean outside what the sites' clipped updates can produce.

    Under secure aggregation the coordinator cannot inspect updates, so every site clips
    before encrypting (BFV: ``|value| <= clip`` per coordinate; CKKS: ``|value| <=
    ckks_max_abs``) and checks the decrypted mean against the same bound before using it
    (issue 16; Bonawitz et al. 2017 leave input validation to the protocol around SecAgg).
    Any weighted mean of clipped values lies within that bound *up to the codec's error*,
    which is not one quantization step: a site sends ``(n_i / example_cap) * x_i`` rounded
    stochastically, so each site errs by up to ``clip / M`` *before* the division by
    ``total / example_cap`` - the mean's error is ``sites * (clip / M) * example_cap /
    total`` plus float32 rounding (:meth:`fedinfra.crypto.HEParams.mean_error_bound`). With
    every site's update at the clip (a saturated coordinate) the mean exceeds ``clip`` by up
    to that much; a tolerance of two steps refused such rounds (issue 13's ``secagg+he``
    e2e: 4 sites, 363 examples, a coordinate at 1.0000726 for clip 1).

    ``params`` are the kit's (what the codec used), ``total_examples`` the aggregate's
    decrypted example total and ``sites`` its contribution count; without it the bound
    takes ``min(max_sites, total_examples)`` sites - an upper bound, since the codec
    refuses more than ``max_sites`` contributions and every site weighs in with at least
    one example.

    Raises
    ------
    VerificationError
        If a coordinate of the mean is not finite or exceeds the bound.
    """
    spec = params.spec
    count = min(spec.max_sites, total_examples) if sites is None else sites
    magnitude = spec.ckks_max_abs if params.scheme == "ckks" else spec.clip
    bound = magnitude + params.mean_error_bound(sites=max(1, count), total_examples=max(1, total_examples))
    values = np.asarray(mean, dtype=np.float64)
    if values.size and not (np.all(np.isfinite(values)) and float(np.max(np.abs(values))) <= bound):
        raise VerificationError("the decrypted aggregate exceeds the job's clip bound; refused")


#: Float32's unit roundoff (IEEE 754 round-to-nearest): the relative error of one operation.
_U = 2.0**-24

#: The model a ``secagg`` site last received and checked, in its private run directory.
_VIEW = "secagg-view"


def secagg_mean_bound(spec: SecureAggSpec) -> float:
    """The largest ``|coordinate|`` an honest ``secagg`` mean can have.

    Each site clips its update to ``|x| <= clip`` and sends ``q = floor(w * x * M / clip + U)``
    with ``w = n / example_cap <= 1``, ``U`` uniform in [0, 1) and ``M = 2^(b-1) - 1``
    (:func:`fedinfra.crypto.secagg.codec.encode`): ``|q * clip / M - w * x| < clip / M``. The
    coordinator decodes ``sum(q) * clip / M * example_cap / total``
    (:func:`fedinfra.crypto.secagg.codec.decode`), so the mean differs from the exact
    weighted mean of the clipped updates (itself within ``clip``) by less than
    ``k * (clip / M) * example_cap / total`` for ``k`` contributions. The site learns neither
    ``k`` nor ``total``, but every contribution carries at least one example (``total >= k``),
    so the worst case is::

        bound = (clip + (clip / M) * example_cap) * (1 + 2^-23)

    the last factor for the float32 cast of the mean (a relative 2^-24, doubled). One example
    per site reaches every term, so no smaller bound holds for all honest rounds. (A
    coordinator that stated ``k`` and ``total`` could only tighten it for honest runs, never
    loosen it, so nothing on the wire is trusted for it.) The same codec under BFV, where the
    site does learn ``total``: :meth:`fedinfra.crypto.HEParams.mean_error_bound`.
    """
    from fedinfra.crypto.quantize import quant_max

    return (spec.clip + spec.clip / quant_max(spec.quant_bits) * spec.example_cap) * (1 + 2 * _U)


@dataclass(frozen=True)
class HeldView:
    """What a ``secagg`` site knows of the global model after ``steps`` server steps.

    ``weights`` is the model it received; ``velocity`` the server momentum it has inferred
    and ``radius`` how far (per coordinate) the true momentum may be from it: zero at step
    0 (the optimiser starts from ``v = 0``), float rounding after two consecutive models,
    and the unknown means' reach across steps the site did not see. Without server momentum
    both stay empty (nothing to infer); a tensor missing from them reads as zero momentum at
    step 0 and as unknown (``|v| <= B' * (1 - beta^a) / (1 - beta)``) after it.
    """

    steps: int
    weights: NDArrays
    velocity: NDArrays
    radius: NDArrays

    @classmethod
    def start(cls, weights: NDArrays) -> HeldView:
        """The model before any server step, with zero momentum."""
        return cls(0, weights, {}, {})

    def to_arrays(self) -> NDArrays:
        """The arrays :meth:`from_arrays` reads back (names prefixed, step count included)."""
        out: NDArrays = {"steps": np.array([self.steps], dtype=np.int64)}
        for prefix, part in (("model/", self.weights), ("velocity/", self.velocity), ("radius/", self.radius)):
            out.update({prefix + k: v for k, v in part.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: NDArrays) -> HeldView:
        """Inverse of :meth:`to_arrays`."""

        def part(prefix: str) -> NDArrays:
            return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

        return cls(int(arrays["steps"][0]), part("model/"), part("velocity/"), part("radius/"))


def advance(held: HeldView, new: NDArrays, *, job: JobSpec, until: int) -> HeldView:
    """Check ``new`` (the model after step ``until``) against ``held``; return the site's new view.

    The coordinator applies :class:`~fedinfra.aggregation.server_opt.ServerOptimizer`
    (FedAvgM, Hsu, Qi & Brown 2019): ``v_t = beta * v_(t-1) + m_t``, ``w_t = w_(t-1) + lr * v_t``,
    with every mean ``|m_t| <= B`` (:func:`secagg_mean_bound`). Unrolled from the held step
    ``a`` to ``b = until`` (``j = b - a`` steps)::

        w_b - w_a - lr * G * v_a = lr * sum_{t=a+1}^{b} sum_{s=a+1}^{t} beta^(t-s) * m_s
        G = sum_{i=1}^{j} beta^i,   H = sum_{i=1}^{j} (1 - beta^i) / (1 - beta)

    so with ``|v_a - v^_a| <= r_a`` the site refuses unless, per coordinate::

        |w_b - w_a - lr * G * v^_a| <= lr * G * r_a + lr * H * B' + j * 2^-22 * (|w_a| + |lr * G * v^_a| + reach)

    ``reach`` being the first two terms on the right. ``B' = B * (1 + 2^-20 * (1 + 1 / (1 - beta)))``
    covers the float32 rounding of the momentum chain (two operations a step on a velocity of at
    most ``B / (1 - beta)``, and ``beta`` held as float32); the last term the rounding of each
    ``w + lr * v`` and of ``lr`` as float32 (``2^-24`` relative, doubled). Without momentum
    (``beta = 0``) this is ``|w_b - w_a| <= j * lr * B'`` plus rounding: one clipped mean per step.
    With momentum, a site that saw the previous model knows ``v_a`` up to rounding (``v_b =
    (w_b - w_a) / lr`` after one step), so each mean is checked on its own; across steps it did
    not see, the unseen means widen the radius by ``B' * (1 - beta^j) / (1 - beta)``.
    The same step again (``j = 0``) must bring the identical model.

    Raises
    ------
    VerificationError
        If ``until`` is before the held step, the tensors are not the model's, a value is not
        finite or out of bounds (naming the tensor, never a value).
    """
    a, b = held.steps, until
    if b < a:
        raise VerificationError(f"the model is for step {b}, before step {a} the site already holds")
    if sorted(new) != sorted(held.weights):
        raise VerificationError("the model's tensors are not the job's model's; refused")
    t = job.training
    lr, beta, j = t.server_lr, t.server_momentum, b - a
    bound = secagg_mean_bound(job.secure_aggregation) * (1 + 2.0**-20 * (1 + 1 / (1 - beta)))
    g = sum(beta**i for i in range(1, j + 1))
    h = sum((1 - beta**i) / (1 - beta) for i in range(1, j + 1))
    unknown = bound * (1 - beta**a) / (1 - beta)  # |v_a| without an inferred momentum (0 at step 0)
    velocity: NDArrays = {}
    radius: NDArrays = {}
    for name in sorted(held.weights):
        ref = np.asarray(held.weights[name], dtype=np.float64)
        got = np.asarray(new[name], dtype=np.float64)
        if got.shape != ref.shape:
            raise VerificationError(f"tensor {name!r} has another shape than the job's model; refused")
        moved = got - ref
        slack = np.abs(ref)
        if g:
            v = held.velocity.get(name)
            r = held.radius.get(name, unknown)
            reach: Any = lr * g * r + lr * h * bound
            if v is not None:
                predicted = lr * g * v
                moved -= predicted
                slack += np.abs(predicted)
        else:
            reach = lr * h * bound
        slack += reach
        slack *= j * 4 * _U
        slack += reach
        np.abs(moved, out=moved)
        if not bool(np.all(moved <= slack)):  # NaN and infinity compare false: refused too
            raise VerificationError(
                f"the global model moved further than clipped secure-aggregation means allow (tensor {name!r}, "
                f"steps {a} to {b}); refused"
            )
        if not beta:
            continue
        if j == 1:  # the momentum after this step, up to the rounding of w + lr * v
            velocity[name] = (got - ref) / lr
            radius[name] = 4 * _U * (np.abs(velocity[name]) + (np.abs(ref) + np.abs(got)) / lr)
        elif j > 1:
            v = held.velocity.get(name)
            velocity[name] = beta**j * (v if v is not None else np.zeros(ref.shape))
            r_held = held.radius.get(name)
            r_held = r_held if r_held is not None else np.full(ref.shape, unknown)
            radius[name] = beta**j * r_held + bound * (1 - beta**j) / (1 - beta)
        elif name in held.velocity:
            velocity[name], radius[name] = held.velocity[name], held.radius[name]
    return HeldView(b, {k: np.asarray(v, dtype=np.float32) for k, v in new.items()}, velocity, radius)


def model_steps(instruction: TrainInstruction) -> int:
    """Server steps behind the model an instruction carries.

    A train instruction of round ``r`` carries the model after round ``r - 1``; an evaluate
    or close instruction of round ``r`` the model after round ``r`` (the coordinator sends
    ``state.weights`` after ``state.round`` steps; a round that fails to aggregate ends the
    run, so no step is ever skipped).
    """
    return instruction.round - 1 if instruction.phase == "train" else instruction.round


def check_secagg_model(ctx: SiteContext, instruction: TrainInstruction, weights: NDArrays) -> None:
    """Under ``secagg``: refuse a global model no sequence of clipped means can produce.

    The reference is the view this site last accepted in the run (kept in its private run
    directory; :func:`advance`), or - the first time it hears of the run after round 1, or
    when shown an older step than it holds - the job's initial model with zero momentum,
    built here as the coordinator builds it (:func:`fedinfra.site.tasks.job_model`, seeded
    by the job). The round-1 model is taken as the start, as under HE (that every site got
    the same one is the logged digest's job). A refusal is recorded in the site's
    ``alerts.log`` and raised as :class:`VerificationError`: the coordinator gets the
    bounded code only.

    Issue 16 deliverable 3: the coordinator cannot inspect masked updates, so sites clip
    before masking and check what comes back; Bonawitz et al. (CCS 2017) leave input and
    output validation to the protocol around SecAgg.
    """
    from fedinfra.site.receipts import record_alert

    run_id = instruction.run_id
    steps = model_steps(instruction)
    stored = ctx.home.load_weights(run_id, _VIEW)
    held = HeldView.from_arrays(stored) if stored is not None else None
    try:
        if not 0 <= steps <= ctx.job.rounds:
            raise VerificationError(f"the model is for step {steps}, outside the job's {ctx.job.rounds} rounds")
        if held is not None and held.steps <= steps:
            view = advance(held, weights, job=ctx.job, until=steps)
        elif steps > 0:
            view = advance(HeldView.start(_initial_model(ctx)), weights, job=ctx.job, until=steps)
        else:
            view = HeldView.start({k: np.asarray(v, dtype=np.float32) for k, v in weights.items()})
    except VerificationError as exc:
        raise record_alert(ctx.receipts_dir(run_id), f"run {run_id} round {instruction.round}: {exc}") from exc
    if held is None or view.steps > held.steps:
        ctx.home.save_weights(run_id, _VIEW, view.to_arrays())


def _initial_model(ctx: SiteContext) -> NDArrays:
    from fedinfra.models import get_weights
    from fedinfra.site.tasks import job_model

    model, _ = job_model(ctx.job)
    return get_weights(model)


__all__ = [
    "HeldView",
    "advance",
    "check_mean_bound",
    "check_secagg_model",
    "check_view",
    "model_steps",
    "received_digest",
    "secagg_mean_bound",
]
