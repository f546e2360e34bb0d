"""The one adapter between report generation and :mod:`fedinfra.audit`.

Reading: the store is verified in full first (:func:`fedinfra.audit.verify.verify_store`:
canonical form, hashes, sequence, every checkpoint's signature and consistency); a store
that fails is refused with the verifier's message, never reported on. The entries are then
read once more and the Merkle root of what was read is checked against every signed
checkpoint (RFC 9162 §2.1.1), so the report describes exactly the bytes the signatures
cover even if the store changed between the two reads.

Writing: the report's SHA-256 is appended as a ``report.generated`` entry (PCI DSS
v4.0.1 10.2.1.3 asks that access to audit logs be recorded; a report is such an access).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fedinfra.errors import VerificationError
from fedinfra.report.records import AuditRecord, Checkpoint, VerifiedLog

_TAMPERED = "audit entries read for the report do not match the signed checkpoints; run `fedinfra audit verify`"


def store_name(target: str | Path) -> str:
    """How the report names the store in its ``audit verify`` command (no directories, no passwords)."""
    from fedinfra.audit.store import is_url

    if is_url(target):
        text = str(target)
        scheme, _, rest = text.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"
    return Path(target).name


def read_verified(target: str | Path, *, public_key: str | Path | None = None) -> VerifiedLog:
    """Verify the log at ``target`` and return its entries and checkpoints.

    Raises
    ------
    VerificationError
        If any check of the log fails (the message names the first bad entry or checkpoint).
    StoreError
        If ``target`` is missing or not an audit store.
    ConfigError
        If ``public_key`` cannot be read.
    """
    from fedinfra.audit.canonical import parse_canonical
    from fedinfra.audit.checkpoint import Checkpoint as SignedCheckpoint
    from fedinfra.audit.merkle import leaf_hash
    from fedinfra.audit.note import Verifier
    from fedinfra.audit.sources import open_source
    from fedinfra.audit.tree import MerkleTree
    from fedinfra.audit.verify import load_public_key, verify_store

    result = verify_store(target, public_key=public_key)
    result.raise_for_problem()
    source = open_source(target)
    try:
        meta = source.meta()
        stored_cps = source.checkpoints()
        raw = list(source.entries())
        cosignatures = source.cosignatures()
    finally:
        source.close()
    if isinstance(public_key, Path):
        verifier = load_public_key(public_key, origin=meta.get("origin"))
    else:
        verifier = Verifier.from_vkey(public_key if isinstance(public_key, str) else meta.get("vkey", ""))
    tree = MerkleTree(leaf_hash(data) for _, data, _ in raw)
    checkpoints = []
    for row in stored_cps:
        cp = SignedCheckpoint.from_note(row.note, verifier)
        if cp.size > tree.size or tree.root(cp.size) != cp.root_hash:
            raise VerificationError(_TAMPERED)
        checkpoints.append(
            Checkpoint(
                tree_size=cp.size, root_hash=cp.root_b64, key_name=verifier.name, key_id=verifier.key_id, note=cp.note
            )
        )
    records = [_record(index, parse_canonical(data)) for index, (_, data, _) in enumerate(raw)]
    return VerifiedLog(
        origin=str(meta.get("origin")),
        records=records,
        checkpoints=checkpoints,
        public_key=verifier.vkey,
        store_name=store_name(target),
        cosigners=_cosigner_names(cosignatures),
    )


def _cosigner_names(lines: list[tuple[int, str]]) -> dict[int, list[str]]:
    """``tree size -> sorted cosigner names`` from C2SP signature lines (``— name base64``)."""
    out: dict[int, set[str]] = {}
    for size, line in lines:
        if line.startswith("— "):
            out.setdefault(size, set()).add(line[2:].split(" ", 1)[0])
    return {size: sorted(names) for size, names in sorted(out.items())}


def _record(index: int, obj: dict[str, object]) -> AuditRecord:
    actor = obj.get("actor")
    actor = actor if isinstance(actor, dict) else {}
    subject = obj.get("subject")
    details = obj.get("details")
    rnd = obj.get("round")
    run_id = obj.get("run_id")
    key_id = actor.get("key_id")
    return AuditRecord(
        index=index,
        seq=int(str(obj["seq"])),
        ts=str(obj["ts"]),
        run_id=None if run_id is None else str(run_id),
        round=rnd if isinstance(rnd, int) else None,
        type=str(obj["type"]),
        actor_kind=str(actor.get("kind")),
        actor_id=str(actor.get("id")),
        actor_key_id=None if key_id is None else str(key_id),
        outcome=str(obj["outcome"]),
        subject=subject if isinstance(subject, dict) else None,
        details=details if isinstance(details, dict) else {},
    )


def record_report(
    target: str | Path,
    *,
    run_id: str,
    digests: Mapping[str, str],
    json_size: int,
    covers_tree_size: int,
    actor_kind: str = "operator",
    actor_id: str = "fedinfra-report",
) -> int:
    """Append ``report.generated`` carrying the SHA-256 of every format; return its seq.

    The subject is the JSON form (``report.json``): it is byte-for-byte reproducible from
    the store, so anyone can regenerate it and compare the hash.
    """
    from fedinfra.audit.entry import Actor, Subject
    from fedinfra.audit.log import AuditLog

    with AuditLog.open(target) as log:
        entry = log.append(
            run_id=run_id,
            round=None,
            type="report.generated",
            actor=Actor(kind=actor_kind, id=actor_id),
            outcome="success",
            subject=Subject(artifact="report.json", sha256=digests["json"], size=json_size),
            details={"sha256": dict(sorted(digests.items())), "covers_tree_size": covers_tree_size},
        )
    return entry.seq
