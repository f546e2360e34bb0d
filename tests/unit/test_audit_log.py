"""AuditLog on real SQLite and real PostgreSQL (127.0.0.1:5432, db ``test``, one schema per test)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from fedinfra.audit import Actor, AuditLog, Event, Signer, Subject, verify_receipt, verify_store
from fedinfra.errors import ConfigError, StoreError

ORIGIN = "fedinfra.test/log"
PG_ADMIN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose tables land in a fresh schema, dropped afterwards.

    No skip when the server is down: CI starts it, and a silent skip would hide the backend.
    """
    schema = f"audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path, signer: Signer) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "audit.db"
    url = str(request.getfixturevalue("pg_url"))
    AuditLog.init_store(url, signer.verifier)  # the owner's one-off step; opening runs no DDL
    return url


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


def _update(site: str, round_: int) -> Event:
    return Event(
        run_id="run-1",
        round=round_,
        type="update.received",
        actor=Actor(kind="site", id=site),
        outcome="success",
        subject=Subject(artifact="update", sha256=f"{round_:064x}", size=100),
        details={"num_examples": 32},
    )


def test_a_new_log_is_empty_and_records_its_origin_and_key(target: str | Path, signer: Signer) -> None:
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        assert log.size == 0
        assert log.verifier.vkey == signer.vkey
        assert log.latest_checkpoint is None


def test_appended_entries_get_contiguous_seqs_and_survive_reopening(target: str | Path, signer: Signer) -> None:
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        first = log.append(
            run_id="run-1", round=None, type="run.created", actor=Actor(kind="coordinator", id="coord"),
            outcome="success", now=T0,
        )
        batch = log.append_many([_update("site-a", 1), _update("site-b", 1)], now=T0)

    with AuditLog.open(target) as log:
        assert [first.seq, *(e.seq for e in batch)] == [0, 1, 2]
        assert log.size == 3
        assert log.entry(2) == batch[1]
        assert [e.seq for e in log.entries(type="update.received")] == [1, 2]


def test_publishing_signs_a_checkpoint_covering_its_own_announcement(target: str | Path, signer: Signer) -> None:
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        log.append_many([_update("site-a", 1)], now=T0)

        checkpoint = log.publish_checkpoint(run_id="run-1", round=1, now=T0)

        assert checkpoint.size == 2 == log.size
        announcement = log.entry(1)
        assert announcement.type == "checkpoint.published"
        assert announcement.details == {"tree_size": 2}
        assert announcement.actor.key_id == signer.key_id


def test_a_batch_and_its_checkpoint_commit_together(target: str | Path, signer: Signer) -> None:
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        entries = log.append_many([_update("site-a", 1), _update("site-b", 1)], now=T0, publish=True)

        assert len(entries) == 2
        assert log.latest_checkpoint is not None
        assert log.latest_checkpoint.size == 3


def test_a_receipt_verifies_against_the_previous_checkpoint(target: str | Path, signer: Signer) -> None:
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        old = log.publish_checkpoint(now=T0)
        entry = log.append_many([_update("site-a", 1)], now=T0, publish=True)[0]

        receipt = log.receipt(entry.seq, since=old.size)

    checkpoint = verify_receipt(receipt, verifier_key=signer.vkey, previous=old)
    assert checkpoint.size == 3


def test_timestamps_never_go_backwards(target: str | Path, signer: Signer) -> None:
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        log.append_many([_update("site-a", 1)], now=T0)
        late = log.append_many([_update("site-a", 2)], now=T0 - timedelta(hours=1))[0]

    assert late.ts == T0


def test_the_whole_log_verifies(target: str | Path, signer: Signer) -> None:
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        log.publish_checkpoint(now=T0)
        for round_ in range(3):
            log.append_many([_update("site-a", round_), _update("site-b", round_)], now=T0, publish=True)

    result = verify_store(target, public_key=signer.vkey)

    assert result.ok, result.problem
    assert (result.entries, result.checkpoints, result.unsigned_tail) == (10, 4, 0)


def test_database_triggers_refuse_update_and_delete(target: str | Path, signer: Signer) -> None:
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        log.append_many([_update("site-a", 1)], now=T0, publish=True)
    engine = sa.create_engine(target if isinstance(target, str) else f"sqlite:///{target}")
    statements = [
        "UPDATE audit_entries SET type = 'run.failed'",
        "DELETE FROM audit_entries",
        "UPDATE audit_checkpoints SET note = 'x'",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_meta",
    ]
    try:
        for stmt in statements:
            with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
                conn.execute(sa.text(stmt))
    finally:
        engine.dispose()
    assert verify_store(target).ok


def test_postgres_also_refuses_truncate(pg_url: str, signer: Signer) -> None:
    AuditLog.init_store(pg_url, signer.verifier)
    AuditLog.open(pg_url, origin=ORIGIN, signer=signer).close()
    engine = sa.create_engine(pg_url)
    try:
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE audit_entries"))
    finally:
        engine.dispose()


def test_sqlite_stores_run_in_wal_mode(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    AuditLog.open(path, origin=ORIGIN, signer=signer).close()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_opening_with_another_origin_or_key_is_refused(target: str | Path, signer: Signer) -> None:
    AuditLog.open(target, origin=ORIGIN, signer=signer).close()

    with pytest.raises(ConfigError, match="belongs to log"):
        AuditLog.open(target, origin="fedinfra.test/other")
    with pytest.raises(ConfigError, match="does not match the store's public key"):
        AuditLog.open(target, origin=ORIGIN, signer=Signer.generate(ORIGIN))


def test_a_signer_named_differently_from_the_origin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="origin"):
        AuditLog.open(tmp_path / "a.db", origin=ORIGIN, signer=Signer.generate("other"))


def test_publishing_without_the_signing_key_is_refused(target: str | Path, signer: Signer) -> None:
    AuditLog.open(target, origin=ORIGIN, signer=signer).close()

    with AuditLog.open(target) as log, pytest.raises(ConfigError, match="signing key"):
        log.publish_checkpoint()


def test_a_missing_store_is_not_created_without_a_signer(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such audit store"):
        AuditLog.open(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 100)

    with pytest.raises(StoreError, match="not an audit store"):
        AuditLog.open(path)


def test_a_receipt_needs_a_checkpoint_covering_the_entry(target: str | Path, signer: Signer) -> None:
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        entry = log.append_many([_update("site-a", 1)], now=T0)[0]

        with pytest.raises(ConfigError, match="not covered by a signed checkpoint"):
            log.receipt(entry.seq)


_WRITER = textwrap.dedent(
    """
    import sys
    from fedinfra.audit import Actor, AuditLog, Event, Signer
    signer = Signer.from_skey(sys.argv[2])
    event = Event(run_id="run-1", round=1, type="update.received", actor=Actor(kind="site", id="s"),
                  outcome="success", details={"n": 1})
    with AuditLog.open(sys.argv[1], origin=signer.name, signer=signer) as log:
        print("ready", flush=True)
        while True:
            log.append_many([event] * 50, publish=True)
    """
)


def test_a_writer_killed_mid_append_leaves_a_log_that_verifies(target: str | Path, signer: Signer) -> None:
    proc = subprocess.Popen(  # a real crash: SIGKILL while batches are being committed
        [sys.executable, "-c", _WRITER, str(target), signer.skey], stdout=subprocess.PIPE, env=os.environ.copy()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()

    result = verify_store(target, public_key=signer.vkey)

    assert result.ok, result.problem
    assert result.entries > 0
    assert result.unsigned_tail == 0
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        assert log.size == result.entries
