"""The public surface of fedinfra.audit is pinned (the lead wires it into the Flower apps)."""

from __future__ import annotations

import fedinfra.audit


def test_the_public_names_are_pinned() -> None:
    assert fedinfra.audit.__all__ == [
        "EVENT_TYPES", "Actor", "ActorKind", "AuditLog", "Checkpoint", "ConsistencyProof", "Entry", "Event",
        "EventType", "ExportSummary", "Outcome", "Receipt", "Signer", "Subject", "Verifier", "VerifyResult",
        "canonical_json", "export_log", "latest_checkpoint", "load_held_checkpoint",
        "load_public_key", "receipt_path", "verify_receipt",
        "verify_store",
    ]


def test_every_public_name_resolves() -> None:
    for name in fedinfra.audit.__all__:
        assert getattr(fedinfra.audit, name) is not None
