"""Issue 15, step 4: least privilege on the real PostgreSQL server (127.0.0.1:5432, db ``test``).

Two roles are created per test: the schema's owner, who runs ``fedinfra audit init-store``
once, and the coordinator's role, which gets USAGE, SELECT and INSERT only. The writer can
append, publish and store cosignatures - and cannot alter, delete, or switch the triggers off.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from fedinfra.audit import Actor, AuditLog, Signer, verify_store
from fedinfra.audit.cosign import Cosigner
from fedinfra.cli import build_app
from fedinfra.errors import StoreError

PG_ADMIN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
ORIGIN = "fedinfra-audit.pg-test"


@dataclass(frozen=True)
class Roles:
    schema: str
    owner: str
    writer: str

    def url(self, role: str) -> str:
        return f"postgresql+psycopg://{role}@127.0.0.1:5432/test?options=-csearch_path%3D{self.schema}"

    def conninfo(self, role: str) -> str:
        return f"host=127.0.0.1 port=5432 dbname=test user={role} options=-csearch_path={self.schema}"


@pytest.fixture
def roles() -> Iterator[Roles]:
    tag = uuid.uuid4().hex[:10]
    made = Roles(schema=f"audit_lp_{tag}", owner=f"fedinfra_owner_{tag}", writer=f"fedinfra_coord_{tag}")
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{made.owner}" LOGIN')
        conn.execute(f'CREATE ROLE "{made.writer}" LOGIN')
        conn.execute(f'CREATE SCHEMA "{made.schema}" AUTHORIZATION "{made.owner}"')
    try:
        yield made
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{made.schema}" CASCADE')
            conn.execute(f'DROP ROLE "{made.writer}"')
            conn.execute(f'DROP ROLE "{made.owner}"')


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


def _init(roles: Roles, signer: Signer, tmp_path: Path) -> None:
    vkey = tmp_path / "log.vkey"
    vkey.write_text(signer.vkey + "\n")
    out = CliRunner().invoke(
        build_app(),
        ["audit", "init-store", roles.url(roles.owner), "--public-key", str(vkey), "--writer", roles.writer],
    )
    assert out.exit_code == 0, out.output


def test_the_least_privilege_writer_appends_publishes_and_stores_cosignatures(
    roles: Roles, signer: Signer, tmp_path: Path
) -> None:
    _init(roles, signer, tmp_path)
    site = Cosigner.generate("fedinfra-site.a")
    with AuditLog.open(roles.url(roles.writer), origin=ORIGIN, signer=signer) as log:
        log.append(run_id="run-1", round=1, type="round.started", actor=Actor(kind="coordinator", id="c"),
                   outcome="success")
        head = log.publish_checkpoint(run_id="run-1", round=1)
        assert log.add_cosignature(head.size, site.cosign(head, timestamp=1), site.witness)
    assert verify_store(roles.url(roles.writer), public_key=signer.vkey, witnesses=[site.witness]).ok


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_entries SET type = 'round.started'",
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_cosignatures",
        "ALTER TABLE audit_entries DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_entries_append_only ON audit_entries",
        "CREATE TABLE audit_shadow (x int)",
        "UPDATE audit_meta SET value = 'x'",
    ],
    ids=["update", "delete", "truncate", "disable-trigger", "drop-trigger", "create", "meta"],
)
def test_the_writer_role_cannot_alter_history_or_the_guards(
    roles: Roles, signer: Signer, tmp_path: Path, statement: str
) -> None:
    _init(roles, signer, tmp_path)
    with AuditLog.open(roles.url(roles.writer), origin=ORIGIN, signer=signer) as log:
        log.publish_checkpoint(run_id="run-1")
    with psycopg.connect(roles.conninfo(roles.writer)) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_opening_a_store_runs_no_ddl_and_names_the_owner_step(roles: Roles, signer: Signer) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'GRANT USAGE, CREATE ON SCHEMA "{roles.schema}" TO "{roles.writer}"')
    with pytest.raises(StoreError, match="init-store"):
        AuditLog.open(roles.url(roles.writer), origin=ORIGIN, signer=signer)
    with psycopg.connect(PG_ADMIN) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (roles.schema,)
        ).fetchone()
    assert tables == (0,)


def test_readers_use_read_only_transactions(roles: Roles, signer: Signer, tmp_path: Path) -> None:
    _init(roles, signer, tmp_path)
    with AuditLog.open(roles.url(roles.owner), readonly=True) as log, pytest.raises(StoreError, match="read-only"):
        log.append(run_id="run-1", round=None, type="log.read", actor=Actor(kind="operator", id="x"),
                   outcome="success")
