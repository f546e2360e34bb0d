"""The site's side of SecAgg+ (``secure_aggregation.mode = "secagg"``).

The site keeps its round secrets (two X25519 private keys, the self-mask seed, the shares
it holds) in its own Flower node state between the stages, never in a message. It trusts
nothing the coordinator says about the protocol's parameters: it derives the plan (t, k)
from the job's declared bounds and the size of the roster it is shown, masks only against
neighbours that shared, answers one unmask request per round, and refuses to unmask fewer
than ``max(t, min_contributors)`` survivors (Bonawitz et al., CCS 2017, section 4; the
floor is issue 13's "nothing released below min_contributors", checked by the site).

Keys are authenticated with the site's long-term Ed25519 identity key (``update_signing.key``,
made at the site by the key ceremony): the site signs its advertised keys and, once per
round, the survivor list; it accepts a roster only if every entry is signed by the key its
*own kit* pins for that site name (``[signing.site_keys]``, or ``consortium-keys.json`` from
``keys issue``), and reveals unmasking shares only for the survivor list it signed, shown with
at least ``t`` survivors' signatures (Bonawitz et al., CCS 2017, section 6.2 and figure 4).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Context

from fedinfra.config.secagg_plan import SecAggPlan, contributor_floor, plan_for_roster
from fedinfra.config.wire import HE_UPDATE, SECAGG_EVAL, SECAGG_UPDATE, TrainInstruction
from fedinfra.config.wire_secagg import StageReply, StageRequest
from fedinfra.crypto.quantize import flatten, secure_generator
from fedinfra.crypto.secagg import Roster, SecAggAbandoned, SiteSession
from fedinfra.crypto.secagg import codec as sa_codec
from fedinfra.errors import ConfigError, CryptoError
from fedinfra.site.context import SiteContext
from fedinfra.types import NDArrays

_STATE_KEY = "fedinfra.secagg"
#: The consortium's public-key directory ``keys issue`` puts in every site bundle
#: (:data:`fedinfra.runtime.ceremony.CONSORTIUM_KEYS_FILE`).
_DIRECTORY_FILE = "consortium-keys.json"


def identity(ctx: SiteContext) -> tuple[bytes, dict[str, bytes]]:
    """The site's Ed25519 identity key and the consortium's pinned public identity keys.

    Both come from the site's own kit, never from the coordinator; a kit without the
    directory, or whose key is not the one pinned for this site, is refused in one line.
    """
    if ctx.home.kit is None:
        raise ConfigError(f"site {ctx.name}: secure aggregation needs the site kit (node config 'kit')")
    private, directory = _identity(str(ctx.home.kit), ctx.name)
    return private, dict(directory)


@lru_cache(maxsize=8)
def _identity(kit: str, site: str) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    from fedinfra.config import read_toml
    from fedinfra.crypto import _sign
    from fedinfra.crypto.kits import KIT_FILE, SIGNING_FILE, _read_secret

    path = Path(kit)
    doc = read_toml(path / KIT_FILE)
    signing = doc.get("signing", {})
    key_file = str(signing.get("key_file") or doc.get("he", {}).get("signing_key_file") or SIGNING_FILE)
    private = _read_secret(path / key_file)
    table = signing.get("site_keys")
    if not table and (path / _DIRECTORY_FILE).is_file():
        entries = json.loads((path / _DIRECTORY_FILE).read_text())
        table = {str(k): str(v.get("signing_public_key", "")) for k, v in entries.items()}
    if not table:
        raise ConfigError(
            f"{path / KIT_FILE}: no [signing.site_keys] (the consortium's identity keys) for secure aggregation; "
            "re-issue the kits with 'fedinfra keys init' or 'keys issue'"
        )
    try:
        directory = tuple((str(k), bytes.fromhex(str(v))) for k, v in sorted(table.items()))
    except ValueError as exc:
        raise ConfigError(f"{path / KIT_FILE}: [signing.site_keys] holds a key that is not hex") from exc
    if dict(directory).get(site) != _sign.public_of(private):
        raise ConfigError(
            f"{path / KIT_FILE}: {key_file} is not the identity key the kit pins for site {site!r}; re-issue the kit"
        )
    return private, directory


def _plan(ctx: SiteContext, sampled: int, roster: int) -> SecAggPlan:
    job = ctx.job
    sa = job.secure_aggregation
    return plan_for_roster(
        sampled,
        roster,
        max_dropouts=sa.max_dropouts,
        max_colluders=sa.max_colluders,
        min_contributors=contributor_floor(
            sa.min_contributors,
            min_sites=job.sites.min_sites,
            distributed_noise=job.privacy.mechanism == "user-dp",
        ),
    )


def _load(context: Context, instruction: TrainInstruction) -> SiteSession:
    record = context.state.config_records.get(_STATE_KEY)
    raw = record.get("session") if record is not None else None
    if not isinstance(raw, bytes):
        raise CryptoError("secure aggregation: no key stage for this round at this site")
    session = SiteSession.from_bytes(raw)
    if session.run_id != instruction.run_id or session.round_id != instruction.round:
        raise CryptoError("secure aggregation: the key stage was for another run or round")
    return session


def _save(context: Context, session: SiteSession) -> None:
    context.state.config_records[_STATE_KEY] = ConfigRecord({"session": session.to_bytes()})


def handle_stage(context: Context, ctx: SiteContext, instruction: TrainInstruction, document: str) -> str:
    """Answer one QUERY stage (advertise, share, unmask); return the reply document."""
    request = StageRequest.model_validate_json(document)
    name = ctx.name
    if request.stage == "advertise":
        record = context.state.config_records.get(_STATE_KEY)
        raw = record.get("session") if record is not None else None
        if isinstance(raw, bytes):
            old = SiteSession.from_bytes(raw)
            if old.run_id == instruction.run_id and old.round_id == instruction.round and old.u2:
                raise CryptoError("secure aggregation: this site already masked its input for this round")
        signing_key, _ = identity(ctx)
        session = SiteSession.start(name, run_id=instruction.run_id, round_id=instruction.round)
        _save(context, session)
        entry = session.advertise(signing_key)
        return StageReply(
            stage="advertise", site=name, c_pk=entry.c_pk.hex(), s_pk=entry.s_pk.hex(), signature=entry.sig.hex()
        ).model_dump_json()
    session = _load(context, instruction)
    signing_key, directory = identity(ctx)
    if request.stage == "share":
        roster = Roster.from_json([list(r) for r in request.roster])
        # The site derives (t, k) itself; a coordinator overstating n only raises t.
        p = _plan(ctx, request.n, len(roster.entries))
        session.sampled = request.n
        if session.roster is not None:
            raise CryptoError("secure aggregation: this site already shared its secrets for this round")
        boxes, commitment = session.share(p, roster, directory)
        _save(context, session)
        return StageReply(
            stage="share", site=name, boxes={k: v.hex() for k, v in boxes.items()}, commitment=commitment.hex()
        ).model_dump_json()
    if request.stage == "consistency":
        if session.roster is None:
            raise CryptoError("secure aggregation: consistency before share")
        p = _plan(ctx, session.sampled, len(session.roster.entries))
        try:
            signature = session.consistency(p, request.u3, signing_key)
        except SecAggAbandoned as exc:
            return StageReply(stage="consistency", site=name, refused=str(exc)[:240]).model_dump_json()
        _save(context, session)
        return StageReply(stage="consistency", site=name, signature=signature.hex()).model_dump_json()
    if request.stage == "unmask":
        if session.roster is None:
            raise CryptoError("secure aggregation: unmask before share")
        p = _plan(ctx, session.sampled, len(session.roster.entries))
        try:
            signatures = {k: bytes.fromhex(v) for k, v in request.signatures.items()}
        except ValueError as exc:
            raise CryptoError("secure aggregation: a survivor signature is not hex") from exc
        try:
            shares = session.unmask(p, request.u3, signatures, directory)
        except SecAggAbandoned as exc:
            _save(context, session)
            return StageReply(stage="unmask", site=name, refused=str(exc)[:240]).model_dump_json()
        _save(context, session)
        return StageReply(
            stage="unmask", site=name, shares={k: (kind, v.hex()) for k, (kind, v) in shares.items()}
        ).model_dump_json()
    raise CryptoError(f"secure aggregation: stage {request.stage!r} does not come as a query")


def _mask_stage(
    context: Context, ctx: SiteContext, instruction: TrainInstruction, document: Any, carrier: str
) -> tuple[StageRequest, SiteSession, SecAggPlan, dict[str, bytes]]:
    """The checked mask-stage request the ``carrier`` ("train" or "close") message brings.

    Refused unless it is a mask stage, this site has shared (a roster) and has not masked
    an input for this round yet (one input per round: Bonawitz et al. CCS 2017, round 2).
    Returns the request, the session, the round's plan and the shares sent to this site.
    """
    if not isinstance(document, str):
        raise CryptoError(f"secure aggregation: the {carrier} message carries no mask stage")
    request = StageRequest.model_validate_json(document)
    if request.stage != "mask":
        raise CryptoError(f"secure aggregation: expected the mask stage with the {carrier} message")
    session = _load(context, instruction)
    if session.roster is None:
        raise CryptoError("secure aggregation: mask before share")
    if session.u2:
        raise CryptoError("secure aggregation: this site already masked its input for this round")
    p = _plan(ctx, session.sampled, len(session.roster.entries))
    return request, session, p, {k: bytes.fromhex(v) for k, v in request.shares.items()}


def check_mask_stage(
    context: Context, ctx: SiteContext, instruction: TrainInstruction, document: Any, carrier: str
) -> None:
    """Refuse, before the site trains, charges or records anything, a mask stage it would refuse later.

    Every check of the mask stage that does not depend on the update (:func:`_mask_stage`,
    :meth:`~fedinfra.crypto.secagg.SiteSession.check_mask_request`: U2 at or above the
    floor, the shares from the sharing neighbours, one input per round) runs on the stored
    session without changing it. The privacy charge is write-ahead and never refunded
    (:func:`fedinfra.site.user_dp.reserve_spend`), so a coordinator sending a train message
    with U2 below the floor must get its refusal with nothing spent (issue 13). The close
    wave runs it before the site marks the final model evaluated
    (:func:`fedinfra.site.evaluation.evaluation_lanes`), so a refused close sum leaves the
    site's evaluation of it unspent. :func:`mask_update` and :func:`mask_evaluation` check
    them again when they mask.
    """
    request, session, p, shares = _mask_stage(context, ctx, instruction, document, carrier)
    session.check_mask_request(p, request.u2, shares)


def mask_update(
    context: Context,
    ctx: SiteContext,
    instruction: TrainInstruction,
    update: NDArrays,
    document: Any,
    evaluation: npt.NDArray[np.uint64] | None = None,
) -> dict[str, bytes]:
    """Quantize ``update`` like the BFV codec and mask it against the sharing neighbours.

    Returns the reply's binary records by key: the masked integers (``SECAGG_UPDATE``,
    ``secagg``), or the masked BFV slots encrypted and signed (``HE_UPDATE``, ``secagg+he``).
    ``evaluation`` (fixed-point sums, :func:`~fedinfra.crypto.secagg.codec.encode_eval`) is
    masked with the same pairwise and self masks as a further segment - appended to the
    masked update (``secagg``) or beside the ciphertext (``SECAGG_EVAL``, ``secagg+he``) - so
    the coordinator unmasks only the survivors' total (issue 14, deliverable 4).
    """
    request, session, p, shares = _mask_stage(context, ctx, instruction, document, "train")
    sa = ctx.job.secure_aggregation
    weight = 1 if ctx.job.privacy.mechanism == "user-dp" else len(ctx.data.y)
    if sa.encrypted:
        from fedinfra.crypto.secagg.he import seal_masked

        blob = seal_masked(
            update,
            weight,
            ctx.he_keys(),
            session,
            p,
            u2=request.u2,
            shares_for_me=shares,
            run_id=instruction.run_id,
            round_id=instruction.round,
        )
        out = {HE_UPDATE: blob}
        if evaluation is not None:
            n_eval = int(evaluation.shape[0])
            eval_bits = sa_codec.widths(sa, n_eval)
            empty = np.zeros(0, dtype=np.uint64)
            eval_segments = [empty, empty.copy(), evaluation]
            session.mask(p, eval_segments, eval_bits, u2=request.u2, shares_for_me=shares)
            out[SECAGG_EVAL] = sa_codec.to_wire(eval_segments, eval_bits)
        _save(context, session)
        return out
    values, _ = flatten(update)
    segments = sa_codec.encode(np.asarray(values, dtype=np.float64), weight, sa, secure_generator())
    n = 0 if evaluation is None else int(evaluation.shape[0])
    if evaluation is not None:
        segments.append(evaluation)
    bits = sa_codec.widths(sa, n)
    session.mask(p, segments, bits, u2=request.u2, shares_for_me=shares)
    _save(context, session)
    return {SECAGG_UPDATE: sa_codec.to_wire(segments, bits)}


def open_masked_aggregate(ctx: SiteContext, data: bytes, *, run_id: str, round_id: int) -> tuple[Any, int]:
    """Decrypt a ``secagg+he`` aggregate and remove the masks (:func:`fedinfra.crypto.secagg.he.open_masked`).

    The checks use this site's own kit (pinned identities) and the job's bounds; the
    coordinator supplies only the material.
    """
    from fedinfra.crypto.secagg.he import open_masked

    _, directory = identity(ctx)
    return open_masked(
        data,
        ctx.he_keys(),
        directory,
        lambda sampled, roster: _plan(ctx, sampled, roster),
        run_id=run_id,
        round_id=round_id,
    )


def mask_evaluation(
    context: Context, ctx: SiteContext, instruction: TrainInstruction, document: Any, evaluation: npt.NDArray[np.uint64]
) -> bytes:
    """An evaluation-only SecAgg+ input (the close wave): no update, a trailer of one, the sums.

    The same codec and masks as :func:`mask_update` with an empty update, so the
    coordinator's :class:`~fedinfra.aggregation.secagg.SecAggAggregator` over an empty model
    layout unmasks the survivors' total evaluation sums and nothing else.
    """
    request, session, p, shares = _mask_stage(context, ctx, instruction, document, "close")
    sa = ctx.job.secure_aggregation
    segments = [*sa_codec.encode(np.zeros(0, dtype=np.float64), 1, sa, secure_generator()), evaluation]
    bits = sa_codec.widths(sa, int(evaluation.shape[0]))
    session.mask(p, segments, bits, u2=request.u2, shares_for_me=shares)
    _save(context, session)
    return sa_codec.to_wire(segments, bits)
