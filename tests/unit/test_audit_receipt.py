"""Receipts: what a site checks before it trains again."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedinfra.audit import (
    Actor,
    AuditLog,
    Event,
    Receipt,
    Signer,
    Subject,
    latest_checkpoint,
    receipt_path,
    verify_receipt,
)
from fedinfra.errors import VerificationError

ORIGIN = "fedinfra.test/log"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _update(site: str, round_: int) -> Event:
    return Event(
        run_id="run-1",
        round=round_,
        type="update.received",
        actor=Actor(kind="site", id=site),
        outcome="success",
        subject=Subject(artifact="update", sha256=f"{round_:064x}", size=1),
    )


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def log(tmp_path: Path, signer: Signer) -> AuditLog:
    log = AuditLog.open(tmp_path / "audit.db", origin=ORIGIN, signer=signer)
    log.publish_checkpoint(now=T0)
    for round_ in range(3):
        log.append_many([_update("site-a", round_), _update("site-b", round_)], now=T0, publish=True)
    return log


def test_each_rounds_receipt_extends_the_last_one_the_site_holds(log: AuditLog, signer: Signer) -> None:
    held = log.checkpoint(1)
    for seq in (1, 4, 7):  # site-a's update in rounds 0, 1, 2 ... all proven against the newest head
        receipt = log.receipt(seq, since=held.size)
        held = verify_receipt(receipt, verifier_key=signer.verifier, previous=held)
    assert held.size == log.size
    log.close()


def test_a_receipt_survives_json_and_disk(log: AuditLog, signer: Signer, tmp_path: Path) -> None:
    receipt = log.receipt(4)
    log.close()
    path = receipt_path(tmp_path / "receipts", receipt)

    receipt.save(path)

    assert Receipt.load(path) == receipt
    assert latest_checkpoint(tmp_path / "receipts", signer.vkey) == verify_receipt(receipt, verifier_key=signer.vkey)


def test_a_receipt_checked_with_another_key_is_refused(log: AuditLog) -> None:
    receipt = log.receipt(4)
    log.close()

    with pytest.raises(VerificationError, match="receipt does not verify"):
        verify_receipt(receipt, verifier_key=Signer.generate(ORIGIN).vkey)


def test_a_receipt_whose_entry_was_altered_is_refused(log: AuditLog, signer: Signer) -> None:
    receipt = log.receipt(4)
    log.close()
    forged = receipt.model_copy(update={"entry": receipt.entry.model_copy(update={"outcome": "failure"})})

    with pytest.raises(VerificationError, match="receipt does not verify"):
        verify_receipt(forged, verifier_key=signer.vkey)


def test_a_receipt_with_a_flipped_proof_bit_is_refused(log: AuditLog, signer: Signer) -> None:
    receipt = log.receipt(4)
    log.close()
    first = bytearray(base64.b64decode(receipt.inclusion[0]))
    first[0] ^= 1
    proof = [base64.b64encode(bytes(first)).decode(), *receipt.inclusion[1:]]

    with pytest.raises(VerificationError):
        verify_receipt(receipt.model_copy(update={"inclusion": proof}), verifier_key=signer.vkey)


def test_a_split_view_is_refused(tmp_path: Path, log: AuditLog, signer: Signer) -> None:
    # The coordinator shows this site a different history of the same size: same key, other entries.
    held = log.latest_checkpoint
    assert held is not None
    log.close()
    other = AuditLog.open(tmp_path / "other.db", origin=ORIGIN, signer=signer)
    other.publish_checkpoint(now=T0)
    for round_ in range(4):
        other.append_many([_update("site-a", round_ + 10), _update("site-b", round_)], now=T0, publish=True)
    receipt = other.receipt(4, since=held.size)
    other.close()

    with pytest.raises(VerificationError):
        verify_receipt(receipt, verifier_key=signer.vkey, previous=held)


def test_a_receipt_without_the_consistency_proof_is_refused(log: AuditLog, signer: Signer) -> None:
    held = log.checkpoint(4)
    receipt = log.receipt(7)
    log.close()

    with pytest.raises(VerificationError):
        verify_receipt(receipt, verifier_key=signer.vkey, previous=held)


def test_a_log_that_shrank_is_refused(log: AuditLog, signer: Signer) -> None:
    newest = log.latest_checkpoint
    old = Receipt(
        entry=log.entry(1),
        tree_size=4,
        inclusion=[base64.b64encode(p).decode() for p in log.inclusion_proof(1, 4)],
        checkpoint=log.checkpoint(4).note,
    )
    log.close()

    verify_receipt(old, verifier_key=signer.vkey)  # valid on its own ...
    with pytest.raises(VerificationError):
        verify_receipt(old, verifier_key=signer.vkey, previous=newest)  # ... but older than what the site holds


@pytest.mark.parametrize(
    "text",
    ["", "{}", '{"format": "fedinfra-receipt/1"}', "not json", '{"format": "fedinfra-receipt/9"}'],
)
def test_a_malformed_receipt_is_a_one_line_verification_error(text: str) -> None:
    with pytest.raises(VerificationError, match=r"^site\.json: malformed receipt") as info:
        Receipt.from_json(text, source="site.json")
    assert "\n" not in str(info.value)
