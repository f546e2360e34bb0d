"""A site checks the coordinator's receipts before training again, and fails closed in every branch."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedinfra.audit import Actor, AuditLog, Event, Signer, Subject
from fedinfra.errors import VerificationError
from fedinfra.site.receipts import current_size, verify_and_store

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


def _log(path: Path, signer: Signer, rounds: int = 2, site: str = "site-b") -> AuditLog:
    log = AuditLog.open(path, origin=ORIGIN, signer=signer)
    log.publish_checkpoint(now=T0)
    for round_ in range(rounds):
        log.append_many([_update("site-a", round_), _update(site, round_)], now=T0, publish=True)
    return log


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


def test_no_receipts_verify_nothing_and_write_nothing(tmp_path: Path, signer: Signer) -> None:
    assert verify_and_store([], directory=tmp_path / "r", verifier_key=signer.verifier) == 0
    assert not (tmp_path / "r").exists()


def test_receipts_without_a_coordinator_log_key_are_refused(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", signer)
    receipt = log.receipt(1).to_json()

    with pytest.raises(VerificationError, match="no coordinator log key"):
        verify_and_store([receipt], directory=tmp_path / "r", verifier_key=None)
    assert not (tmp_path / "r").exists()
    log.close()


def test_valid_receipts_are_verified_in_order_and_kept(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", signer)
    receipts = [log.receipt(1).to_json(), log.receipt(3).to_json()]

    assert verify_and_store(receipts, directory=tmp_path / "r", verifier_key=signer.verifier) == 2

    assert len(list((tmp_path / "r").iterdir())) >= 2
    assert current_size(tmp_path / "r", signer.verifier) == log.size
    log.close()


def test_a_receipt_signed_by_another_key_is_refused(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", Signer.generate(ORIGIN))

    with pytest.raises(VerificationError, match="did not verify"):
        verify_and_store([log.receipt(1).to_json()], directory=tmp_path / "r", verifier_key=signer.verifier)
    assert current_size(tmp_path / "r", signer.verifier) == 0
    log.close()


def test_a_receipt_whose_entry_was_edited_is_refused(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", signer)
    doc = json.loads(log.receipt(1).to_json())
    doc["entry"]["round"] = 7

    with pytest.raises(VerificationError):
        verify_and_store([json.dumps(doc)], directory=tmp_path / "r", verifier_key=signer.verifier)
    log.close()


def test_a_malformed_receipt_is_refused(tmp_path: Path, signer: Signer) -> None:
    with pytest.raises(VerificationError):
        verify_and_store(["{not json"], directory=tmp_path / "r", verifier_key=signer.verifier)


def test_a_split_view_is_refused_once_the_site_holds_a_checkpoint(tmp_path: Path, signer: Signer) -> None:
    honest = _log(tmp_path / "a.db", signer)
    verify_and_store([honest.receipt(3).to_json()], directory=tmp_path / "r", verifier_key=signer.verifier)
    fork = _log(tmp_path / "b.db", signer, rounds=3, site="site-z")  # same key, different history

    with pytest.raises(VerificationError):
        verify_and_store(
            [fork.receipt(5, since=honest.size).to_json()], directory=tmp_path / "r", verifier_key=signer.verifier
        )
    assert current_size(tmp_path / "r", signer.verifier) == honest.size
    honest.close()
    fork.close()


def test_without_a_key_the_site_holds_no_checkpoint(tmp_path: Path) -> None:
    assert current_size(tmp_path, None) == 0
