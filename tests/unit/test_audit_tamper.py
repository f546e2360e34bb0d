"""The tamper suite: every edit an attacker with write access can make is detected and located.

The attacker here drops the append-only triggers first (they guard against mistakes, not
against someone holding the file); detection rests on the Merkle tree and the signatures.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedinfra.audit import Actor, AuditLog, Checkpoint, Event, Signer, Subject, export_log, verify_store
from fedinfra.audit.merkle import leaf_hash
from fedinfra.cli import build_app

ORIGIN = "fedinfra.test/log"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROUNDS, SITES = 4, 3
SIZE = 1 + ROUNDS * (1 + SITES + 2)  # first checkpoint, then per round: start, updates, aggregation, checkpoint


def _build(path: Path, signer: Signer) -> None:
    coord = Actor(kind="coordinator", id="coord")
    with AuditLog.open(path, origin=ORIGIN, signer=signer) as log:
        log.publish_checkpoint(run_id="run-1", now=T0)
        for r in range(ROUNDS):
            events = [Event(run_id="run-1", round=r, type="round.started", actor=coord, outcome="success")]
            events += [
                Event(
                    run_id="run-1",
                    round=r,
                    type="update.received",
                    actor=Actor(kind="site", id=f"site-{s}"),
                    outcome="success",
                    subject=Subject(artifact="update", sha256=f"{r * 16 + s:064x}", size=1000 + s),
                )
                for s in range(SITES)
            ]
            events.append(
                Event(run_id="run-1", round=r, type="aggregation.completed", actor=coord, outcome="success")
            )
            log.append_many(events, now=T0, publish=True)


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def store(tmp_path: Path, signer: Signer) -> Path:
    path = tmp_path / "audit.db"
    _build(path, signer)
    assert verify_store(path, public_key=signer.vkey).ok
    return path


def _tamper(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    with sqlite3.connect(path) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        for sql, args in statements:
            conn.execute(sql, args)


def _row(path: Path, seq: int) -> tuple[bytes, bytes]:
    with sqlite3.connect(path) as conn:
        data, leaf = conn.execute("SELECT data, leaf_hash FROM audit_entries WHERE seq = ?", (seq,)).fetchone()
    return bytes(data), bytes(leaf)


def _problem(path: Path | str, signer: Signer) -> str:
    result = verify_store(path, public_key=signer.vkey)
    assert not result.ok
    return f"{result.position}: {result.problem}"


@pytest.mark.parametrize("seq", [0, 1, 7, SIZE - 1])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_editing_one_byte_of_any_entry_names_that_entry(store: Path, signer: Signer, seq: int, where: float) -> None:
    data, _ = _row(store, seq)
    pos = int(len(data) * where)
    edited = data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]

    _tamper(store, ("UPDATE audit_entries SET data = ? WHERE seq = ?", (edited, seq)))

    assert _problem(store, signer).startswith(f"entry {seq}: ")


def test_editing_an_entry_and_its_leaf_hash_breaks_the_covering_checkpoint(store: Path, signer: Signer) -> None:
    data, _ = _row(store, 9)
    edited = data.replace(b'"size":1001', b'"size":9001')
    assert edited != data

    _tamper(store, ("UPDATE audit_entries SET data = ?, leaf_hash = ? WHERE seq = ?", (edited, leaf_hash(edited), 9)))

    assert _problem(store, signer) == (
        "checkpoint 3 (tree size 13): root hash does not match entries 0..12 (an entry in 7..12 was altered)"
    )


def test_deleting_an_entry_names_the_gap(store: Path, signer: Signer) -> None:
    _tamper(store, ("DELETE FROM audit_entries WHERE seq = ?", (5,)))

    assert _problem(store, signer) == "entry 5: missing (the next stored entry is 6)"


def test_swapping_two_entries_names_the_first(store: Path, signer: Signer) -> None:
    a, b = _row(store, 2), _row(store, 3)

    _tamper(
        store,
        ("UPDATE audit_entries SET data = ?, leaf_hash = ? WHERE seq = ?", (*b, 2)),
        ("UPDATE audit_entries SET data = ?, leaf_hash = ? WHERE seq = ?", (*a, 3)),
    )

    assert _problem(store, signer).startswith("entry 2: records seq 3")


def test_truncating_the_tail_names_the_checkpoint_left_dangling(store: Path, signer: Signer) -> None:
    _tamper(store, ("DELETE FROM audit_entries WHERE seq >= ?", (SIZE - 4,)))

    assert _problem(store, signer) == (
        f"checkpoint {ROUNDS + 1} (tree size {SIZE}): covers {SIZE} entries but the log holds only {SIZE - 4} "
        "(tail truncated)"
    )


def test_dropping_a_checkpoint_names_the_entry_that_announced_it(store: Path, signer: Signer) -> None:
    _tamper(store, ("DELETE FROM audit_checkpoints WHERE tree_size = ?", (13,)))

    assert _problem(store, signer) == "entry 12: announces a checkpoint of tree size 13 that is missing (dropped)"


def test_a_fork_re_signed_with_another_key_is_caught_by_the_pinned_key(tmp_path: Path, signer: Signer) -> None:
    fork = tmp_path / "fork.db"
    _build(fork, Signer.generate(ORIGIN))  # same origin, same events, another key

    assert verify_store(fork).ok  # self-consistent under its own key ...
    assert _problem(fork, signer).startswith("metadata: the store is signed by key")  # ... but not ours


def test_checkpoints_re_signed_with_another_key_are_refused(store: Path, signer: Signer) -> None:
    other = Signer.generate(ORIGIN)
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT tree_size, root_hash FROM audit_checkpoints").fetchall()
    _tamper(
        store,
        *[
            ("UPDATE audit_checkpoints SET note = ? WHERE tree_size = ?", (Checkpoint.sign(other, n, root).note, n))
            for n, root in rows
        ],
    )

    assert _problem(store, signer) == (
        "checkpoint 1 (tree size 1): signature or format does not verify with the log's public key"
    )
    assert not verify_store(store).ok  # even without pinning: the store's own key no longer matches


def test_a_tail_cut_with_its_checkpoints_is_caught_by_a_held_checkpoint(store: Path, signer: Signer) -> None:
    with AuditLog.open(store) as log:
        held = log.latest_checkpoint
    assert held is not None
    _tamper(
        store,
        ("DELETE FROM audit_entries WHERE seq >= ?", (13,)),
        ("DELETE FROM audit_checkpoints WHERE tree_size > ?", (13,)),
    )
    assert verify_store(store, public_key=signer.vkey).ok  # a clean, shorter log on its own ...

    result = verify_store(store, public_key=signer.vkey, held_checkpoints=[held.note])

    assert not result.ok  # ... but not the one a site or metrics.json holds a checkpoint of
    assert f"{result.position}: {result.problem}" == (
        f"held checkpoint (tree size {SIZE}): the log holds only 13 entries "
        "(tail truncated together with its checkpoints)"
    )


def test_a_held_checkpoint_of_another_history_is_caught(tmp_path: Path, store: Path, signer: Signer) -> None:
    other = tmp_path / "other.db"
    with AuditLog.open(other, origin=ORIGIN, signer=signer) as log:
        log.append_many(
            [Event(run_id="run-9", round=0, type="round.started", actor=Actor(kind="coordinator", id="c"),
                   outcome="success")] * 6,
            now=T0,
            publish=True,
        )
        note = log.checkpoint(7).note

    result = verify_store(store, public_key=signer.vkey, held_checkpoints=[note])

    assert (result.position, result.problem) == (
        "held checkpoint (tree size 7)", "the log's tree of this size differs (history rewritten)"
    )


def test_the_cli_takes_held_checkpoints_from_receipts(store: Path, signer: Signer, tmp_path: Path) -> None:
    with AuditLog.open(store) as log:
        receipt = log.receipt(3)
    receipt.save(tmp_path / "receipt.json")
    _tamper(
        store,
        ("DELETE FROM audit_entries WHERE seq >= ?", (13,)),
        ("DELETE FROM audit_checkpoints WHERE tree_size > ?", (13,)),
    )

    result = CliRunner().invoke(
        build_app(), ["audit", "verify", str(store), "--checkpoint", str(tmp_path / "receipt.json")]
    )

    assert result.exit_code == 1
    assert "tail truncated together with its checkpoints" in result.output


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda lines: lines[:3] + lines[4:], "entry 3: records seq 4"),
        (lambda lines: [*lines[:3], lines[3].replace(b"site-1", b"site-9"), *lines[4:]], "checkpoint 2"),
        (lambda lines: lines[:-2], "checkpoint 5"),
    ],
    ids=["deleted-line", "edited-line", "truncated"],
)
def test_an_edited_export_is_detected(
    store: Path, signer: Signer, tmp_path: Path, edit: Callable[[list[bytes]], list[bytes]], expected: str
) -> None:
    out = tmp_path / "export"
    export_log(store, out)
    lines = (out / "entries.jsonl").read_bytes().splitlines(keepends=True)

    (out / "entries.jsonl").write_bytes(b"".join(edit(lines)))

    assert _problem(out, signer).startswith(expected)


@pytest.mark.parametrize(
    "statements",
    [
        [("DELETE FROM audit_entries WHERE seq = ?", (5,))],
        [("UPDATE audit_entries SET data = ? WHERE seq = ?", (b"{}", 17))],
        [("DELETE FROM audit_checkpoints WHERE tree_size = ?", (13,))],
        [("DELETE FROM audit_entries WHERE seq >= ?", (SIZE - 4,))],
    ],
    ids=["deleted", "edited", "dropped-checkpoint", "truncated"],
)
def test_parallel_verification_finds_the_same_first_problem(
    store: Path, signer: Signer, statements: list[tuple[str, tuple[object, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _tamper(store, *statements)
    sequential = verify_store(store, public_key=signer.vkey, workers=1)
    monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 0)

    parallel = verify_store(store, public_key=signer.vkey, workers=2)

    assert not parallel.ok
    assert (parallel.position, parallel.problem) == (sequential.position, sequential.problem)


def test_parallel_verification_passes_an_intact_store(
    store: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fedinfra.audit.verify.PARALLEL_MIN_ENTRIES", 0)

    result = verify_store(store, public_key=signer.vkey, workers=2)

    assert result.ok, result.problem
    assert (result.entries, result.checkpoints) == (SIZE, ROUNDS + 1)


def test_the_cli_exits_1_and_names_the_position(store: Path) -> None:
    _tamper(store, ("DELETE FROM audit_entries WHERE seq = ?", (5,)))

    result = CliRunner().invoke(build_app(), ["audit", "verify", str(store)])

    assert result.exit_code == 1
    assert "entry 5: missing" in result.output
    assert "Traceback" not in result.output
