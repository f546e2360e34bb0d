"""``mode = "secagg"`` and ``"secagg+he"``: SecAgg+ as aggregators (coordinator side).

Four waves per round (Bonawitz et al., CCS 2017, figure 4; Bell et al., CCS 2020):

1. ``advertise`` (before training): each sampled site answers with two fresh X25519 keys,
   signed with its Ed25519 identity key (sites check the signatures against the keys their
   own kits pin, so the coordinator can neither swap keys nor add sybil sites);
2. ``share``: the roster of keys goes out; each site answers with Shamir shares of its
   secrets sealed to each neighbour, and a commitment to its self-mask seed;
3. the train wave: each site gets the list ``U2`` of sites that shared and the sealed
   shares addressed to it, trains, and replies with its masked quantized update;
4. ``consistency`` (after training): the survivors ``U3`` get the list and each signs it;
5. ``unmask``: the signers get ``U3`` with the signatures; each checks at least ``t`` of them
   and answers with the shares that remove the masks (``b`` of survivors, ``s^SK`` of sites
   that dropped). Bonawitz et al., CCS 2017, figure 4 (the actively secure variant).

The coordinator learns only the sum of the survivors' updates. Sites derive the plan
(t, k) themselves from the job's bounds and the roster size, and refuse to unmask fewer
than ``max(t, min_contributors)`` survivors; a round that cannot be unmasked is abandoned
(:class:`~fedinfra.crypto.secagg.SecAggAbandoned`) and releases nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from fedinfra.aggregation.modes import encrypted_sum
from fedinfra.aggregation.rounds import Aggregator as _Base
from fedinfra.aggregation.rounds import (
    Folded,
    Reply,
    RoundAggregate,
    RoundSpec,
    Stage,
    UpdateRejected,
    register,
)
from fedinfra.config import JobSpec
from fedinfra.config.secagg_plan import SecAggPlan, contributor_floor, plan, plan_for_roster
from fedinfra.config.wire import HE_UPDATE, SECAGG, SECAGG_EVAL, SECAGG_UPDATE
from fedinfra.config.wire_secagg import StageReply, StageRequest
from fedinfra.crypto.quantize import unflatten
from fedinfra.crypto.secagg import Roster, RosterEntry, SecAggAbandoned, Unmasker
from fedinfra.crypto.secagg import codec as sa_codec
from fedinfra.errors import CryptoError


def plan_for(job: JobSpec, n: int, roster: int | None = None) -> SecAggPlan:
    """The plan of a round with ``n`` sampled sites (``roster`` of them advertised keys).

    The floor is the one the sites apply (:func:`~fedinfra.config.secagg_plan.contributor_floor`).
    """
    spec = job.secure_aggregation
    floor = contributor_floor(
        spec.min_contributors, min_sites=job.sites.min_sites, distributed_noise=job.privacy.mechanism == "user-dp"
    )
    if roster is not None:
        return plan_for_roster(
            n,
            roster,
            max_dropouts=spec.max_dropouts,
            max_colluders=spec.max_colluders,
            min_contributors=floor,
        )
    return plan(n, max_dropouts=spec.max_dropouts, max_colluders=spec.max_colluders, min_contributors=floor)


@register
class SecAggAggregator(_Base):
    """Pairwise-masked sums of quantized updates; the coordinator unmasks only the sum."""

    name = "secagg"
    hides_aggregate: ClassVar[bool] = False

    def __init__(self, spec: RoundSpec) -> None:
        super().__init__(spec)
        self.sa = spec.job.secure_aggregation
        self.n_values = sum(_prod(shape) for _, shape in spec.layout)
        # Evaluation sums ride as a third masked segment (issue 14): only their total is unmasked.
        self.bits = sa_codec.widths(self.sa, spec.eval_size)
        self.sizes = sa_codec.sizes(self.n_values, spec.eval_size)
        self.plan: SecAggPlan | None = None
        self.roster: Roster | None = None
        self._entries: dict[str, RosterEntry] = {}
        self._boxes: dict[str, dict[str, str]] = {}
        self._commitments: dict[str, bytes] = {}
        self._unmasker: Unmasker | None = None
        self._responses: dict[str, dict[str, tuple[str, bytes]]] = {}
        self._signatures: dict[str, str] = {}
        self.survivors: tuple[str, ...] = ()
        self.dropped: tuple[str, ...] = ()
        # The bounds must hold for the round's sample before anything is sent.
        plan_for(spec.job, len(spec.sites))

    # -- stage 1 and 2 ---------------------------------------------------------------------------

    def stages_before(self) -> Iterator[Stage]:
        """Advertise keys, then share secrets."""
        request = StageRequest(stage="advertise").model_dump_json()
        yield Stage("advertise", {s: request for s in self.spec.sites}, self._collect_keys, self._close_keys)
        assert self.roster is not None
        assert self.plan is not None
        share = StageRequest(stage="share", n=len(self.spec.sites), roster=[tuple(r) for r in self.roster.to_json()])
        doc = share.model_dump_json()
        yield Stage("share", {name: doc for name in self.roster.names}, self._collect_shares, self._close_shares)

    def _collect_keys(self, site: str, document: str) -> None:
        reply = _reply(document, site, "advertise")
        if not reply.c_pk or not reply.s_pk or not reply.signature:
            raise UpdateRejected("protocol", "key advertisement without both public keys and the identity signature")
        self._entries[site] = RosterEntry(
            site, bytes.fromhex(reply.c_pk), bytes.fromhex(reply.s_pk), bytes.fromhex(reply.signature)
        )

    def _close_keys(self) -> None:
        names = sorted(self._entries)
        self.plan = self._plan_or_abandon(len(names), "advertised keys", roster=len(names))
        try:
            self.roster = Roster(tuple(self._entries[n] for n in names))
        except CryptoError as exc:
            raise SecAggAbandoned(f"secure aggregation: {exc}") from exc

    def _collect_shares(self, site: str, document: str) -> None:
        assert self.roster is not None
        reply = _reply(document, site, "share")
        if site not in self.roster.names or not set(reply.boxes) <= set(self.roster.names) or not reply.commitment:
            raise UpdateRejected("protocol", "shares addressed outside the roster, or no commitment")
        for box in reply.boxes.values():
            if len(box) != 2 * (2 * 66 + 16):
                raise UpdateRejected("protocol", "a sealed share has the wrong length")
        self._boxes[site] = dict(reply.boxes)
        self._commitments[site] = bytes.fromhex(reply.commitment)

    def _close_shares(self) -> None:
        assert self.roster is not None
        assert self.plan is not None
        u2 = sorted(self._boxes)
        self._plan_or_abandon(len(u2), "shared their secrets", roster=self.plan.n)
        self._unmasker = Unmasker(
            self.plan,
            self.roster,
            run_id=self.spec.run_id,
            round_id=self.spec.round,
            u2=u2,
            commitments=self._commitments,
            sizes=self.sizes,
            bits=self.bits,
        )

    def _plan_or_abandon(self, count: int, what: str, roster: int) -> SecAggPlan:
        try:
            p = plan_for(self.spec.job, len(self.spec.sites), roster)
        except ValueError as exc:
            raise SecAggAbandoned(f"secure aggregation: only {count} sites {what}: {exc}") from exc
        if count < max(p.t, p.min_contributors):
            raise SecAggAbandoned(
                f"secure aggregation: only {count} sites {what}, fewer than "
                f"max(t={p.t}, min_contributors={p.min_contributors}); round abandoned"
            )
        return p

    # -- stage 3: the train wave -------------------------------------------------------------------

    def train_extra(self, site: str) -> dict[str, Any] | None:
        """The sharing sites and the sealed shares addressed to ``site``; None if it did not share."""
        if self._unmasker is None or site not in self._unmasker.u2:
            return None
        mine = {sender: boxes[site] for sender, boxes in self._boxes.items() if site in boxes}
        doc = StageRequest(stage="mask", u2=list(self._unmasker.u2), shares=mine)
        return {SECAGG: doc.model_dump_json()}

    def _accept(self, reply: Reply) -> Folded:
        if self._unmasker is None:
            raise UpdateRejected("protocol", "masked input before the key stages completed")
        raw = reply.config.get(SECAGG_UPDATE)
        if not isinstance(raw, bytes | bytearray):
            raise UpdateRejected("missing", "reply carries no masked update")
        # The length is exact and known from the model: check it before copying (issue 16).
        expected = sa_codec.wire_size(self.sizes, self.bits)
        if len(raw) != expected:
            raise UpdateRejected("encoding", f"masked input of {len(raw)} bytes, expected {expected}")
        blob = bytes(raw)
        try:
            segments = sa_codec.from_wire(blob, self.sizes, self.bits)
            self._unmasker.add(reply.site, segments)
        except CryptoError as exc:
            raise UpdateRejected("encoding", str(exc)) from exc
        return Folded.of("update.masked", [blob])

    # -- stage 4 -----------------------------------------------------------------------------------

    def stages_after(self) -> Iterator[Stage]:
        """Have the survivors sign the survivor list, then ask the signers for the unmasking shares."""
        u3 = self._survivor_list()
        if not u3:
            return
        doc = StageRequest(stage="consistency", u3=u3).model_dump_json()
        yield Stage("consistency", {s: doc for s in u3}, self._collect_signature, self._close_signatures)
        doc = StageRequest(stage="unmask", u3=u3, signatures=dict(self._signatures)).model_dump_json()
        yield Stage("unmask", {s: doc for s in sorted(self._signatures)}, self._collect_unmask)

    def _survivor_list(self) -> list[str]:
        return [] if self._unmasker is None else sorted(self._unmasker.u3)

    def _collect_signature(self, site: str, document: str) -> None:
        reply = _reply(document, site, "consistency")
        if reply.refused:
            raise UpdateRejected("protocol", f"site refused to sign the survivor list: {reply.refused}")
        if not reply.signature:
            raise UpdateRejected("protocol", "consistency reply without a signature")
        self._signatures[site] = reply.signature

    def _close_signatures(self) -> None:
        assert self.plan is not None
        if len(self._signatures) < self.plan.t:
            raise SecAggAbandoned(
                f"secure aggregation: {len(self._signatures)} survivors signed the survivor list, fewer than "
                f"t={self.plan.t}; round abandoned"
            )

    def _collect_unmask(self, site: str, document: str) -> None:
        reply = _reply(document, site, "unmask")
        if reply.refused:
            raise UpdateRejected("protocol", f"site refused to unmask: {reply.refused}")
        try:
            self._responses[site] = {owner: (kind, bytes.fromhex(h)) for owner, (kind, h) in reply.shares.items()}
        except ValueError as exc:
            raise UpdateRejected("encoding", "unmasking share is not hex") from exc

    def finish(self) -> RoundAggregate:
        """Unmask the sum; :class:`SecAggAbandoned` (nothing released) if it cannot be done."""
        if self._unmasker is None or self.plan is None:
            raise SecAggAbandoned("secure aggregation: the key stages did not complete; round abandoned")
        u = self._unmasker
        self.survivors = tuple(sorted(u.u3))
        # Every sampled site whose update is not in the sum, whatever stage it dropped at.
        self.dropped = tuple(sorted(set(self.spec.sites) - set(u.u3)))
        total = u.finish(self._responses)
        mean, _examples, sites = sa_codec.decode(total, self.sa)
        if sites != len(u.u3):
            raise SecAggAbandoned("secure aggregation: the unmasked contribution count disagrees with the survivors")
        tensors = unflatten(mean, [(n, s) for n, s in self.spec.layout])
        evaluation = sa_codec.decode_eval(total[2], sites, self.sa) if self.spec.eval_size else None
        return RoundAggregate(sites=self.survivors, mean=tensors, details=self.audit_details(), evaluation=evaluation)

    def audit_details(self) -> dict[str, object]:
        """Mode, n, t, k, the bounds, the survivors and the dropouts of this round."""
        out: dict[str, object] = {"mode": self.name, "sampled": len(self.spec.sites)}
        if self.plan is not None:
            out.update(self.plan.summary())
        out.update(survivors=list(self.survivors), dropped=list(self.dropped))
        return out


@register
class SecAggHEAggregator(SecAggAggregator):
    """``secagg+he``: the same stages; masked slots under BFV, summed as ciphertexts.

    The coordinator adds the signed BFV ciphertexts (validated completely before they touch
    the sum, like ``bfv``) and checks that the survivors' shares rebuild every secret it needs
    (:class:`Unmasker` over no values: commitments and public keys only), so a round the sites
    could not unmask is abandoned here. It forwards the encrypted sum with the unmasking
    material (:func:`fedinfra.crypto.secagg.he.bundle`); the sites decrypt, check and unmask.
    It learns neither an update nor the sum.
    """

    name = "secagg+he"
    hides_aggregate: ClassVar[bool] = True

    def __init__(self, spec: RoundSpec) -> None:
        super().__init__(spec)
        self._sum = encrypted_sum(
            spec, self.name, no_kit="secure_aggregation.mode = 'secagg+he' but the coordinator kit has no HE parameters"
        )
        # The Unmasker tracks U2/U3 and checks the shares: the update is ciphertext. Only the
        # evaluation sums (third segment, masked modulo 2^64 in plaintext) are unmasked here.
        n_eval = spec.eval_size
        self.sizes = [0, 0, n_eval] if n_eval else []
        self.bits = sa_codec.widths(self.sa, n_eval) if n_eval else []

    def _accept(self, reply: Reply) -> Folded:
        from fedinfra.crypto import envelope

        if self._unmasker is None:
            raise UpdateRejected("protocol", "encrypted input before the key stages completed")
        raw = reply.config.get(HE_UPDATE)
        if not isinstance(raw, bytes | bytearray):
            raise UpdateRejected("missing", "reply carries no encrypted masked update")
        blob = bytes(raw)
        u = self._unmasker
        if reply.site not in u.u2 or reply.site in u.u3:
            raise UpdateRejected("protocol", f"site {reply.site!r} did not share keys or already sent its input")
        try:
            header = envelope.decode(blob, kind=envelope.KIND_UPDATE)[0]
        except CryptoError as exc:
            raise UpdateRejected("ciphertext", str(exc)) from exc
        if header.sites != (reply.site,):
            raise UpdateRejected("protocol", "the encrypted update names another site than the sender")
        segments: list[Any] = []
        if self.spec.eval_size:
            raw_eval = reply.config.get(SECAGG_EVAL)
            if not isinstance(raw_eval, bytes | bytearray):
                raise UpdateRejected("missing", "reply carries no masked evaluation sums")
            expected = sa_codec.wire_size(self.sizes, self.bits)
            if len(raw_eval) != expected:  # exact, checked before the copy (issue 16)
                raise UpdateRejected("encoding", f"masked evaluation sums: {len(raw_eval)} bytes, expected {expected}")
            try:
                segments = sa_codec.from_wire(bytes(raw_eval), self.sizes, self.bits)
            except CryptoError as exc:
                raise UpdateRejected("encoding", str(exc)) from exc
        try:
            self._sum.add(blob)  # header, signature and every ciphertext checked before adding
        except CryptoError as exc:
            raise UpdateRejected("ciphertext", str(exc)) from exc
        u.add(reply.site, segments)  # lengths and site already checked: cannot fail after the add
        return Folded.of("update.ciphertext", [blob])

    def finish(self) -> RoundAggregate:
        """The encrypted sum with its unmasking material; :class:`SecAggAbandoned` if it cannot be unmasked."""
        from fedinfra.crypto.secagg.he import UnmaskMaterial, bundle

        if self._unmasker is None or self.plan is None or self.roster is None:
            raise SecAggAbandoned("secure aggregation: the key stages did not complete; round abandoned")
        u = self._unmasker
        self.survivors = tuple(sorted(u.u3))
        self.dropped = tuple(sorted(set(self.spec.sites) - set(u.u3)))
        total = u.finish(self._responses)  # rebuilds and checks every secret the sites will need
        material = UnmaskMaterial(
            sampled=len(self.spec.sites),
            roster=self.roster,
            u2=u.u2,
            u3=self.survivors,
            commitments={k: v for k, v in self._commitments.items() if k in u.u2},
            signatures={k: bytes.fromhex(v) for k, v in self._signatures.items()},
            responses=self._responses,
        )
        aggregate = bundle(self._sum.to_bytes(), material)
        evaluation = sa_codec.decode_eval(total[2], len(u.u3), self.sa) if self.spec.eval_size else None
        return RoundAggregate(
            sites=self.survivors, ciphertext=aggregate, details=self.audit_details(), evaluation=evaluation
        )


def _reply(document: str, site: str, stage: str) -> StageReply:
    try:
        reply = StageReply.model_validate_json(document)
    except ValueError as exc:
        raise UpdateRejected("encoding", f"malformed {stage} reply") from exc
    if reply.stage != stage or reply.site != site:
        raise UpdateRejected("protocol", f"{stage} reply names another stage or site")
    return reply


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


__all__ = ["SecAggAggregator", "SecAggHEAggregator", "plan_for"]
