"""Edges of :mod:`fedinfra.audit.verify` that the tamper and witness suites do not reach.

Every refusal is checked by its position and its exact words (what an auditor reads), and
every counter of :class:`~fedinfra.audit.VerifyResult` by its value on a small real log.
"""

from __future__ import annotations

import base64
import json
import multiprocessing.spawn
import shlex
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

from fedinfra.audit import Actor, AuditLog, Checkpoint, EventType, Signer, Verifier, verify_store
from fedinfra.audit.cosign import Cosigner, Witness
from fedinfra.audit.sources import StoreSource
from fedinfra.audit.verify import VerifyResult, load_held_checkpoint, load_public_key
from fedinfra.errors import ConfigError, VerificationError

ORIGIN = "fedinfra.test/verify"
COORD = Actor(kind="coordinator", id="coord")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


def _store(
    path: Path, signer: Signer, *, rounds: int = 2, tail: Sequence[tuple[str, EventType]] = ()
) -> list[Checkpoint]:
    """A log of ``rounds`` rounds of run-1 (two entries and a checkpoint each), then unsigned ``tail`` entries."""
    checkpoints = []
    later = T0 + timedelta(hours=1)
    with AuditLog.open(path, origin=ORIGIN, signer=signer) as log:
        for rnd in range(rounds):
            now = T0 + timedelta(minutes=rnd)
            first: EventType = "run.created" if rnd == 0 else "round.started"
            log.append(run_id="run-1", round=rnd, type=first, actor=COORD, outcome="success", now=now)
            log.append(run_id="run-1", round=rnd, type="aggregation.completed", actor=COORD, outcome="success", now=now)
            checkpoints.append(log.publish_checkpoint(run_id="run-1", round=rnd, now=now))
        for run_id, type_ in tail:
            log.append(run_id=run_id, round=None, type=type_, actor=COORD, outcome="success", now=later)
    return checkpoints


def _sql(path: Path, sql: str, args: tuple[object, ...] = ()) -> None:
    """Run one statement on the store, past its append-only triggers (an attacker holding the file)."""
    with sqlite3.connect(path) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute(sql, args)


# --- held checkpoints and pinned keys read from files -----------------------------------------


def test_a_held_checkpoint_file_may_be_a_bare_note_or_a_receipt(tmp_path: Path, signer: Signer) -> None:
    note = _store(tmp_path / "a.db", signer)[-1].note
    bare = tmp_path / "note.txt"
    bare.write_text(note)
    assert load_held_checkpoint(bare) == note
    receipt = tmp_path / "receipt.json"
    receipt.write_text("\n  " + json.dumps({"checkpoint": note, "final_checkpoint": {"note": "other"}}))
    assert load_held_checkpoint(receipt) == note


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not utf-8", "cannot read checkpoint file"),
        (b"{ not json", "not valid JSON; give a signed note, a receipt or metrics.json"),
        (b'{"final_checkpoint": "a string, not an object"}', "JSON holds no 'checkpoint' or 'final_checkpoint.note'"),
        (b'{"final_checkpoint": {"tree_size": 3}}', "JSON holds no 'checkpoint' or 'final_checkpoint.note'"),
        (b'{"checkpoint": 7}', "JSON holds no 'checkpoint' or 'final_checkpoint.note'; give a note or receipt"),
    ],
)
def test_an_unusable_held_checkpoint_file_is_refused_with_its_reason(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "held.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_held_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_a_missing_held_checkpoint_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read checkpoint file"):
        load_held_checkpoint(tmp_path / "absent.json")


def test_a_pinned_key_is_read_from_a_vkey_a_kit_toml_or_a_pem(tmp_path: Path, signer: Signer) -> None:
    vkey = tmp_path / "log.vkey"
    vkey.write_text("\n" + signer.vkey + "\n")
    assert load_public_key(vkey) == Verifier.from_vkey(signer.vkey)
    kit = tmp_path / "kit.toml"
    kit.write_text(f'[audit]\nvkey = "{signer.vkey}"\n')
    assert load_public_key(kit) == Verifier.from_vkey(signer.vkey)
    from cryptography.hazmat.primitives import serialization

    pem = signer.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem_path = tmp_path / "log.pem"
    pem_path.write_bytes(b"\n  " + pem)
    loaded = load_public_key(pem_path, origin=ORIGIN)
    assert loaded == Verifier.from_vkey(signer.vkey)
    assert loaded.name == ORIGIN


@pytest.mark.parametrize(
    ("name", "content", "origin", "message"),
    [
        ("kit.toml", b"\xff not utf-8", None, "not a readable kit.toml"),
        ("kit.toml", b"[audit\n", None, "not a readable kit.toml"),
        ("kit.toml", b"[audit]\nother = 1\n", None, "kit.toml has no [audit] vkey"),
        ("kit.toml", b"[site]\nname = 'a'\n", None, "kit.toml has no [audit] vkey"),
        ("kit.toml", b"[audit]\nvkey = 3\n", None, "kit.toml has no [audit] vkey"),
        ("log.pem", b"-----BEGIN PUBLIC KEY-----\n", None, "a PEM public key needs the log origin as its key name"),
        ("log.vkey", b"\xff\xfe", None, "not a verifier key (name+hash+base64) or PEM public key"),
        ("log.vkey", b"not a key", None, "not a verifier key (name+hash+base64) or PEM public key"),
    ],
)
def test_an_unusable_public_key_file_is_refused_with_its_reason(
    tmp_path: Path, name: str, content: bytes, origin: str | None, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_public_key(path, origin=origin)
    assert str(caught.value) == f"{path}: {message}"


def test_a_missing_public_key_file_names_the_os_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.vkey"
    with pytest.raises(ConfigError) as caught:
        load_public_key(path)
    assert str(caught.value) == f"{path}: cannot read public key (No such file or directory)"


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("quorum", [0, 3, -1])
def test_a_quorum_outside_one_to_the_witnesses_is_refused(tmp_path: Path, signer: Signer, quorum: int) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer)
    witnesses = [Witness.from_vkey(Cosigner.generate(f"site-{i}").vkey) for i in range(2)]
    with pytest.raises(ConfigError) as caught:
        verify_store(path, witnesses=witnesses, quorum=quorum, workers=1)
    assert str(caught.value) == f"quorum {quorum} must be between 1 and the 2 witness keys given"


def test_a_quorum_without_witnesses_is_ignored(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer)
    result = verify_store(path, quorum=5, workers=1)
    assert result.ok
    assert result.quorum is None


@pytest.mark.parametrize("workers", [0, -2])
def test_fewer_than_one_worker_is_refused(tmp_path: Path, signer: Signer, workers: int) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer)
    with pytest.raises(ConfigError) as caught:
        verify_store(path, workers=workers)
    assert str(caught.value) == f"workers must be >= 1, got {workers}"


def test_one_worker_and_the_default_give_the_same_result(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer)
    assert verify_store(path, workers=1) == verify_store(path)


# --- the result -----------------------------------------------------------------------------------


def test_an_intact_log_reports_every_counter(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    tail: list[tuple[str, EventType]] = [("run-3", "run.created"), ("run-2", "run.created"), ("run-2", "run.failed")]
    checkpoints = _store(path, signer, rounds=2, tail=tail)
    result = verify_store(path, workers=1)
    head = checkpoints[-1]
    assert result.ok
    assert result.origin == ORIGIN
    assert result.key == signer.vkey
    assert result.key_pinned is False
    assert (result.entries, result.checkpoints, result.head_size, result.unsigned_tail) == (9, 2, 6, 3)
    assert result.head_root == base64.b64encode(head.root_hash).decode()
    assert (result.position, result.problem, result.quorum) == (None, None, None)
    assert result.head_cosigners == ()
    assert result.open_runs == ("run-1", "run-3")
    assert result.held == 0
    assert result.to_dict()["head_size"] == 6
    assert result.to_dict() == {**result.to_dict(), "ok": True, "entries": 9, "target": result.target}
    result.raise_for_problem()  # nothing to raise
    pinned = verify_store(path, public_key=Verifier.from_vkey(signer.vkey), held_checkpoints=[head.note], workers=1)
    assert pinned.key_pinned is True
    assert pinned.held == 1


def test_a_failed_result_raises_its_target_position_and_problem(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer)
    other = Signer.generate(ORIGIN)
    result = verify_store(path, public_key=other.vkey, workers=1)
    assert not result.ok
    with pytest.raises(VerificationError) as caught:
        result.raise_for_problem()
    assert str(caught.value) == f"{result.target}: metadata: {result.problem}"
    assert result.problem == (
        f"the store is signed by key {ORIGIN}+{signer.key_id}, not by the pinned key "
        f"{ORIGIN}+{other.key_id} (a re-signed fork or the wrong key file)"
    )


def test_an_empty_log_verifies_with_nothing_signed(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer, rounds=0)
    result = verify_store(path, workers=1)
    assert result.ok
    assert (result.entries, result.checkpoints, result.head_size, result.head_root, result.unsigned_tail) == (
        0,
        0,
        0,
        None,
        0,
    )


def test_the_result_is_a_frozen_record() -> None:
    result = VerifyResult(
        ok=True,
        target="t",
        origin=None,
        key=None,
        key_pinned=False,
        entries=0,
        checkpoints=0,
        head_size=0,
        head_root=None,
        unsigned_tail=0,
    )
    assert result.to_dict()["unwitnessed_reports"] == 0
    with pytest.raises(AttributeError):
        result.ok = False  # type: ignore[misc]


# --- the store's metadata and its checkpoints -----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("format", "fedinfra-audit/0", "unsupported store format 'fedinfra-audit/0'"),
        ("vkey", "not+a+key", "the store's public key is malformed"),
        ("origin", "fedinfra.test/other", "the store's public key is not named after its origin"),
    ],
)
def test_edited_metadata_fails_at_metadata(tmp_path: Path, signer: Signer, key: str, value: str, problem: str) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer)
    _sql(path, "UPDATE audit_meta SET value = ? WHERE key = ?", (value, key))
    result = verify_store(path, workers=1)
    assert (result.ok, result.position, result.problem) == (False, "metadata", problem)
    progress = (result.entries, result.checkpoints, result.head_size, result.head_root, result.unsigned_tail)
    assert progress == (0, 0, 0, None, 0)  # nothing was replayed


def test_a_store_without_its_key_fails_at_metadata(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer)
    _sql(path, "DELETE FROM audit_meta WHERE key = 'vkey'")
    result = verify_store(path, workers=1)
    assert (result.position, result.problem) == ("metadata", "the store's public key is malformed")


def test_the_pinned_key_may_be_a_key_file_a_text_or_a_verifier(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer)
    from cryptography.hazmat.primitives import serialization

    pem = tmp_path / "log.pem"  # a PEM key has no name: the store's origin names it
    pem.write_bytes(
        signer.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for pinned in (pem, signer.vkey, Verifier.from_vkey(signer.vkey)):
        result = verify_store(path, public_key=pinned, workers=1)
        assert result.ok, (pinned, result.problem)
        assert result.key_pinned
    other = tmp_path / "other.pem"
    other.write_bytes(
        Signer.generate(ORIGIN).public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert verify_store(path, public_key=other, workers=1).problem.startswith(  # type: ignore[union-attr]
        f"the store is signed by key {ORIGIN}+{signer.key_id}, not by the pinned key {ORIGIN}+"
    )


def test_a_checkpoint_stored_under_another_size_names_both(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer, rounds=3)
    _sql(path, "UPDATE audit_checkpoints SET tree_size = 10 WHERE tree_size = 6")
    result = verify_store(path, workers=1)
    assert (result.position, result.problem) == (
        "checkpoint 3 (tree size 10)",
        "signed tree size 6 differs from the stored size",
    )


def test_a_checkpoint_that_no_entry_announces_is_refused(tmp_path: Path, signer: Signer) -> None:
    from fedinfra.audit.merkle import root_of

    path = tmp_path / "audit.db"
    _store(path, signer, rounds=2)
    with sqlite3.connect(path) as conn:
        leaves = [bytes(leaf) for (leaf,) in conn.execute("SELECT leaf_hash FROM audit_entries ORDER BY seq LIMIT 2")]
    forged = Checkpoint.sign(signer, 2, root_of(leaves))  # a correct root, at a size no entry announces
    _sql(
        path,
        "INSERT INTO audit_checkpoints (tree_size, root_hash, note, published_at) VALUES (?, ?, ?, ?)",
        (2, forged.root_hash, forged.note, "2026-03-01T12:00:00.000000Z"),
    )
    result = verify_store(path, workers=1)
    assert (result.position, result.problem) == (
        "checkpoint 1 (tree size 2)",
        "no checkpoint.published entry announces it",
    )
    assert (result.entries, result.checkpoints) == (0, 0)  # counted once a whole chunk is replayed


def test_an_altered_entry_before_the_first_checkpoint_is_placed_from_entry_0(tmp_path: Path, signer: Signer) -> None:
    from fedinfra.audit.merkle import leaf_hash

    path = tmp_path / "audit.db"
    _store(path, signer, rounds=2)
    with sqlite3.connect(path) as conn:
        (data,) = conn.execute("SELECT data FROM audit_entries WHERE seq = 1").fetchone()
    edited = bytes(data).replace(b'"outcome":"success"', b'"outcome":"failure"')
    assert edited != bytes(data)
    _sql(path, "UPDATE audit_entries SET data = ?, leaf_hash = ? WHERE seq = 1", (edited, leaf_hash(edited)))
    result = verify_store(path, workers=1)
    assert (result.position, result.problem) == (
        "checkpoint 1 (tree size 3)",
        "root hash does not match entries 0..2 (an entry in 0..2 was altered)",
    )
    assert (result.entries, result.checkpoints, result.head_size, result.head_root) == (0, 0, 0, None)


def test_a_failure_after_a_checkpoint_reports_the_progress_so_far(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    checkpoints = _store(path, signer, rounds=3)
    _sql(path, "DELETE FROM audit_entries WHERE seq = 7")
    result = verify_store(path, workers=1)
    assert (result.position, result.problem) == ("entry 7", "missing (the next stored entry is 8)")
    assert (result.entries, result.checkpoints, result.head_size) == (7, 2, 6)
    assert result.head_root == base64.b64encode(checkpoints[1].root_hash).decode()


def test_parallel_chunks_check_the_time_across_their_boundary(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedinfra.audit.merkle import leaf_hash

    path = tmp_path / "audit.db"
    _store(path, signer, rounds=5, tail=[("run-2", "run.created")] * 5)  # 20 entries: chunks of 3 on 2 workers
    with sqlite3.connect(path) as conn:
        (data,) = conn.execute("SELECT data FROM audit_entries WHERE seq = 18").fetchone()
    old = b'"ts":"2026-03-01T13:00:00.000000Z"'
    assert old in bytes(data)
    edited = bytes(data).replace(old, b'"ts":"2026-03-01T12:59:00.000000Z"')  # earlier than entry 17
    _sql(
        path,
        "UPDATE audit_entries SET data = ?, leaf_hash = ?, ts = ? WHERE seq = 18",
        (edited, leaf_hash(edited), "2026-03-01T12:59:00.000000Z"),
    )
    sequential = verify_store(path, workers=1)
    assert (sequential.position, sequential.problem) == (
        "entry 18",
        "timestamp is malformed or earlier than the previous entry's",
    )
    monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 0)
    parallel = verify_store(path, workers=2)  # 18 is the first entry of the chunk [18, 21)
    assert (parallel.position, parallel.problem, parallel.entries) == (sequential.position, sequential.problem, 18)


# --- held checkpoints -------------------------------------------------------------------------------


def test_held_checkpoints_of_one_size_must_agree(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    ours = _store(path, signer, rounds=2)
    same = verify_store(path, held_checkpoints=[ours[0].note, ours[0].note, ours[1].note], workers=1)
    assert same.ok
    assert same.held == 3
    # two notes of tree size 6 with different roots, both signed by the log's key
    other = Checkpoint.sign(signer, ours[1].size, ours[0].root_hash)
    result = verify_store(path, held_checkpoints=[ours[0].note, ours[1].note, other.note], workers=1)
    assert (result.position, result.problem) == (
        "held checkpoint 3",
        "two signed checkpoints of one size differ (split view)",
    )


def test_a_held_checkpoint_by_another_key_is_refused_with_its_number(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    ours = _store(path, signer)
    stranger = Checkpoint.sign(Signer.generate(ORIGIN), ours[0].size, ours[0].root_hash)
    result = verify_store(path, held_checkpoints=[ours[0].note, stranger.note], workers=1)
    assert (result.position, result.problem) == ("held checkpoint 2", "does not verify with the log's public key")


# --- witnesses ---------------------------------------------------------------------------------------

SITE_A, SITE_B, SITE_C = (Cosigner.generate(name) for name in ("site-a", "site-b", "site-c"))
READERS: list[tuple[Actor, EventType]] = [
    (Actor(kind="operator", id="auditor"), "report.generated"),
    (Actor(kind="operator", id="auditor"), "log.read"),
    (Actor(kind="system", id="audit-log"), "log.read"),
]


def _cosign(log: AuditLog, checkpoint: Checkpoint, cosigner: Cosigner, timestamp: int) -> None:
    assert log.add_cosignature(checkpoint.size, cosigner.cosign(checkpoint, timestamp=timestamp), cosigner.witness)


def _witnessed_store(path: Path, signer: Signer, *, cosign: bool = True) -> list[Checkpoint]:
    """Checkpoints at 3 and 6 cosigned by sites a and b (c, unknown to the verifier, too), then
    three readers' records and a checkpoint at 10 cosigned by site a alone."""
    checkpoints = _store(path, signer, rounds=2)
    with AuditLog.open(path) as log:
        if cosign:
            _cosign(log, checkpoints[0], SITE_A, 100)
            _cosign(log, checkpoints[0], SITE_B, 200)
            _cosign(log, checkpoints[1], SITE_A, 1000)
            _cosign(log, checkpoints[1], SITE_C, 9000)
            _cosign(log, checkpoints[1], SITE_B, 2000)
    with AuditLog.open(path, signer=signer) as log:
        for actor, type_ in READERS:
            log.append(run_id=None, round=None, type=type_, actor=actor, outcome="success", now=T0 + timedelta(hours=1))
        checkpoints.append(log.publish_checkpoint(now=T0 + timedelta(hours=1)))
        if cosign:
            _cosign(log, checkpoints[2], SITE_A, 5000)
    return checkpoints


def _utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_newest_checkpoint_with_the_quorum_is_the_witnessed_one(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _witnessed_store(path, signer)
    both = [SITE_A.witness, SITE_B.witness]
    result = verify_store(path, witnesses=both, workers=1)
    assert result.ok, result.problem
    assert (result.quorum, result.witnessed_size, result.head_cosigners) == (2, 6, ("site-a", "site-b"))
    assert result.witnessed_at == _utc(2000)  # the newer of the two, not c's (unknown here)
    assert result.unwitnessed_reports == 3  # the readers' records; the checkpoint's announcement is not one
    assert (result.head_size, result.unsigned_tail) == (10, 0)

    one = verify_store(path, witnesses=both, quorum=1, workers=1)
    assert (one.quorum, one.witnessed_size, one.head_cosigners) == (1, 10, ("site-a",))
    assert (one.witnessed_at, one.unwitnessed_reports) == (_utc(5000), 0)

    b_only = verify_store(path, witnesses=[SITE_B.witness], workers=1)
    assert (b_only.quorum, b_only.witnessed_size, b_only.head_cosigners, b_only.witnessed_at) == (
        1,
        6,
        ("site-b",),
        _utc(2000),
    )
    all_three = verify_store(path, witnesses=[SITE_C.witness, *both], workers=1)
    assert (all_three.witnessed_size, all_three.head_cosigners) == (6, ("site-a", "site-b", "site-c"))
    assert all_three.witnessed_at == _utc(9000)
    four = verify_store(path, witnesses=[SITE_C.witness, *both, Cosigner.generate("site-d").witness], workers=1)
    assert (four.witnessed_size, four.head_cosigners) == (None, ("site-a",))  # the newest checkpoint's
    assert (four.position, four.problem) == (
        "checkpoint 3 (tree size 10)",
        "newest checkpoint is cosigned by 1 of the 4 witnesses required, and no earlier one has the quorum "
        "(rewritten, truncated to an uncosigned checkpoint, or not yet cosigned)",
    )


def test_without_cosignatures_the_quorum_is_missing(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _witnessed_store(path, signer, cosign=False)
    assert verify_store(path, workers=1).ok
    result = verify_store(path, witnesses=[SITE_A.witness], workers=1)
    assert (result.position, result.problem) == (
        "checkpoint 3 (tree size 10)",
        "newest checkpoint is cosigned by 0 of the 1 witnesses required, and no earlier one has the quorum "
        "(rewritten, truncated to an uncosigned checkpoint, or not yet cosigned)",
    )


def test_a_log_without_checkpoints_has_nothing_to_witness(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _store(path, signer, rounds=0, tail=[("run-1", "run.created")])
    result = verify_store(path, witnesses=[SITE_A.witness], workers=1)
    assert (result.position, result.problem) == ("checkpoints", "the log has no checkpoint for witnesses to cosign")
    one = verify_store(path, workers=1)
    assert (one.ok, one.head_cosigners, one.entries, one.unsigned_tail) == (True, (), 1, 1)


@pytest.mark.parametrize(
    ("records", "position"),
    [
        ([(Actor(kind="coordinator", id="coord"), "log.read")], "entry 6"),
        ([(Actor(kind="system", id="audit-log"), "report.generated")], "entry 6"),
        ([(Actor(kind="system", id="clock"), "log.read")], "entry 6"),
        ([(Actor(kind="site", id="audit-log"), "log.read")], "entry 6"),
        ([(Actor(kind="operator", id="auditor"), "run.created")], "entry 6"),
        ([READERS[0], (Actor(kind="coordinator", id="coord"), "round.started")], "entry 7"),
    ],
)
def test_only_readers_records_may_follow_the_witnessed_checkpoint(
    tmp_path: Path, signer: Signer, records: list[tuple[Actor, EventType]], position: str
) -> None:
    path = tmp_path / "audit.db"
    checkpoints = _store(path, signer, rounds=2)
    with AuditLog.open(path, signer=signer) as log:
        _cosign(log, checkpoints[1], SITE_A, 1000)
        for actor, type_ in records:
            log.append(
                run_id="run-1", round=None, type=type_, actor=actor, outcome="success", now=T0 + timedelta(hours=1)
            )
    result = verify_store(path, witnesses=[SITE_A.witness], workers=1)
    assert (result.position, result.problem) == (
        position,
        "an entry after the newest cosigned checkpoint is not witnessed by the sites",
    )


def _insert_cosignature(path: Path, size: int, line: str, cosigner: str = "site-x") -> None:
    _sql(
        path,
        "INSERT INTO audit_cosignatures (tree_size, cosigner, key_id, line, received_at) VALUES (?, ?, ?, ?, ?)",
        (size, cosigner, "00000000", line, "2026-03-01T12:00:00.000000Z"),
    )


def test_a_cosignature_moved_to_another_checkpoint_does_not_verify(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    checkpoints = _witnessed_store(path, signer)
    _insert_cosignature(path, 6, SITE_B.cosign(checkpoints[0], timestamp=300))
    assert verify_store(path, witnesses=[SITE_A.witness], workers=1).ok  # site b's lines are not checked
    result = verify_store(path, witnesses=[SITE_A.witness, SITE_B.witness], workers=1)
    assert (result.position, result.problem) == (
        "checkpoint 2 (tree size 6)",
        "cosignature by site-b does not verify: the checkpoint was re-signed or the log rewritten after the "
        "site cosigned it",
    )


def test_a_malformed_cosignature_line_is_refused_whoever_it_names(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _witnessed_store(path, signer)
    _insert_cosignature(path, 6, "\u2014 site-a not-base64!")
    result = verify_store(path, witnesses=[SITE_B.witness], workers=1)
    assert (result.position, result.problem) == ("checkpoint 2 (tree size 6)", "a stored cosignature line is malformed")


def test_a_cosignature_of_a_checkpoint_not_in_the_log_is_refused(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    checkpoints = _witnessed_store(path, signer)
    _insert_cosignature(path, 4, SITE_C.cosign(checkpoints[0], timestamp=300))
    result = verify_store(path, witnesses=[SITE_A.witness], workers=1)
    assert (result.position, result.problem) == (
        "cosignature (tree size 4)",
        "cosigns a checkpoint that is not in the log (dropped)",
    )
    assert (result.entries, result.checkpoints) == (10, 3)  # found after the replay


def test_the_witnessed_time_is_utc_whatever_the_machines_time_zone(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    path = tmp_path / "audit.db"
    _witnessed_store(path, signer)
    monkeypatch.setenv("TZ", "Asia/Kathmandu")  # UTC+05:45
    time.tzset()
    try:
        result = verify_store(path, witnesses=[SITE_A.witness], workers=1)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert result.witnessed_at == "1970-01-01T01:23:20Z"  # 5000 s after the epoch, in UTC


def test_an_announcement_written_by_the_coordinator_after_the_witnessed_checkpoint_fails(
    tmp_path: Path, signer: Signer
) -> None:
    """Only the log's own announcements pass unwitnessed: the coordinator may not write one itself."""
    from fedinfra.audit.merkle import root_of

    path = tmp_path / "audit.db"
    checkpoints = _store(path, signer, rounds=2)
    with AuditLog.open(path, signer=signer) as log:
        _cosign(log, checkpoints[1], SITE_A, 1000)
        log.append(
            run_id="run-1",
            round=None,
            type="checkpoint.published",
            actor=COORD,
            outcome="success",
            details={"tree_size": 7},
            now=T0 + timedelta(hours=1),
        )
    with sqlite3.connect(path) as conn:
        leaves = [bytes(leaf) for (leaf,) in conn.execute("SELECT leaf_hash FROM audit_entries ORDER BY seq")]
    forged = Checkpoint.sign(signer, 7, root_of(leaves))  # the coordinator holds the log's key
    _sql(
        path,
        "INSERT INTO audit_checkpoints (tree_size, root_hash, note, published_at) VALUES (?, ?, ?, ?)",
        (7, forged.root_hash, forged.note, "2026-03-01T13:00:00.000000Z"),
    )
    assert verify_store(path, workers=1).ok  # a consistent log under the coordinator's key ...
    result = verify_store(path, witnesses=[SITE_A.witness], workers=1)  # ... but nobody witnessed entry 6
    assert (result.position, result.problem) == (
        "entry 6",
        "an entry after the newest cosigned checkpoint is not witnessed by the sites",
    )


def test_only_a_store_is_scanned_in_parallel_an_export_in_one_process(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedinfra.audit import export_log

    path = tmp_path / "audit.db"
    _store(path, signer, rounds=3, tail=[("run-2", "run.created")])
    export_log(path, tmp_path / "export")
    monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 0)
    for target in (path, tmp_path / "export"):
        result = verify_store(target, public_key=signer.vkey, workers=2)
        assert result.ok, (target, result.problem)
        assert (result.entries, result.checkpoints, result.unsigned_tail) == (10, 3, 1)


def test_a_quorum_of_every_witness_may_be_named(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    _witnessed_store(path, signer)
    result = verify_store(path, witnesses=[SITE_A.witness, SITE_B.witness], quorum=2, workers=1)
    assert (result.ok, result.quorum, result.witnessed_size) == (True, 2, 6)


def test_when_workers_cannot_start_one_process_verifies(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies as it starts breaks the pool; the replay is then redone in one process."""
    import multiprocessing.spawn
    from multiprocessing import resource_tracker

    dies = tmp_path / "python"  # an "interpreter" that exits before it runs anything
    dies.write_text("#!/bin/sh\nsleep 1\nexit 1\n")
    dies.chmod(0o755)

    path = tmp_path / "audit.db"
    _store(path, signer, rounds=3, tail=[("run-2", "run.created")])
    _sql(path, "DELETE FROM audit_entries WHERE seq = 8")
    monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 0)
    python = multiprocessing.spawn.get_executable()
    resource_tracker.ensure_running()  # started by the real interpreter: only the pool's workers die
    multiprocessing.spawn.set_executable(str(dies))
    try:
        result = verify_store(path, public_key=signer.vkey, witnesses=[SITE_A.witness], workers=2)
    finally:
        multiprocessing.spawn.set_executable(python)
    assert (result.ok, result.position, result.problem) == (False, "entry 8", "missing (the next stored entry is 9)")
    assert (result.key_pinned, result.quorum, result.entries, result.checkpoints) == (True, 1, 8, 2)


def test_an_access_log_that_lost_a_sealed_read_fails_and_is_counted(tmp_path: Path, signer: Signer) -> None:
    from typer.testing import CliRunner

    from fedinfra.audit.access import SUFFIX
    from fedinfra.cli import build_app

    path = tmp_path / "audit.db"
    _store(path, signer, rounds=1)
    for _ in range(3):
        assert CliRunner().invoke(build_app(), ["audit", "show", str(path)]).exit_code == 0
    with AuditLog.open(path, signer=signer) as log:
        log.publish_checkpoint(now=T0 + timedelta(hours=1))  # seals the three reads
    access = Path(str(path) + SUFFIX)
    intact = verify_store(path, access_log=access, workers=1)
    assert (intact.ok, intact.access_log, intact.access_records, intact.sealed_reads) == (True, str(access), 3, 3)
    assert (intact.position, intact.problem) == (None, None)
    lines = access.read_text().splitlines(keepends=True)
    access.write_text("".join(lines[:1] + lines[2:]))
    result = verify_store(path, access_log=access, workers=1)
    assert result.ok is False
    assert result.position == f"access log {access}"
    assert "removed or edited" in (result.problem or "")
    assert (result.access_log, result.sealed_reads, result.entries, result.checkpoints) == (str(access), 3, 7, 2)
    assert result.access_records == 2


# --- the parallel scan: how many workers, how they start, a range that ends early, the retry ---------------
# The result never depends on the split (test_audit_tamper.py); these see the split itself from
# outside, through the interpreter the pool's workers are started with.

SITE_P = Cosigner.generate("site-p")


def _delete_entries_from(path: Path, seq: int) -> None:
    """Delete the entries from ``seq`` on, past the append-only triggers (an attacker holding the file)."""
    with sqlite3.connect(path) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("DELETE FROM audit_entries WHERE seq >= ?", (seq,))


@contextmanager
def _interpreter(tmp_path: Path, body: str) -> Iterator[None]:
    """Start spawned processes through a shell script ``body`` (``$PYTHON`` is the real interpreter)."""
    python = multiprocessing.spawn.get_executable()
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\nPYTHON={shlex.quote(str(python))}\n{body}\n")
    script.chmod(0o755)
    resource_tracker.ensure_running()  # started by the real interpreter: only the pool's workers use the script
    multiprocessing.spawn.set_executable(str(script))
    try:
        yield
    finally:
        multiprocessing.spawn.set_executable(python)


def _started(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_store_from_the_threshold_on_is_scanned_by_exactly_the_requested_spawned_workers(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``workers=2`` on a store of ``PARALLEL_MIN_ENTRIES`` entries starts two spawned workers.

    Protects the threshold (``<``, not ``<=``), the ``workers < 2`` cut-off, the spawn context and
    the pool size: the machine is made to look like one CPU, so a pool sized by default would start
    one worker, and a forked pool would not run the interpreter at all.
    """
    from fedinfra.audit import export_log

    path = tmp_path / "audit.db"
    _store(path, signer, rounds=3, tail=[("run-2", "run.created")])  # 10 entries: five ranges of two
    export_log(path, tmp_path / "export")
    started = tmp_path / "started.log"
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 10)
    log = shlex.quote(str(started))
    # Each worker waits (up to 5 s) until two have started: no task can finish and free a worker
    # before the pool has started the second, however the machine schedules the verifier.
    barrier = f'echo started >> {log}\nfor _ in $(seq 50); do [ "$(wc -l < {log})" -ge 2 ] && break; sleep 0.1; done'
    with _interpreter(tmp_path, f'{barrier}\nexec "$PYTHON" "$@"'):
        parallel = verify_store(path, workers=2)
        assert _started(started) == 2
        assert parallel.ok, parallel.problem
        assert (parallel.entries, parallel.checkpoints, parallel.unsigned_tail) == (10, 3, 1)

        monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 11)  # one entry short of the threshold
        assert verify_store(path, workers=2) == parallel
        monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 0)
        assert verify_store(path, workers=1) == parallel
        exported = verify_store(tmp_path / "export", workers=2)  # an export is one file: read in one process
        assert (exported.ok, exported.entries, exported.checkpoints) == (True, 10, 3)
        assert _started(started) == 2  # none of these started a worker


def test_a_log_cut_short_while_its_ranges_are_scanned_still_fails_at_its_end(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries deleted after the verifier counted them: a range finds fewer rows than it was given.

    The ranges after it start past the end of what was replayed and are skipped, but the
    end-of-log checks still run on what was replayed: the checkpoint read before the scan covers
    entries that are gone (tail truncated), as one process finds on what is left.
    """
    path = tmp_path / "audit.db"
    _store(path, signer, rounds=3, tail=[("run-2", "run.created")] * 4)  # 13 entries, checkpoints at 3, 6 and 9
    count = StoreSource.count

    def count_then_cut(source: StoreSource) -> int:
        counted = count(source)
        _delete_entries_from(path, 7)  # after the count, before the workers open the store
        return counted

    monkeypatch.setattr(StoreSource, "count", count_then_cut)
    monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 0)
    result = verify_store(path, workers=2)  # ranges of two: [6, 8) ends at 7, [8, 10) starts past it
    assert (result.ok, result.position, result.problem) == (
        False,
        "checkpoint 3 (tree size 9)",
        "covers 9 entries but the log holds only 7 (tail truncated)",
    )
    assert (result.entries, result.checkpoints, result.head_size) == (7, 2, 6)
    one = verify_store(path, workers=1)
    assert (one.position, one.problem, one.entries) == (result.position, result.problem, result.entries)


def test_the_one_process_retry_checks_the_pinned_key_held_checkpoints_and_witnesses(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the workers die as they start, the retry in one process gives the whole one-process result.

    Every argument reaches the retry: the pinned key, the held checkpoints, the witnesses and
    their quorum, and the result records each of them.
    """
    path = tmp_path / "audit.db"
    checkpoints = _store(path, signer, rounds=3)
    with AuditLog.open(path) as log:
        assert log.add_cosignature(checkpoints[-1].size, SITE_P.cosign(checkpoints[-1], timestamp=5000), SITE_P.witness)
    held, witnesses = [checkpoints[1].note], [SITE_P.witness]
    expected = verify_store(path, public_key=signer.vkey, held_checkpoints=held, witnesses=witnesses, workers=1)
    assert expected.ok, expected.problem
    assert (expected.key_pinned, expected.held, expected.quorum, expected.witnessed_size) == (True, 1, 1, 9)
    assert expected.head_cosigners == ("site-p",)
    monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 0)
    with _interpreter(tmp_path, "sleep 1\nexit 1"):  # dies before it reads its work
        retried = verify_store(path, public_key=signer.vkey, held_checkpoints=held, witnesses=witnesses, workers=2)
    assert retried == expected
