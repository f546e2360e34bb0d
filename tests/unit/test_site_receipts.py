"""A site checks the coordinator's receipts before training again, and fails closed in every branch."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedinfra.audit import Actor, AuditLog, Event, Signer, Subject, Verifier
from fedinfra.audit.cosign import Cosigner, CosignReply, CosignRequest
from fedinfra.errors import VerificationError
from fedinfra.site.receipts import (
    ALERTS_FILE,
    COSIGNER_KEY,
    cosign_checkpoint,
    cosigner,
    cosigner_name,
    cosigner_vkey,
    current_size,
    verify_and_store,
    witness,
)

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


# -- witnessing: cosign_checkpoint fails closed in every branch ---------------------------
# Found by mutation testing (issue 20): the witness path was only reached through a whole
# simulated federation. Each branch of cosign_checkpoint (RFC 9162 §2.1.4 consistency,
# §8.2 split views) is checked here on real signed checkpoints, with the whole message.

NOW = 1_767_225_600.9  # the injected clock; the cosignature carries int(NOW)


def _request(log: AuditLog, old: int, *, size: int | None = None) -> str:
    head = log.latest_checkpoint if size is None else log.checkpoint(size)
    assert head is not None
    proof = log.consistency_proof(old, head.size) if old < head.size else []
    return CosignRequest(
        checkpoint=head.note, old_size=old, consistency=[base64.b64encode(h).decode() for h in proof]
    ).model_dump_json()


def _cosign(request: str, tmp_path: Path, key: Verifier | None, kit: Path | None = None) -> str:
    return cosign_checkpoint(
        request,
        directory=tmp_path / "r",
        verifier_key=None if key is None else key.vkey,
        home=tmp_path / "home",
        site="s1",
        kit=kit,
        clock=lambda: NOW,
    )


def _alerts(tmp_path: Path) -> list[str]:
    path = tmp_path / "r" / ALERTS_FILE
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_nothing_asked_is_nothing_signed(tmp_path: Path) -> None:
    assert _cosign("", tmp_path, None) == ""
    assert not (tmp_path / "home").exists()


def test_a_cosign_request_without_a_coordinator_log_key_is_refused(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", signer)

    with pytest.raises(
        VerificationError, match=r"^asked to cosign a checkpoint but the site kit holds no coordinator log key$"
    ):
        _cosign(_request(log, 0), tmp_path, None)
    assert not (tmp_path / "home").exists()
    log.close()


def test_the_first_checkpoint_is_kept_and_cosigned_with_the_sites_own_key_at_the_clocks_time(
    tmp_path: Path, signer: Signer
) -> None:
    log = _log(tmp_path / "a.db", signer)

    reply = CosignReply.model_validate_json(_cosign(_request(log, 0), tmp_path, signer.verifier))

    own = Cosigner.load_or_create(tmp_path / "home" / COSIGNER_KEY, "fedinfra-site.s1")
    assert reply.tree_size == log.size == 7
    assert own.witness.verify_line(log.latest_checkpoint, reply.line) == int(NOW)  # type: ignore[arg-type]
    assert reply.line.split(" ")[1] == cosigner_name("s1") == "fedinfra-site.s1"
    assert current_size(tmp_path / "r", signer.verifier) == 7
    log.close()


def test_a_kits_cosigner_key_is_used_instead_of_one_in_home(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", signer)
    kit = tmp_path / "kit"
    kit.mkdir()
    ceremony = Cosigner.load_or_create(kit / COSIGNER_KEY, cosigner_name("s1"))

    reply = CosignReply.model_validate_json(_cosign(_request(log, 0), tmp_path, signer.verifier, kit=kit))

    assert ceremony.witness.verify_line(log.latest_checkpoint, reply.line) == int(NOW)  # type: ignore[arg-type]
    assert not (tmp_path / "home" / COSIGNER_KEY).exists()
    assert cosigner(tmp_path / "home", "s1", tmp_path / "no-kit").vkey != ceremony.vkey
    log.close()


def test_a_checkpoint_extending_the_held_one_is_cosigned_and_becomes_the_held_one(
    tmp_path: Path, signer: Signer
) -> None:
    log = _log(tmp_path / "a.db", signer)
    _cosign(_request(log, 0, size=4), tmp_path, signer.verifier)

    reply = CosignReply.model_validate_json(_cosign(_request(log, 4), tmp_path, signer.verifier))

    assert reply.tree_size == 7
    assert current_size(tmp_path / "r", signer.verifier) == 7
    assert _alerts(tmp_path) == []
    log.close()


def test_the_held_checkpoint_shown_again_is_cosigned_again(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", signer)
    _cosign(_request(log, 0), tmp_path, signer.verifier)

    reply = CosignReply.model_validate_json(_cosign(_request(log, 7), tmp_path, signer.verifier))

    assert reply.tree_size == 7
    assert _alerts(tmp_path) == []
    log.close()


@pytest.mark.parametrize("break_it", ["not json", "foreign key", "bad base64"])
def test_a_malformed_or_foreign_request_is_refused(tmp_path: Path, signer: Signer, break_it: str) -> None:
    log = _log(tmp_path / "a.db", signer if break_it != "foreign key" else Signer.generate(ORIGIN))
    request = json.loads(_request(log, 0, size=4) if break_it != "not json" else "{}")
    if break_it == "bad base64":
        request = json.loads(_request(log, 4))
        request["consistency"][0] = "*" + request["consistency"][0]  # a lax decoder would skip the "*"

    with pytest.raises(
        VerificationError, match=r"^the checkpoint to cosign is malformed or not signed by the log key$"
    ):
        _cosign(json.dumps(request), tmp_path, signer.verifier)
    assert current_size(tmp_path / "r", signer.verifier) == 0
    log.close()


def test_an_older_checkpoint_than_the_held_one_is_a_split_view_recorded_in_the_alerts(
    tmp_path: Path, signer: Signer
) -> None:
    log = _log(tmp_path / "a.db", signer)
    _cosign(_request(log, 0), tmp_path, signer.verifier)
    message = (
        "split view: the coordinator shows an older checkpoint than one held "
        "(site holds tree size 7, coordinator showed 4); refusing to train"
    )

    with pytest.raises(VerificationError, match=f"^{re.escape(message)}$"):
        _cosign(_request(log, 0, size=4), tmp_path, signer.verifier)
    (alert,) = _alerts(tmp_path)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ " + re.escape(message), alert)
    assert current_size(tmp_path / "r", signer.verifier) == 7
    log.close()


def test_two_checkpoints_of_one_size_that_differ_are_a_split_view(tmp_path: Path, signer: Signer) -> None:
    honest = _log(tmp_path / "a.db", signer)
    fork = _log(tmp_path / "b.db", signer, site="site-z")  # same key and size, another history
    _cosign(_request(honest, 0), tmp_path, signer.verifier)
    message = (
        "split view: two signed checkpoints of one tree size differ "
        "(site holds tree size 7, coordinator showed 7); refusing to train"
    )

    with pytest.raises(VerificationError, match=f"^{re.escape(message)}$"):
        _cosign(_request(fork, 7), tmp_path, signer.verifier)
    assert [a.split(" ", 1)[1] for a in _alerts(tmp_path)] == [message]
    honest.close()
    fork.close()


def test_a_proof_from_another_size_than_the_held_one_is_refused(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", signer, rounds=3)
    _cosign(_request(log, 0, size=4), tmp_path, signer.verifier)

    with pytest.raises(
        VerificationError, match=r"^consistency proof starts at tree size 7, the site holds 4$"
    ):
        _cosign(_request(log, 7), tmp_path, signer.verifier)
    assert current_size(tmp_path / "r", signer.verifier) == 4
    log.close()


def test_a_larger_checkpoint_that_does_not_extend_the_held_one_is_a_split_view(
    tmp_path: Path, signer: Signer
) -> None:
    honest = _log(tmp_path / "a.db", signer)
    fork = _log(tmp_path / "b.db", signer, rounds=3, site="site-z")
    _cosign(_request(honest, 0, size=4), tmp_path, signer.verifier)
    _cosign(_request(honest, 4), tmp_path, signer.verifier)
    message = (
        "split view: the new checkpoint does not extend the held one "
        "(site holds tree size 7, coordinator showed 10); refusing to train"
    )

    with pytest.raises(VerificationError, match=f"^{re.escape(message)}$"):
        _cosign(_request(fork, 7), tmp_path, signer.verifier)
    assert len(_alerts(tmp_path)) == 1
    assert current_size(tmp_path / "r", signer.verifier) == 7
    honest.close()
    fork.close()


def test_a_receipt_that_does_not_verify_names_its_entry(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", Signer.generate(ORIGIN))

    with pytest.raises(VerificationError, match=r"^audit receipt for entry 1 did not verify$"):
        verify_and_store([log.receipt(1).to_json()], directory=tmp_path / "r", verifier_key=signer.verifier)
    log.close()


def test_receipts_without_a_key_are_refused_with_the_whole_message(tmp_path: Path, signer: Signer) -> None:
    log = _log(tmp_path / "a.db", signer)

    with pytest.raises(
        VerificationError, match=r"^received audit receipts but the site kit holds no coordinator log key$"
    ):
        verify_and_store([log.receipt(1).to_json()], directory=tmp_path / "r", verifier_key=None)
    log.close()


@pytest.mark.parametrize("with_kit", [False, True])
def test_witness_cosigns_for_a_site_context_with_its_log_key_receipts_dir_and_own_key(
    tmp_path: Path, signer: Signer, with_kit: bool
) -> None:
    """The site context supplies the directory, the pinned log key, the home and the kit key.

    A stand-in context (the five attributes ``witness`` reads) replaces the site's data and job,
    not the witnessing under test.
    """
    log = _log(tmp_path / "a.db", signer)
    kit = tmp_path / "kit" if with_kit else None
    if kit is not None:
        kit.mkdir()
        Cosigner.load_or_create(kit / COSIGNER_KEY, cosigner_name("s1"))
    ctx = SimpleNamespace(
        name="s1",
        home=SimpleNamespace(root=tmp_path / "home", kit=kit),
        receipts_dir=lambda run_id: tmp_path / "receipts" / run_id,
        audit_key=lambda: signer.verifier.vkey,
    )

    reply = CosignReply.model_validate_json(witness(ctx, _request(log, 0), "run-9"))  # type: ignore[arg-type]

    key = Cosigner.load_or_create((kit or tmp_path / "home") / COSIGNER_KEY, cosigner_name("s1"))
    assert abs(key.witness.verify_line(log.latest_checkpoint, reply.line) - time.time()) < 60  # type: ignore[arg-type]
    assert cosigner_vkey(ctx) == key.vkey  # type: ignore[arg-type]
    assert current_size(tmp_path / "receipts" / "run-9", signer.verifier) == 7
    assert (tmp_path / "home" / COSIGNER_KEY).exists() is not with_kit
    log.close()


def test_a_split_view_is_logged_as_an_error_and_stamped_in_utc_whatever_the_local_zone(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The alert's ``Z`` stamp is compared with other sites' logs and the coordinator's (UTC)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    log = _log(tmp_path / "a.db", signer)
    _cosign(_request(log, 0), tmp_path, signer.verifier)

    try:
        with caplog.at_level(logging.ERROR, logger="fedinfra.site.audit"), pytest.raises(VerificationError):
            _cosign(_request(log, 0, size=4), tmp_path, signer.verifier)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()

    (record,) = caplog.records
    assert record.getMessage() == (
        "split view: the coordinator shows an older checkpoint than one held "
        "(site holds tree size 7, coordinator showed 4); refusing to train"
    )
    stamp = datetime.strptime(_alerts(tmp_path)[0].split(" ")[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(stamp - datetime.now(UTC)) < timedelta(minutes=5)
    log.close()


def test_receipts_and_the_cosigning_key_go_into_directories_made_with_their_parents(
    tmp_path: Path, signer: Signer
) -> None:
    """A fresh site home has neither its receipts directory nor its parents yet."""
    log = _log(tmp_path / "a.db", signer)
    receipts = tmp_path / "home" / "receipts" / "log-1"

    assert verify_and_store([log.receipt(1).to_json()], directory=receipts, verifier_key=signer.verifier) == 1
    key = cosigner(tmp_path / "fresh" / "home", "s1")

    assert current_size(receipts, signer.verifier) == log.size
    assert (tmp_path / "fresh" / "home" / COSIGNER_KEY).is_file()
    assert key.vkey.startswith("fedinfra-site.s1+")
    log.close()


def test_a_split_view_inside_one_batch_of_receipts_is_refused(tmp_path: Path, signer: Signer) -> None:
    """Each receipt of a batch is checked against the one before it, not only against the disk."""
    honest = _log(tmp_path / "a.db", signer)
    fork = _log(tmp_path / "b.db", signer, rounds=3, site="site-z")
    batch = [honest.receipt(3).to_json(), fork.receipt(5, since=honest.size).to_json()]

    with pytest.raises(VerificationError, match=r"^audit receipt for entry 5 did not verify$"):
        verify_and_store(batch, directory=tmp_path / "r", verifier_key=signer.verifier)
    assert current_size(tmp_path / "r", signer.verifier) == honest.size
    honest.close()
    fork.close()


def test_the_held_checkpoint_shown_again_with_a_proof_from_an_older_size_is_cosigned(
    tmp_path: Path, signer: Signer
) -> None:
    """The coordinator's idea of what the site holds can lag; the same signed tree is still the same tree."""
    log = _log(tmp_path / "a.db", signer)
    _cosign(_request(log, 0), tmp_path, signer.verifier)

    reply = CosignReply.model_validate_json(_cosign(_request(log, 4), tmp_path, signer.verifier))

    assert reply.tree_size == 7
    assert _alerts(tmp_path) == []
    log.close()


# -- issue 16: the checkpoint a site cosigns must record the model it was sent -------------------

MODEL = "ab" * 32


def _announcing(path: Path, signer: Signer, model: str = MODEL, run_id: str = "run-1") -> AuditLog:
    """A log whose head checkpoint announces ``model`` for ``run_id`` (as the coordinator publishes it)."""
    log = _log(path, signer)
    log.publish_checkpoint(run_id=run_id, round=2, now=T0, model_sha256=model)
    return log


def _with_view(log: AuditLog, old: int, view: object = "real") -> str:
    from fedinfra.coordinator.witnesses import Witnessing

    witnessing = Witnessing(log)
    proof = witnessing.view_proof("run-1", MODEL) if view == "real" else view
    return witnessing.request(old, proof)  # type: ignore[arg-type]


def _cosign_model(request: str, tmp_path: Path, key: Verifier, model: str | None = MODEL) -> str:
    return cosign_checkpoint(
        request,
        directory=tmp_path / "r",
        verifier_key=key.vkey,
        home=tmp_path / "home",
        site="s1",
        clock=lambda: NOW,
        model=model,
        run_id="run-1",
    )


def test_a_checkpoint_announcing_the_model_the_site_was_sent_is_cosigned(tmp_path: Path, signer: Signer) -> None:
    log = _announcing(tmp_path / "log.sqlite", signer)
    reply = CosignReply.model_validate_json(_cosign_model(_with_view(log, 0), tmp_path, signer.verifier))
    assert reply.tree_size == log.size
    assert _alerts(tmp_path) == []
    # The wire stays bounded: one proof of log2(size) hashes and an entry of a few hundred bytes.
    request = CosignRequest.model_validate_json(_with_view(log, 0))
    assert request.view is not None
    assert len(request.view.inclusion) <= log.size.bit_length()
    assert len(request.view.entry) < 512


def test_a_checkpoint_recording_another_model_is_refused_and_recorded_in_the_alerts(
    tmp_path: Path, signer: Signer
) -> None:
    log = _announcing(tmp_path / "log.sqlite", signer)
    with pytest.raises(VerificationError, match="the log records model abababababababab…, this site was sent cdcd"):
        _cosign_model(_with_view(log, 0), tmp_path, signer.verifier, model="cd" * 32)
    (alert,) = _alerts(tmp_path)
    assert "model view" in alert
    assert "refusing to cosign" in alert
    assert not list((tmp_path / "r").glob("checkpoint-*.note"))  # nothing held, nothing cosigned


def _entry_of_another_run(log: AuditLog) -> str:
    return log.entry(log.size - 1).canonical().decode().replace('"run_id":"run-1"', '"run_id":"run-2"')


@pytest.mark.parametrize(
    "hostile",
    ["missing", "not-the-last-leaf", "edited-entry", "another-run", "bad-base64", "short-proof", "no-request"],
)
def test_a_missing_or_hostile_model_proof_is_refused_with_an_alert(
    tmp_path: Path, signer: Signer, hostile: str
) -> None:
    from fedinfra.audit.cosign import ViewProof

    log = _announcing(tmp_path / "log.sqlite", signer)
    real = CosignRequest.model_validate_json(_with_view(log, 0)).view
    assert real is not None
    proofs: dict[str, object] = {
        "missing": None,
        "not-the-last-leaf": real.model_copy(update={"seq": real.seq - 1}),
        "edited-entry": real.model_copy(update={"entry": real.entry.replace(MODEL, "cd" * 32)}),
        "another-run": real.model_copy(update={"entry": _entry_of_another_run(log)}),
        "bad-base64": real.model_copy(update={"inclusion": ["%%%"]}),
        "short-proof": real.model_copy(update={"inclusion": real.inclusion[:-1]}),
    }
    request = "" if hostile == "no-request" else _with_view(log, 0, proofs[hostile])
    with pytest.raises(VerificationError, match="model view"):
        _cosign_model(request, tmp_path, signer.verifier)
    assert len(_alerts(tmp_path)) == 1
    # Oversized proofs never reach the site's checks: the request itself is refused.
    for too_big in ({"entry": "x" * 4097}, {"inclusion": ["AA=="] * 65}):
        with pytest.raises(ValueError):
            ViewProof.model_validate({**real.model_dump(), **too_big})


def test_another_runs_announcement_at_the_head_is_refused_and_a_request_without_a_model_checks_none(
    tmp_path: Path, signer: Signer
) -> None:
    from fedinfra.coordinator.witnesses import Witnessing

    log = _announcing(tmp_path / "log.sqlite", signer, run_id="run-2")
    assert Witnessing(log).view_proof("run-1", MODEL) is None  # the coordinator must publish its own
    forged = Witnessing(log).view_proof("run-2", MODEL)
    with pytest.raises(VerificationError, match="not this run's announcement"):
        _cosign_model(Witnessing(log).request(0, forged), tmp_path, signer.verifier)
    # Caught once, the site cosigns nothing more of the run, not even a query that brings no model.
    with pytest.raises(VerificationError, match="cosigns nothing more of this run"):
        _cosign_model(_request(log, 0), tmp_path, signer.verifier, model=None)
    # A site that caught nothing cosigns such a query (the close's cosign wave) without a proof.
    assert _cosign_model(_request(log, 0), tmp_path / "other", signer.verifier, model=None)
