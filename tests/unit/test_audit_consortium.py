"""Issue 15, step 6: one audit log per consortium; checkpoints and consistency chains span runs."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedinfra.audit import Actor, AuditLog, Signer, verify_store
from fedinfra.audit.cosign import Witness
from fedinfra.cli import build_app
from fedinfra.config.server import ServerConfig
from fedinfra.coordinator.witnesses import Witnessing
from fedinfra.site.receipts import cosign_checkpoint, cosigner

ORIGIN = "fedinfra-audit.consortium"
COORD = Actor(kind="coordinator", id="coordinator")


def _run(log: AuditLog, run_id: str, rounds: int) -> None:
    log.append(run_id=run_id, round=0, type="run.created", actor=COORD, outcome="success")
    for rnd in range(1, rounds + 1):
        log.append(run_id=run_id, round=rnd, type="aggregation.completed", actor=COORD, outcome="success")
        log.publish_checkpoint(run_id=run_id, round=rnd)


def test_a_deployed_coordinator_defaults_to_one_log_for_the_consortium(tmp_path: Path) -> None:
    config = ServerConfig().resolved(tmp_path)
    assert config.audit_store == str(tmp_path / "state" / "audit.sqlite")


def test_two_writers_of_one_log_interleave_without_a_gap(tmp_path: Path) -> None:
    signer = Signer.generate(ORIGIN)
    store = tmp_path / "audit.sqlite"
    with AuditLog.open(store, origin=ORIGIN, signer=signer) as run_a, AuditLog.open(
        store, origin=ORIGIN, signer=signer
    ) as run_b:
        _run(run_a, "run-a", 1)
        _run(run_b, "run-b", 2)  # b was behind: it catches up and appends after a
        _run(run_a, "run-a2", 1)
        assert run_a.size == run_b.size + 3
    result = verify_store(store, public_key=signer.vkey, workers=1)
    assert result.ok, result.problem
    assert result.entries == 3 + 5 + 3


def test_a_sites_consistency_chain_spans_runs_of_one_log(tmp_path: Path) -> None:
    signer = Signer.generate(ORIGIN)
    home = tmp_path / "site-a"
    held = home / "receipts" / ORIGIN
    with AuditLog.open(tmp_path / "audit.sqlite", origin=ORIGIN, signer=signer) as log:
        witnessing = Witnessing(log)
        witnessing.enrol("site-a", cosigner(home, "site-a").vkey)
        size = 0
        for run_id in ("run-1", "run-2", "run-3"):
            _run(log, run_id, 2)
            reply = cosign_checkpoint(
                witnessing.request(size), directory=held, verifier_key=signer.vkey, home=home, site="site-a"
            )
            assert witnessing.accept("site-a", reply)
            size = log.size
    # The site kept one checkpoint per run, each proven to extend the one before it.
    kept = sorted(p.name for p in held.glob("checkpoint-*.note"))
    assert len(kept) == 3
    witness = Witness.from_vkey((home / "cosigner.vkey").read_text())
    assert verify_store(tmp_path / "audit.sqlite", public_key=signer.vkey, witnesses=[witness], workers=1).ok


def test_show_filters_one_run_of_the_consortium_log(tmp_path: Path) -> None:
    signer = Signer.generate(ORIGIN)
    store = tmp_path / "audit.sqlite"
    with AuditLog.open(store, origin=ORIGIN, signer=signer) as log:
        _run(log, "run-1", 1)
        _run(log, "run-2", 2)
    out = CliRunner().invoke(build_app(), ["audit", "show", str(store), "--run", "run-2", "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert {r["run_id"] for r in rows} == {"run-2"}
    assert len(rows) == 5


_WRITER = """
import sys
from fedinfra.audit import Actor, AuditLog, Signer
signer = Signer.from_skey(sys.argv[2])
actor = Actor(kind="coordinator", id="coordinator")
with AuditLog.open(sys.argv[1], origin=signer.name, signer=signer) as log:
    for i in range(60):
        log.append(run_id=sys.argv[3], round=i, type="round.started", actor=actor, outcome="success")
        if i % 10 == 9:
            log.publish_checkpoint(run_id=sys.argv[3], round=i)
"""


def test_two_coordinator_processes_append_to_one_log_concurrently(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    signer = Signer.generate(ORIGIN)
    store = tmp_path / "audit.sqlite"
    AuditLog.open(store, origin=ORIGIN, signer=signer).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(store), signer.skey, f"run-{n}"],
            env=os.environ.copy(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (1, 2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    result = verify_store(store, public_key=signer.vkey, workers=1)
    assert result.ok, result.problem
    assert result.entries == 2 * (60 + 6)
