"""Tamper-evident audit trail (layer L2): an RFC 9162 Merkle log with signed checkpoints.

Every event of a run is an entry (canonical JSON, RFC 8785) and a leaf of a Merkle tree
(RFC 9162 §2.1); the coordinator signs tree heads as C2SP tlog-checkpoints in C2SP signed
notes with Ed25519; sites receive receipts (inclusion + consistency proofs) and anyone with
the public key can replay the whole log (:func:`verify_store`, ``fedinfra audit verify``).

Pure functions (:mod:`~fedinfra.audit.merkle`, :mod:`~fedinfra.audit.canonical`) are kept
apart from state (:class:`AuditLog` over :mod:`~fedinfra.audit.store`).
"""

from fedinfra.audit.canonical import canonical_json
from fedinfra.audit.checkpoint import Checkpoint
from fedinfra.audit.entry import EVENT_TYPES, Actor, ActorKind, Entry, Event, EventType, Outcome, Subject
from fedinfra.audit.export import ExportSummary, export_log
from fedinfra.audit.log import AuditLog
from fedinfra.audit.note import Signer, Verifier
from fedinfra.audit.receipt import ConsistencyProof, Receipt, latest_checkpoint, receipt_path, verify_receipt
from fedinfra.audit.verify import VerifyResult, load_held_checkpoint, load_public_key, verify_store

__all__ = [
    "EVENT_TYPES",
    "Actor",
    "ActorKind",
    "AuditLog",
    "Checkpoint",
    "ConsistencyProof",
    "Entry",
    "Event",
    "EventType",
    "ExportSummary",
    "Outcome",
    "Receipt",
    "Signer",
    "Subject",
    "Verifier",
    "VerifyResult",
    "canonical_json",
    "export_log",
    "latest_checkpoint",
    "load_held_checkpoint",
    "load_public_key",
    "receipt_path",
    "verify_receipt",
    "verify_store",
]
