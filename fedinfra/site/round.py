"""One training round at a site.

The steps between receiving the global model and replying, in the order that keeps the
site safe: verify receipts -> own policy check -> reserve the privacy spend (write-ahead)
-> train -> protect the update (clip/noise/encrypt) -> reply. Any failing step refuses the
round and nothing leaves the site.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedinfra.config.wire import TrainInstruction, TrainReport
from fedinfra.errors import PolicyViolation
from fedinfra.models import get_weights, set_weights
from fedinfra.privacy.release import released_count, released_loss
from fedinfra.site import replay
from fedinfra.site.context import SiteContext
from fedinfra.site.receipts import verify_and_store, witness
from fedinfra.site.tasks import job_model, job_task, withhold_buffers
from fedinfra.site.user_dp import protect_update, reserve_spend
from fedinfra.task.training import train_plain
from fedinfra.types import NDArrays

if TYPE_CHECKING:
    from fedinfra.task import Task


@dataclass
class RoundOutput:
    """What a site sends back: a plaintext update or a ciphertext, plus its report."""

    report: TrainReport
    update: NDArrays | None = None
    ciphertext: bytes | None = None
    compressed: bytes | None = None


def check_job(ctx: SiteContext, *, tls: bool | None) -> None:
    """Run the site's own policy check; raise :class:`PolicyViolation` when it blocks."""
    evaluation = ctx.preflight(tls=tls)
    if evaluation.blocking:
        raise PolicyViolation(f"site {ctx.name} refuses the job: {evaluation.reason()}")


def _dp_state_path(ctx: SiteContext, run_id: str) -> Path:
    return ctx.home.run_dir(run_id) / "dp_state.json"


def _load_dp_state(ctx: SiteContext, run_id: str) -> dict[str, float]:
    path = _dp_state_path(ctx, run_id)
    return {k: float(v) for k, v in json.loads(path.read_text()).items()} if path.exists() else {}


def _save_dp_state(ctx: SiteContext, run_id: str, state: dict[str, float]) -> None:
    """Write the DP state durably: temp file, fsync, rename, fsync of the directory."""
    from fedinfra.privacy.durable import write_durably

    write_durably(_dp_state_path(ctx, run_id), json.dumps(state).encode())


def _plan_sigma(ctx: SiteContext, run_id: str, q: float, steps: int) -> float:
    """The run's noise multiplier, planned once per run and kept in the site's home.

    Planned with the job's accountant - the one the ledger charges - so the run's spend
    after its planned steps is at most the target under that accountant. Planning under
    RDP (Mironov 2017) for a PRV job (Gopi et al. 2021) would also be safe, since RDP's
    bound is looser, but it adds noise the accounting does not need (sigma 8.5 instead
    of 7.7 for digits at epsilon 3), which cost about a point of accuracy.
    """
    from fedinfra.privacy import plan_noise_multiplier, resolve_noise_multiplier

    p = ctx.job.privacy
    state = _load_dp_state(ctx, run_id)
    if "sigma" not in state:
        if p.noise_multiplier is None and p.epsilon is not None:
            # 5% tolerance: the plan still never exceeds the target, in fewer bisections.
            sigma = plan_noise_multiplier(
                target_epsilon=p.epsilon,
                delta=p.delta,
                sample_rate=q,
                steps=steps,
                accountant=p.accountant,
                tolerance=0.05,
            )
        else:
            sigma = resolve_noise_multiplier(
                target_epsilon=p.epsilon,
                noise_multiplier=p.noise_multiplier,
                delta=p.delta,
                sample_rate=q,
                steps=steps,
                accountant=p.accountant,
            )
        state["sigma"] = sigma
        state.setdefault("steps", 0)
        _save_dp_state(ctx, run_id, state)
    return state["sigma"]


def _reserve(
    ctx: SiteContext, instruction: TrainInstruction, mechanism: str, params: Mapping[str, object], epsilon: float
) -> None:
    """Record the run's cumulative epsilon after this round in the site's ledger, first.

    Write-ahead: the spend is durable before any result leaves the site, so a crash can
    over-count but never under-count; a spend over a cap raises PrivacyBudgetExceeded.
    """
    from fedinfra.privacy import PrivacyLedger

    ledger = PrivacyLedger(ctx.home.ledger)
    try:
        reserve_spend(ledger, ctx, instruction, mechanism, params, epsilon)
    finally:
        ledger.close()


def _train_dp_sgd(
    ctx: SiteContext, model: object, instruction: TrainInstruction, changes: tuple[str, ...] = ()
) -> tuple[float, dict[str, object]]:
    """Train with DP-SGD (Abadi et al. 2016) and record the spend write-ahead."""
    from fedinfra.privacy import (
        compute_epsilon,
        make_private_compatible,
        sample_rate_for,
        steps_for,
        train_dp_sgd,
    )

    job, p = ctx.job, ctx.job.privacy
    n = len(ctx.data.y)
    q = sample_rate_for(batch_size=job.training.batch_size, dataset_size=n)
    per_round = steps_for(epochs=job.training.local_epochs, sample_rate=q)
    sigma = _plan_sigma(ctx, instruction.run_id, q, per_round * job.rounds)
    before = int(_load_dp_state(ctx, instruction.run_id).get("steps", 0))
    eps_after = compute_epsilon(
        noise_multiplier=sigma, sample_rate=q, steps=before + per_round, delta=p.delta, accountant=p.accountant
    )
    caps = ctx.manifest.budget
    params = {"noise_multiplier": sigma, "sample_rate": q, "steps": before + per_round, "clip": p.max_grad_norm}
    _reserve(ctx, instruction, "dp-sgd", params, eps_after)
    # Write-ahead: the steps about to be taken are on disk before training, so a crash
    # after the reservation can never make the next round recount from a stale step total.
    _save_dp_state(ctx, instruction.run_id, {"sigma": sigma, "steps": before + per_round})
    import torch

    assert isinstance(model, torch.nn.Module)
    private_model, fixed = make_private_compatible(model)
    changes = changes or fixed
    task = job_task(job)
    result = train_dp_sgd(
        private_model,
        ctx.data.x,
        ctx.data.y,
        epochs=job.training.local_epochs,
        batch_size=job.training.batch_size,
        lr=job.training.lr,
        noise_multiplier=sigma,
        max_grad_norm=p.max_grad_norm,
        delta=p.delta,
        steps_before=before,
        accountant=p.accountant,
        criterion=task.loss(),
        output=task.output,
        batch_loss=_task_step(task) if task.overrides_training_step() else None,
    )
    _save_dp_state(ctx, instruction.run_id, {"sigma": sigma, "steps": result.total_steps})
    if private_model is not model:
        model.load_state_dict(private_model.state_dict())
    details: dict[str, object] = {
        "mechanism": "dp-sgd",
        "epsilon_total": result.epsilon,
        "delta": result.delta,
        "accountant": result.accountant,
        "noise_multiplier": result.noise_multiplier,
        "max_grad_norm": result.max_grad_norm,
        "sample_rate": result.sample_rate,
        "steps": result.total_steps,
        "clipping_mode": result.mode,
        "model_changes": list(result.model_changes or changes),
        "epsilon_cap_run": caps.epsilon_per_run,
        "epsilon_cap_lifetime": caps.epsilon_lifetime,
    }
    return result.loss, details


def _task_step(task: Task) -> Callable[[Any, Any, Any], Any]:
    loss = task.loss()
    return lambda model, x, y: task.training_step(model, x, y, loss)


def _compress(ctx: SiteContext, update: NDArrays, run_id: str) -> tuple[bytes, dict[str, object]]:
    """Quantize (and optionally sparsify, with error feedback kept in the site's home)."""
    from fedinfra.aggregation.compression import UpdateCompressor, dense_bytes, encode, layout_of
    from fedinfra.privacy import secure_generator

    spec = ctx.job.compression
    assert spec is not None
    path = ctx.home.run_dir(run_id) / "residual.npy"
    residual = np.load(path) if path.exists() else None
    comp = UpdateCompressor(
        clip=spec.clip, bits=spec.bits, topk_fraction=spec.topk_fraction, rng=secure_generator(), residual=residual
    )
    blob = encode(comp.compress(update))
    if comp.residual is not None:
        np.save(path, comp.residual)
    return blob, {"bytes_sent": len(blob), "bytes_dense": dense_bytes(layout_of(update))}


def _clip_for_codec(ctx: SiteContext, update: NDArrays, details: dict[str, object]) -> NDArrays:
    """Compression under encryption: L2-clip here, and let the BFV codec quantize.

    The job's validator pinned ``secure_aggregation.quant_bits == compression.bits`` and
    ``compression.clip <= secure_aggregation.clip``, so the codec's unbiased stochastic
    rounding (BatchCrypt, Zhang et al. 2020) *is* the compression's quantization: the
    update is rounded once, straight into the packed lanes, never twice.
    """
    from fedinfra.aggregation.compression import clip_l2, dense_bytes, flatten, layout_of, unflatten

    spec = ctx.job.compression
    assert spec is not None
    layout = layout_of(update)
    flat, _norm = clip_l2(flatten(update), spec.clip)  # the norm stays at the site (issue 14)
    details.update({"bytes_dense": dense_bytes(layout), "quantized_by": "bfv"})
    return {k: v.astype(np.float32) for k, v in unflatten(flat, layout).items()}


def run_round(
    ctx: SiteContext, instruction: TrainInstruction, global_weights: NDArrays, *, tls: bool | None, sampled: int
) -> RoundOutput:
    """Train from ``global_weights``; return the (protected) update and the report.

    A round asked again from the same model (a resumed coordinator) gets the reply
    already released, so a retry neither trains nor spends again (see :mod:`.replay`).
    """
    # A split view, or a model the checkpoint does not record, refuses here.
    cosignature = witness(ctx, instruction.cosign, instruction.run_id, instruction.model_digest)
    verified = verify_and_store(
        instruction.receipts, directory=ctx.receipts_dir(instruction.run_id), verifier_key=ctx.audit_key()
    )
    check_job(ctx, tls=tls)
    digest = replay.model_digest(global_weights)
    stored = replay.load(ctx.home, instruction.run_id, instruction.round, digest)
    if stored is not None:  # a retried round: re-send the same release, spend nothing more
        report, update, blob, kind = stored
        details = {**report.details, "receipts_verified": verified, "replayed": True}
        report = report.model_copy(update={"details": details, "cosignature": cosignature})
        return RoundOutput(
            report=report,
            update=update,
            ciphertext=blob if kind == "ciphertext" else None,
            compressed=blob if kind == "compressed" else None,
        )
    out = _train_round(ctx, instruction, global_weights, verified=verified, sampled=sampled)
    out.report = out.report.model_copy(update={"cosignature": cosignature})
    blob = out.ciphertext if out.ciphertext is not None else out.compressed
    kind = "ciphertext" if out.ciphertext is not None else "compressed" if out.compressed is not None else ""
    replay.store(ctx.home, instruction.run_id, digest, out.report, update=out.update, blob=blob, blob_kind=kind)
    return out


def _train_round(
    ctx: SiteContext, instruction: TrainInstruction, global_weights: NDArrays, *, verified: int, sampled: int
) -> RoundOutput:
    job = ctx.job
    model, changes = job_model(job)
    set_weights(model, global_weights)
    details: dict[str, object] = {"receipts_verified": verified}
    if job.privacy.mechanism == "dp-sgd":
        loss, dp = _train_dp_sgd(ctx, model, instruction, changes)
        details.update(dp)
    else:
        loss = train_plain(
            job_task(job),
            model,
            ctx.data.x,
            ctx.data.y,
            epochs=job.training.local_epochs,
            batch_size=job.training.batch_size,
            lr=job.training.lr,
            seed=job.seed * 100_003 + instruction.round,
        )
    local = get_weights(model)
    update = {k: (local[k] - global_weights[k]).astype(np.float32) for k in global_weights}
    if job.privacy.mechanism == "dp-sgd":
        withheld = withhold_buffers(model, update)
        if withheld:
            details["buffers_withheld"] = withheld
    if job.privacy.mechanism == "user-dp":
        update, dp = protect_update(ctx, update, instruction)
        details.update(dp)
    blob = None
    # secagg+he masks before encrypting, with the train message's mask stage (site.secagg).
    he = job.secure_aggregation.encrypted and not job.secure_aggregation.masked
    if job.compression is not None and he:
        update = _clip_for_codec(ctx, update, details)
    elif job.compression is not None:
        blob, sizes = _compress(ctx, update, instruction.run_id)
        details.update(sizes)
    # Under secure aggregation the example count travels inside the sum only; under DP it
    # is bucketed and the loss withheld (fedinfra.privacy.release).
    count = 0 if job.secure_aggregation.mode != "none" else released_count(job.privacy.mechanism, len(ctx.data.y))
    report = TrainReport(
        site=ctx.name,
        round=instruction.round,
        num_examples=count,
        train_loss=released_loss(job.privacy.mechanism, loss),
        details=details,
    )
    if job.privacy.mechanism != "none":
        report.details["train_loss_withheld"] = True
    if blob is not None:
        return RoundOutput(report=report, compressed=blob)
    if not he:
        return RoundOutput(report=report, update=update)
    from fedinfra.crypto import seal_update

    # User-level DP bounds each site's influence on the *unweighted* sum by the clip S
    # (McMahan et al. 2018): weighting by example counts would let the largest site move
    # the sum by S * n_max / n_mean and void the noise calibration. The job validator
    # pins example_cap = 1 for that case, so every site's weight is exactly one.
    weight = 1 if job.privacy.mechanism == "user-dp" else len(ctx.data.y)
    ciphertext = seal_update(update, weight, ctx.he_keys(), run_id=instruction.run_id, round_id=instruction.round)
    if job.compression is not None:
        report.details["bytes_sent"] = len(ciphertext)
    return RoundOutput(report=report, ciphertext=ciphertext)
