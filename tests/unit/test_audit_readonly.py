"""Issue 15, step 5: readers open stores read-only and never create or modify a file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedinfra.audit import Actor, AuditLog, Signer
from fedinfra.audit.access import verify_access_log
from fedinfra.cli import build_app
from fedinfra.errors import VerificationError

ORIGIN = "fedinfra.test/ro"


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


def _files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A closed store in rollback-journal mode, as a copy made for an auditor would be."""
    path = tmp_path / "store" / "audit.sqlite"
    with AuditLog.open(path, origin=ORIGIN, signer=Signer.generate(ORIGIN)) as log:
        actor = Actor(kind="coordinator", id="coord")
        log.append(run_id="run-1", round=1, type="round.started", actor=actor, outcome="success")
        log.publish_checkpoint(run_id="run-1", round=1)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["audit", "verify"],
        ["audit", "show", "--access-log", "{access}"],
        ["audit", "prove", "--seq", "0", "--access-log", "{access}"],
        ["audit", "export", "--out", "{out}", "--access-log", "{access}"],
    ],
    ids=["verify", "show", "prove", "export"],
)
def test_a_reader_leaves_every_byte_of_the_store_directory_unchanged(
    store: Path, tmp_path: Path, command: list[str]
) -> None:
    before = _files(store.parent)
    args = [a.format(access=tmp_path / "reads.jsonl", out=tmp_path / "export") for a in command]
    code, out = _run(*args[:2], str(store), *args[2:])
    assert code == 0, out
    assert _files(store.parent) == before  # no journal-mode change, no -wal/-shm, no entry


@pytest.mark.parametrize("command", [["verify"], ["show"], ["prove", "--seq", "0"], ["export", "--out", "x"]])
def test_an_empty_file_is_one_line_exit_2_and_stays_empty(tmp_path: Path, command: list[str]) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    code, out = _run("audit", command[0], str(empty), *command[1:])
    assert code == 2
    assert out.strip().count("\n") == 0
    assert "empty file" in out
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"]


@pytest.mark.parametrize("command", [["verify"], ["show"], ["prove", "--seq", "0"]])
def test_a_missing_store_is_one_line_exit_2_and_is_not_created(tmp_path: Path, command: list[str]) -> None:
    code, out = _run("audit", command[0], str(tmp_path / "missing.sqlite"), *command[1:])
    assert code == 2
    assert "no such audit store" in out
    assert list(tmp_path.iterdir()) == []


def test_reads_are_recorded_in_a_hash_chained_access_log(store: Path, tmp_path: Path) -> None:
    access = tmp_path / "reads.jsonl"
    for _ in range(3):
        assert _run("audit", "show", str(store), "--access-log", str(access))[0] == 0
    assert verify_access_log(access) == 3
    records = [json.loads(line) for line in access.read_text().splitlines()]
    assert {r["type"] for r in records} == {"log.read"}
    assert records[0]["tree_size"] == 2
    assert records[0]["origin"] == ORIGIN
    lines = access.read_text().splitlines()
    access.write_text("\n".join([lines[0], lines[2]]) + "\n")  # a read deleted
    with pytest.raises(VerificationError, match="breaks the chain"):
        verify_access_log(access)


def test_a_read_that_cannot_be_recorded_is_refused(store: Path, tmp_path: Path) -> None:
    code, out = _run("audit", "show", str(store), "--access-log", str(tmp_path / "no" / "such" / "dir" / "r.jsonl"))
    assert code == 2
    assert "cannot record this read" in out


def test_a_store_on_a_read_only_mount_verifies(store: Path, tmp_path: Path) -> None:
    # Keep it in WAL mode, as the coordinator leaves it: the hard case for read-only opening.
    con = sqlite3.connect(store)
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    mount = tmp_path / "ro"
    mount.mkdir()
    cli = "import sys; from fedinfra.cli import main; sys.argv[0] = 'fedinfra'; main()"
    script = (
        f"mount --bind {store.parent} {mount} && mount -o remount,bind,ro {mount} && "
        f'{sys.executable} -c "{cli}" audit verify {mount / store.name} --format json'
    )
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("mount namespaces are not available here")
    result = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads(result.stdout)["ok"] is True


def test_budget_show_leaves_the_ledger_unchanged(tmp_path: Path) -> None:
    from fedinfra.privacy import PrivacyLedger

    ledger = tmp_path / "ledger" / "ledger.sqlite"
    ledger.parent.mkdir()
    PrivacyLedger(ledger).close()
    before = _files(ledger.parent)
    code, out = _run("budget", "show", "--ledger", str(ledger), "--format", "json")
    assert code == 0, out
    assert _files(ledger.parent) == before


def test_budget_show_of_an_empty_file_is_one_line_exit_2_and_stays_empty(tmp_path: Path) -> None:
    empty = tmp_path / "ledger.sqlite"
    empty.touch()
    code, out = _run("budget", "show", "--ledger", str(empty))
    assert code == 2
    assert "empty file" in out
    assert empty.stat().st_size == 0
