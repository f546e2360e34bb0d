"""The malicious site in Flower's simulation engine (Ray), against the real coordinator.

The simulation runs in its own process (Ray's worker processes outlive the call and
would otherwise be reported as unraisable ``Popen.__del__`` warnings at the end of the
test session).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]


def test_a_site_claiming_ten_to_the_fifteen_examples_is_rejected_in_simulation(tmp_path: Path) -> None:
    from fedinfra.audit import AuditLog
    from fedinfra.runtime.simulation import AUDIT_STORE

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "tests.adversarial.sim_app", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert "rounds=2" in done.stdout
    log = AuditLog.open(str(tmp_path / AUDIT_STORE))
    try:
        entries = log.entries(run_id="sim-1")
    finally:
        log.close()
    rejected = [(e.round, e.actor.id, e.details["check"]) for e in entries if e.type == "update.rejected"]
    assert [(r, s) for r, s, _ in rejected] == [(1, "edge-3"), (2, "edge-3")]
    assert all(check.startswith("train_report.num_examples") for _, _, check in rejected), rejected
    assert [e.type for e in entries if e.type.startswith("run.")][-1] == "run.completed"
