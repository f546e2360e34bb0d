"""The fedinfra ``ClientApp``: what runs at a hospital, a bank or an edge device.

Message flow (Flower Message API):

* ``query`` - admission: the site runs its own policy preflight and answers with its
  :class:`~fedinfra.config.wire.SiteHello` (manifest, scan summary, dataset fingerprint,
  privacy budget) - never any records.
* ``train`` - one round: verify audit receipts, check policy and budget, train, protect
  the update (DP, HE) and reply with it and a :class:`~fedinfra.config.wire.TrainReport`.
  When asked (``evaluate_round``) the site also evaluates the model it trained from: the
  previous round's federated evaluation, sent in this round's wave - in the report's
  ``evaluation``, or (``secagg``, ``secagg+he``) masked with the update so that only the
  survivors' total is unmasked (:mod:`fedinfra.site.evaluation`).
* ``evaluate`` - verify receipts, (HE) open the aggregate, evaluate on the local test shard;
  in masked modes the report carries no figure and the close wave's sums go into an
  evaluation-only secure sum.

A site that refuses (its policy, budget or a receipt check fails) replies
``status="refused"`` with the reason and nothing else: fail closed.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedinfra.aggregation import blobs as segmented
from fedinfra.config import JobSpec
from fedinfra.config.wire import (
    ARRAYS,
    COMPRESSED_UPDATE,
    CONFIG,
    DOC,
    EVAL_MASKED,
    HE_AGGREGATES,
    HE_UPDATE,
    SECAGG,
    SECAGG_UPDATE,
    EvalCounts,
    EvalReport,
    SiteHello,
    TrainInstruction,
    TrainReport,
)
from fedinfra.errors import CryptoError, FedinfraError, PolicyViolation, PrivacyBudgetExceeded, VerificationError
from fedinfra.models import set_weights
from fedinfra.privacy.release import released_count
from fedinfra.site.context import SiteContext, site_context
from fedinfra.site.evaluation import close_sum, evaluation_lanes, group_evaluation, group_masked, secure_evaluation
from fedinfra.site.receipts import cosigner_vkey, current_size, verify_and_store, witness
from fedinfra.site.round import check_job, run_round
from fedinfra.site.sync import current_model
from fedinfra.site.weights import arrays_to_weights, weights_to_arrays
from fedinfra.types import NDArrays

_log = logging.getLogger("fedinfra.site")

#: Payloads that grow with the model travel in segments (:mod:`fedinfra.aggregation.blobs`).
SEGMENTED = frozenset({HE_UPDATE, SECAGG_UPDATE, COMPRESSED_UPDATE})
#: Most bytes one encrypted aggregate from the coordinator may have (gRPC's own 2 GiB message
#: limit): Flower has already inflated the message, so this bounds the join, not the download.
MAX_AGGREGATE_BYTES = 2**31 - 1
app = ClientApp()


def _instruction(msg: Message) -> TrainInstruction:
    raw = msg.content.config_records[CONFIG][DOC]
    doc = json.loads(str(raw))
    if not isinstance(doc, dict):
        raise ValueError("config doc is not a JSON object")
    return TrainInstruction.model_validate(doc)


def _context(msg: Message, context: Context) -> tuple[TrainInstruction, SiteContext]:
    instruction = _instruction(msg)
    job = JobSpec.model_validate(instruction.job)
    return instruction, site_context(dict(context.node_config), job)


def refusal_code(exc: BaseException) -> Literal["budget", "policy", "receipt", "crypto", "error"]:
    """Classify why a site refused, for the coordinator's bookkeeping."""
    if isinstance(exc, PrivacyBudgetExceeded):
        return "budget"
    if isinstance(exc, PolicyViolation):
        return "policy"
    if isinstance(exc, VerificationError):
        return "receipt"
    if isinstance(exc, CryptoError):
        return "crypto"
    return "error"


def _tls(context: Context) -> bool | None:
    return True if str(context.node_config.get("tls", "")).lower() == "true" else None


def _reply(
    msg: Message, doc: str, blob: bytes | None = None, key: str = HE_UPDATE, blobs: dict[str, bytes] | None = None
) -> Message:
    """A reply: the JSON document, model-sized payloads in segments (:mod:`fedinfra.aggregation.blobs`)."""
    values: dict[str, int | float | str | bytes | bool | list[int] | list[float] | list[str] | list[bytes] | list[bool]]
    values = {DOC: doc}
    payloads = dict(blobs or {})
    if blob is not None:
        payloads[key] = blob
    records: dict[str, Any] = {}
    for name, data in payloads.items():
        if name in SEGMENTED:
            segmented.put(records, name, data)
        else:
            values[name] = data
    records[CONFIG] = ConfigRecord(values)
    return Message(RecordDict(records), reply_to=msg)


def _weights(msg: Message, ctx: SiteContext, instruction: TrainInstruction) -> tuple[NDArrays, str | None]:
    """The global model: sent in plaintext, or (HE) rebuilt from encrypted aggregates.

    Also returns the digest of what was received, checked against the one the instruction
    names (:mod:`fedinfra.site.views`). Under ``secagg`` the model is also checked against
    what clipped means allow (:func:`fedinfra.site.views.check_secagg_model`).
    """
    from fedinfra.site.views import check_secagg_model, check_view, received_digest

    base = arrays_to_weights(msg.content.array_records[ARRAYS]) if ARRAYS in msg.content.array_records else None
    encrypted = ctx.job.secure_aggregation.encrypted
    aggregates: list[bytes] = []
    if encrypted:
        # The coordinator is not trusted: the segments are checked before they are joined, and
        # each aggregate is then opened for its own round (fedinfra.crypto.open_sum).
        most = instruction.round - (instruction.sync_from or 1) + 1
        aggregates = segmented.take_list(msg.content.array_records, HE_AGGREGATES, limit=MAX_AGGREGATE_BYTES, most=most)
    digest = received_digest(encrypted=encrypted, base=base, aggregates=aggregates)
    check_view(instruction, digest)
    if not encrypted:
        if base is None:
            raise ValueError("plaintext round without the global model")
        if ctx.job.secure_aggregation.mode == "secagg":
            check_secagg_model(ctx, instruction, base)
        return base, digest
    return current_model(ctx, instruction, base, aggregates), digest


def _test_counts(ctx: SiteContext, weights: NDArrays) -> tuple[float, int, int, dict[str, list[float]]]:
    """Evaluate ``weights`` on the local test shard: (loss sum, correct, count, task sums) - sums only."""
    from fedinfra.site.tasks import job_model, job_task
    from fedinfra.task.metrics import evaluate_sums

    tx, ty = ctx.data.test_x, ctx.data.test_y
    if tx is None or ty is None or len(ty) == 0:
        return 0.0, 0, 0, {}
    model, _ = job_model(ctx.job)
    set_weights(model, weights)
    sums = evaluate_sums(job_task(ctx.job), model, tx, ty)
    correct = int(np.rint(sums["correct"][0])) if "correct" in sums else 0
    return float(sums["loss"][0]), correct, len(ty), {k: [float(v) for v in a] for k, a in sums.items()}


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Admission: answer with identity, data summary, budget and own preflight verdict."""
    try:
        instruction, ctx = _context(msg, context)
    except FedinfraError as exc:  # refused before its data is even loaded (fail closed)
        return Message(Error(code=403, reason=str(exc)[:500]), reply_to=msg)
    if instruction.phase == "secagg":
        return _secagg_stage(msg, context, instruction, ctx)
    if instruction.phase == "cosign":
        return _cosign(msg, ctx, instruction)
    reason = ""
    try:
        check_job(ctx, tls=_tls(context))
    except FedinfraError as exc:
        reason = str(exc)
    spent = remaining = None
    if ctx.job.privacy.mechanism != "none":
        from fedinfra.privacy import PrivacyLedger

        ledger = PrivacyLedger(ctx.home.ledger)
        try:
            spent = ledger.spent(dataset_fingerprint=ctx.fingerprint)
        finally:
            ledger.close()
        remaining = max(0.0, min(ctx.manifest.budget.epsilon_per_run, ctx.manifest.budget.epsilon_lifetime - spent))
    hello = SiteHello(
        site=ctx.name,
        num_examples=None
        if ctx.job.secure_aggregation.mode != "none"
        else released_count(ctx.job.privacy.mechanism, len(ctx.data.y)),
        num_features=int(np.prod(ctx.data.x.shape[1:])),
        dataset_fingerprint=ctx.fingerprint,
        manifest=ctx.manifest.model_dump(mode="json"),
        scan=ctx.scan.model_dump(mode="json"),
        preflight_passed=not reason,
        preflight_reason=reason[:240],
        epsilon_spent_lifetime=spent,
        epsilon_remaining_run=remaining,
        checkpoint_size=current_size(ctx.receipts_dir(instruction.run_id), ctx.audit_key()),
        cosigner=cosigner_vkey(ctx),
    )
    return _reply(msg, hello.model_dump_json())


def _secagg_stage(msg: Message, context: Context, instruction: TrainInstruction, ctx: SiteContext) -> Message:
    """A SecAgg key, share or unmask stage (see :mod:`fedinfra.site.secagg`)."""
    from fedinfra.site.secagg import handle_stage

    try:
        check_job(ctx, tls=_tls(context))
        if not ctx.job.secure_aggregation.masked:
            raise PolicyViolation("this job does not use secure_aggregation.mode = 'secagg'")
        answer = handle_stage(context, ctx, instruction, str(msg.content.config_records[CONFIG][SECAGG]))
    except (FedinfraError, ValueError, KeyError) as exc:
        return Message(Error(code=403, reason=str(exc)[:240]), reply_to=msg)
    return Message(RecordDict({CONFIG: ConfigRecord({DOC: "{}", SECAGG: answer})}), reply_to=msg)


def _cosign(msg: Message, ctx: SiteContext, instruction: TrainInstruction) -> Message:
    """The close wave: witness the close checkpoint (a split view is refused and logged)."""
    try:
        cosignature = witness(ctx, instruction.cosign, instruction.run_id)
    except (FedinfraError, ValueError) as exc:
        refused = EvalReport(site=ctx.name, round=instruction.round, status="refused", reason=str(exc)[:240])
        return _reply(msg, refused.model_dump_json())
    return _reply(msg, EvalReport(site=ctx.name, round=instruction.round, cosignature=cosignature).model_dump_json())


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train one round and reply with the protected update, or refuse with a reason."""
    instruction, ctx = _context(msg, context)
    try:
        weights, digest = _weights(msg, ctx, instruction)
        if ctx.job.secure_aggregation.masked:  # refused before training charges the ledger
            from fedinfra.site.secagg import check_mask_stage

            check_mask_stage(context, ctx, instruction, msg.content.config_records[CONFIG].get(SECAGG), "train")
        out = run_round(ctx, instruction, weights, tls=_tls(context), sampled=instruction.sampled)
        # The coordinator checks both: the reply is for this run and built on the model it sent.
        out.report = out.report.model_copy(
            update={"run_id": instruction.run_id, "model_digest": digest or instruction.model_digest}
        )
        lanes = None
        blobs: dict[str, bytes] = {}
        if instruction.evaluate_round is not None:
            # Computed afresh, after run_round (receipts verified, policy checked), and not
            # part of a replayed release: counts only, never the model.
            loss_sum, correct, count, sums = _test_counts(ctx, weights)
            if secure_evaluation(ctx):  # summed with the update, never in the report
                lanes = evaluation_lanes(ctx, instruction.run_id, weights, sums)
            elif group_evaluation(ctx):  # bfv/ckks: under the roster's zero-sum masks only
                masked_sums = group_masked(ctx, instruction, instruction.evaluate_round, weights, sums)
                if masked_sums is not None:
                    blobs[EVAL_MASKED] = masked_sums
            else:
                evaluation = EvalCounts(
                    round=instruction.evaluate_round,
                    loss_sum=max(0.0, loss_sum),
                    correct=correct,
                    count=count,
                    sums=sums,
                )
                out.report = out.report.model_copy(update={"evaluation": evaluation})
        if ctx.job.secure_aggregation.masked:
            from fedinfra.site.secagg import mask_update

            assert out.update is not None
            stage = msg.content.config_records[CONFIG].get(SECAGG)
            records = mask_update(context, ctx, instruction, out.update, stage, evaluation=lanes)
            return _reply(msg, out.report.model_dump_json(), blobs=records)
    except (FedinfraError, ValueError) as exc:
        # The site's own record of why it refused (its operator reads it in the SuperNode's
        # log); the coordinator gets the bounded code, and audits only that (issue 16).
        _log.warning("run %s round %d: refused (%s): %s", instruction.run_id, instruction.round,
                     refusal_code(exc), str(exc)[:240])
        refused = TrainReport(
            site=ctx.name,
            round=instruction.round,
            status="refused",
            reason=str(exc)[:240],
            code=refusal_code(exc),
            num_examples=0,
            run_id=instruction.run_id,
        )
        return _reply(msg, refused.model_dump_json())
    if out.ciphertext is not None:
        return _reply(msg, out.report.model_dump_json(), out.ciphertext, blobs=blobs)
    if out.compressed is not None:
        return _reply(msg, out.report.model_dump_json(), out.compressed, key=COMPRESSED_UPDATE)
    assert out.update is not None
    content = RecordDict(
        {
            ARRAYS: weights_to_arrays(out.update),
            "metrics": MetricRecord({"num-examples": out.report.num_examples, "train-loss": out.report.train_loss}),
            CONFIG: ConfigRecord({DOC: out.report.model_dump_json()}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Verify receipts, bring the model up to date, evaluate on the local test shard."""
    instruction, ctx = _context(msg, context)
    try:
        cosignature = witness(ctx, instruction.cosign, instruction.run_id, instruction.model_digest)
        verified = verify_and_store(
            instruction.receipts, directory=ctx.receipts_dir(instruction.run_id), verifier_key=ctx.audit_key()
        )
        weights, digest = _weights(msg, ctx, instruction)
        loss_sum, correct, count, sums = _test_counts(ctx, weights)
        if instruction.phase == "close":
            ctx.home.save_weights(instruction.run_id, "final-model", weights)
        blobs: dict[str, bytes] = {}
        if secure_evaluation(ctx):
            # The figures travel only inside a secure sum (the close wave's), never in the report.
            stage = msg.content.config_records[CONFIG].get(SECAGG)
            if instruction.phase == "close" and stage is not None:
                from fedinfra.site.secagg import check_mask_stage, mask_evaluation

                # Refused before evaluation_lanes marks these weights evaluated: a refused
                # close sum must not cost the site its evaluation of the final model.
                check_mask_stage(context, ctx, close_sum(instruction), stage, "close")
                lanes = evaluation_lanes(ctx, instruction.run_id, weights, sums)
                blobs[SECAGG_UPDATE] = mask_evaluation(context, ctx, close_sum(instruction), stage, lanes)
            loss_sum, correct, count, sums = 0.0, 0, 0, {}
        elif group_evaluation(ctx):
            masked_sums = group_masked(ctx, instruction, instruction.round, weights, sums)
            if masked_sums is not None:
                blobs[EVAL_MASKED] = masked_sums
            loss_sum, correct, count, sums = 0.0, 0, 0, {}
    except (FedinfraError, ValueError) as exc:
        refused = EvalReport(
            site=ctx.name, round=instruction.round, status="refused", reason=str(exc)[:240], run_id=instruction.run_id
        )
        return _reply(msg, refused.model_dump_json())
    report = EvalReport(
        site=ctx.name,
        round=instruction.round,
        loss_sum=loss_sum,
        correct=correct,
        count=count,
        sums=sums,
        receipts_verified=verified,
        cosignature=cosignature,
        run_id=instruction.run_id,
        model_digest=digest or instruction.model_digest,
    )
    return _reply(msg, report.model_dump_json(), blobs=blobs)
