"""``fedinfra audit verify|show|prove|export`` end to end on a real SQLite store."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedinfra.audit import Actor, AuditLog, Event, Receipt, Signer, Subject, verify_receipt
from fedinfra.cli import build_app

ORIGIN = "fedinfra.test/log"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def store(tmp_path: Path, signer: Signer) -> Path:
    path = tmp_path / "run" / "audit.db"
    with AuditLog.open(path, origin=ORIGIN, signer=signer) as log:
        log.publish_checkpoint(run_id="run-1", now=T0)
        for round_ in range(2):
            log.append_many(
                [
                    Event(
                        run_id="run-1",
                        round=round_,
                        type="update.received",
                        actor=Actor(kind="site", id=site),
                        outcome="success",
                        subject=Subject(artifact="update", sha256="ab" * 32, size=12),
                    )
                    for site in ("site-a", "site-b")
                ],
                now=T0,
                publish=True,
            )
        log.append(
            run_id="run-2", round=None, type="run.created", actor=Actor(kind="coordinator", id="coord"),
            outcome="success", now=T0,
        )
        log.publish_checkpoint(run_id="run-2", now=T0)
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


def test_verify_passes_on_an_intact_store(store: Path) -> None:
    code, out = _run("audit", "verify", str(store))

    assert code == 0
    assert "verified" in out
    assert "9 entries, 4 signed checkpoints" in out


def test_verify_with_the_pinned_key_reports_json(store: Path, signer: Signer, tmp_path: Path) -> None:
    key = tmp_path / "log.vkey"
    key.write_text(signer.vkey + "\n")

    code, out = _run("audit", "verify", str(store), "--public-key", str(key), "--format", "json")

    assert code == 0
    payload = json.loads(out)
    assert payload["ok"] is True
    assert payload["key_pinned"] is True
    assert payload["head_size"] == payload["entries"] == 9


def test_verify_accepts_a_pem_public_key(store: Path, signer: Signer, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = tmp_path / "log.pem"
    key.write_bytes(
        signer.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    assert _run("audit", "verify", str(store), "--public-key", str(key))[0] == 0


def test_verify_with_the_wrong_key_fails_with_exit_1(store: Path, tmp_path: Path) -> None:
    key = tmp_path / "other.vkey"
    key.write_text(Signer.generate(ORIGIN).vkey)

    code, out = _run("audit", "verify", str(store), "--public-key", str(key))

    assert code == 1
    assert "not by the pinned key" in out


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such audit store"),
        (lambda p: p.write_text("just text\n" * 50), "not an audit store"),
        (lambda p: p.mkdir(), "not an audit export"),
    ],
    ids=["missing", "not-sqlite", "empty-directory"],
)
def test_bad_targets_are_one_line_errors_with_exit_2(tmp_path: Path, setup: object, message: str) -> None:
    target = tmp_path / "target"
    setup(target)  # type: ignore[operator]

    code, out = _run("audit", "verify", str(target))

    assert code == 2
    assert message in out
    assert "Traceback" not in out


def test_a_malformed_public_key_file_is_bad_input(store: Path, tmp_path: Path) -> None:
    key = tmp_path / "bad.vkey"
    key.write_text("not a key")

    code, out = _run("audit", "verify", str(store), "--public-key", str(key))

    assert code == 2
    assert "not a verifier key" in out


def test_show_filters_by_run_and_type_and_logs_the_read(store: Path) -> None:
    code, out = _run("audit", "show", str(store), "--run", "run-1", "--type", "update.received", "--format", "json")

    assert code == 0
    rows = json.loads(out)
    assert [r["seq"] for r in rows] == [1, 2, 4, 5]
    with AuditLog.open(store) as log:
        assert log.entry(log.size - 1).type != "log.read"  # the store itself is not written to
    (record,) = [json.loads(line) for line in Path(f"{store}.reads.jsonl").read_text().splitlines()]
    assert record["type"] == "log.read"
    assert record["details"] == {"command": "show", "run": "run-1", "type": "update.received"}


def test_show_prints_a_table(store: Path) -> None:
    code, out = _run("audit", "show", str(store), "--limit", "3")

    assert code == 0
    assert "audit log" in out
    assert out.count("system:") + out.count("site:") >= 3


def test_show_refuses_an_unknown_type(store: Path) -> None:
    code, out = _run("audit", "show", str(store), "--type", "nope")

    assert code == 2
    assert "not an event type" in out


def test_prove_prints_a_receipt_that_verifies(store: Path, signer: Signer, tmp_path: Path) -> None:
    code, out = _run("audit", "prove", str(store), "--seq", "2", "--since", "1", "--out", str(tmp_path / "r.json"))

    assert code == 0
    receipt = Receipt.model_validate_json(out)
    assert verify_receipt(receipt, verifier_key=signer.vkey).size == 9
    assert Receipt.load(tmp_path / "r.json") == receipt


def test_prove_of_an_unknown_entry_is_bad_input(store: Path) -> None:
    code, out = _run("audit", "prove", str(store), "--seq", "999")

    assert code == 2
    assert "no such entry" in out


def test_an_export_verifies_offline_with_the_exported_key(store: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "export"

    code, _ = _run("audit", "export", str(store), "--out", str(out_dir))

    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "checkpoints.jsonl", "entries.jsonl", "log.vkey", "manifest.json",
    ]
    code, out = _run("audit", "verify", str(out_dir), "--public-key", str(out_dir / "log.vkey"))
    assert code == 0, out


def test_the_installed_command_prints_no_traceback(fedinfra_bin: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [fedinfra_bin, "audit", "verify", str(tmp_path / "missing.db")], capture_output=True, text=True, timeout=120
    )

    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "Traceback" not in proc.stderr
