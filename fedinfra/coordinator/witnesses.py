"""The coordinator's side of cosigning: ask sites to witness checkpoints, keep their cosignatures.

Every message to a site carries the newest checkpoint and a consistency proof from the
tree the site holds (:class:`~fedinfra.audit.cosign.CosignRequest`); the reply carries the
site's C2SP tlog-cosignature, which is verified against the cosigner key the site gave at
admission and stored beside the checkpoint. After the close checkpoint a last QUERY wave
collects cosignatures on it; the run is *final* only once a quorum of sites (the job's
``sites.cosign_quorum``, by default every site of the last round) has cosigned it -
without that, anyone holding the store could not tell the final entries from a rewrite
(DESIGN.md security model, "integrity of the record").
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedinfra.audit import AuditLog, Checkpoint
    from fedinfra.audit.cosign import ViewProof, Witness

_log = logging.getLogger("fedinfra.coordinator")

#: Waves of cosign requests at close: a site that missed the first (late reply) is asked again.
CLOSE_WAVES = 2


class Witnessing:
    """Cosigner keys of the admitted sites, requests to cosign, and the cosignatures received."""

    def __init__(self, log: AuditLog, pinned: Mapping[str, str] | None = None) -> None:
        self.log = log
        #: Site -> cosigner key text the coordinator kit pins (key ceremony); None: none pinned.
        self.pinned = pinned
        self.keys: dict[str, Witness] = {}
        self.last_round: list[str] = []
        self._view: tuple[int, str, ViewProof | None] | None = None

    def refusal(self, site: str, vkey: str) -> str:
        """Why ``site`` must be refused for the cosigner key it announced ("" if it may pass).

        A witness key is configured out of band, never learned from the witness (C2SP
        tlog-witness): with a key pinned by the ceremony (``keys request|issue|init``), a
        site announcing another key is refused - otherwise whoever answers as the site
        could cosign in its name. Sites the kit pins no key for (kits issued from older
        requests) keep the announced key. The reason names no announced value.
        """
        expected = (self.pinned or {}).get(site)
        if not expected:
            return ""
        if vkey.strip() != expected.strip():
            return "announced cosigner key is not the key the coordinator kit pins for this site"
        return ""

    def enrol(self, site: str, vkey: str) -> dict[str, str]:
        """Remember ``site``'s cosigner key; return the facts to log with its admission.

        A site without a cosigner key (an older client) is admitted but cannot count
        towards the quorum.
        """
        from fedinfra.audit.cosign import Witness
        from fedinfra.errors import ConfigError

        if not vkey:
            return {}
        try:
            witness = Witness.from_vkey(vkey)
        except ConfigError:
            return {"cosigner": "malformed"}
        self.keys[site] = witness
        return {"cosigner": witness.name, "cosigner_key_id": witness.key_id}

    def request(self, held_size: int, view: ViewProof | None = None) -> str:
        """The request (JSON) to cosign the newest checkpoint, proven from ``held_size``.

        ``view`` (:meth:`view_proof`) proves the model digest the head announces.
        """
        from fedinfra.audit.cosign import CosignRequest

        head = self.log.latest_checkpoint
        if head is None:
            return ""
        old = held_size if 0 <= held_size <= head.size else 0
        proof = self.log.consistency_proof(old, head.size) if old < head.size else []
        return CosignRequest(
            checkpoint=head.note, old_size=old, consistency=[base64.b64encode(h).decode() for h in proof], view=view
        ).model_dump_json()

    def view_proof(self, run_id: str, digest: str) -> ViewProof | None:
        """The head's announcement with its inclusion proof, if it announces ``digest`` for ``run_id``.

        ``None`` when the head is another writer's checkpoint (runs in parallel on one log) or
        announces another model: the caller then publishes a checkpoint that does. One proof
        per head and digest, shared by every site's message (RFC 9162 §2.1.3).
        """
        from fedinfra.audit.cosign import ViewProof

        head = self.log.latest_checkpoint
        if head is None:
            return None
        if self._view is not None and self._view[:2] == (head.size, digest):
            return self._view[2]
        entry = self.log.entry(head.size - 1)
        proof: ViewProof | None = None
        if (
            entry.type == "checkpoint.published"
            and entry.run_id == run_id
            and entry.details.get("model_sha256") == digest
        ):
            hashes = self.log.inclusion_proof(entry.seq, head.size)
            proof = ViewProof(
                seq=entry.seq,
                entry=entry.canonical().decode(),
                inclusion=[base64.b64encode(h).decode() for h in hashes],
            )
        self._view = (head.size, digest, proof)
        return proof

    def accept(self, site: str, reply: str) -> bool:
        """Verify and store ``site``'s cosignature (JSON); return whether it was valid.

        A missing or invalid cosignature is not fatal to the round: it just does not
        count, and the close quorum decides whether the run is final.
        """
        from pydantic import ValidationError

        from fedinfra.audit.cosign import CosignReply
        from fedinfra.errors import FedinfraError

        witness = self.keys.get(site)
        if not reply or witness is None:
            return False
        try:
            answer = CosignReply.model_validate_json(reply)
            self.log.add_cosignature(answer.tree_size, answer.line, witness)
        except (ValidationError, FedinfraError):
            return False
        return True

    def quorum(self, configured: int | None, fallback: Iterable[str]) -> int:
        """Cosigners the close checkpoint needs: the job's setting, else the last round's sites."""
        if configured is not None:
            return configured
        return max(1, len(self.last_round) or len(list(fallback)))

    def cosigners(self, checkpoint: Checkpoint) -> list[str]:
        """The sites whose valid cosignature on ``checkpoint`` is stored."""
        from fedinfra.audit.cosign import parse_line

        names = {parse_line(line)[0] for line in self.log.cosignatures(checkpoint.size)}
        return sorted(site for site, key in self.keys.items() if key.name in names)

    def close(
        self,
        checkpoint: Checkpoint,
        sites: list[Any],
        send: Callable[[list[Any]], Iterable[Any]],
        message_for: Callable[[Any], Any],
        reply_doc: Callable[[Any], str | None],
        *,
        waves: int = CLOSE_WAVES,
    ) -> list[str]:
        """Ask ``sites`` to cosign the close ``checkpoint``; return who did.

        ``message_for(site)`` builds the QUERY carrying the request, ``reply_doc(reply)``
        extracts the site's cosignature JSON from a reply (``None`` for an error reply).
        A site whose cosignature is missing after a wave (its reply came after the timeout,
        or was an error) is asked again, up to ``waves`` waves in all: a late site is
        collected instead of leaving the run not final.
        """
        by_node = {s.node_id: s for s in sites}
        for _ in range(waves):
            done = set(self.cosigners(checkpoint))
            missing = [s for s in sites if s.hello.site not in done]
            if not missing:
                break
            for reply in send([message_for(s) for s in missing]):
                site = by_node.get(reply.metadata.src_node_id)
                doc = reply_doc(reply)
                if site is not None and doc:
                    self.accept(site.hello.site, doc)
        return self.cosigners(checkpoint)


def cosign_close(
    coordinator: Any, grid: Any, sites: list[Any], state: Any, after: Callable[[Path, str], None] | None
) -> None:
    """End of a run: ``after`` (the report), sign any tail, then the last round's sites cosign it.

    The report's ``report.generated`` entry is appended after the close checkpoint, so the
    checkpoint the sites cosign is the newest one, signed after ``after`` returns: nothing
    the run wrote is left outside what the sites witnessed. A QUERY (phase ``cosign``)
    carries the request; the reply's cosignature is stored if valid. ``metrics.json`` gets
    ``cosigned_checkpoint`` and ``final``: true only with the quorum (logged otherwise).
    """
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from fedinfra.audit import AuditLog
    from fedinfra.audit.cosign import cosigned_note
    from fedinfra.config.wire import CONFIG, DOC, EvalReport
    from fedinfra.coordinator.persist import SiteBook

    if after is not None:
        after(coordinator.artifacts.dir, coordinator.run_id)
    settings = coordinator.settings
    coordinator.trail.log.close()  # ``after`` appended through its own handle: reload the tree
    log = AuditLog.open(settings.store, origin=settings.signer.name, signer=settings.signer)
    coordinator.trail.log = log
    witnessing: Witnessing = coordinator.witnessing
    witnessing.log = log
    final = log.latest_checkpoint
    if final is None or final.size != log.size:
        final = log.publish_checkpoint(run_id=coordinator.run_id, round=state.round)
    last = [s for s in sites if s.hello.site in witnessing.last_round] or sites

    def message_for(site: Any) -> Message:
        book = state.books.setdefault(site.hello.site, SiteBook())
        doc = coordinator._doc(state.round, "cosign", cosign=witnessing.request(book.seen_size))
        content = RecordDict({CONFIG: ConfigRecord({DOC: doc.model_dump_json()})})
        return Message(content, dst_node_id=site.node_id, message_type=MessageType.QUERY)

    def reply_doc(reply: Message) -> str | None:
        if reply.has_error():
            return None
        try:
            return EvalReport.model_validate_json(str(reply.content.config_records[CONFIG][DOC])).cosignature
        except (ValueError, KeyError):
            return None

    names = witnessing.close(final, last, lambda batch: coordinator._send(grid, batch), message_for, reply_doc)
    for site in last:  # only a site that cosigned is known to hold the close checkpoint
        if site.hello.site in names:
            state.books.setdefault(site.hello.site, SiteBook()).seen_size = final.size
    quorum = witnessing.quorum(coordinator.job.sites.cosign_quorum, [s.hello.site for s in last])
    if len(names) < quorum:
        _log.warning(
            "the close checkpoint (tree size %d) is cosigned by %d of %d sites: the run is not final",
            final.size,
            len(names),
            quorum,
        )
    lines = witnessing.log.cosignatures(final.size)
    metrics = coordinator.artifacts.metrics_path
    doc = json.loads(metrics.read_text(encoding="utf-8")) if metrics.exists() else {}
    doc["cosigned_checkpoint"] = {
        "tree_size": final.size,
        "note": cosigned_note(final, lines),
        "cosigners": names,
        "witness_keys": [witnessing.keys[n].vkey for n in names],
        "quorum": quorum,
    }
    doc["final"] = len(names) >= quorum
    coordinator.artifacts.write_json(metrics.name, doc)
