"""HE mode: round r's federated evaluation rides in round r+1's train wave (one wave per round).

A real Flower simulation (the demo, packed BFV + DP-SGD); the audit log shows which wave
carried each evaluation, and metrics and report still hold every round's accuracy.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

# slow (make e2e): tests/unit/test_evaluation_secure_sum.py runs the same HE evaluation through the
# real coordinator and site app in-process; this is its 3-round Flower run.
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROUNDS = 3


def _show(fedinfra_bin: str, run_dir: Path, kind: str) -> list[dict[str, Any]]:
    store = str(run_dir / "audit.sqlite")
    shown = subprocess.run(
        [fedinfra_bin, "audit", "show", store, "--type", kind, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    entries: list[dict[str, Any]] = json.loads(shown.stdout)
    return entries


def test_he_run_evaluates_each_round_in_the_next_wave_and_keeps_every_accuracy(
    fedinfra_bin: str, tmp_path: Path
) -> None:
    run = subprocess.run(
        [fedinfra_bin, "demo", "--rounds", str(ROUNDS), "--sites", "3", "--out", str(tmp_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout)["run_id"]
    run_dir = tmp_path / run_id
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["accuracy"] = [r["test_accuracy"] for r in metrics["rounds"]]  # per-round figures: once, in rounds
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, ROUNDS + 1))
    assert all(math.isfinite(a) and 0.5 <= a <= 1.0 for a in metrics["accuracy"])
    assert metrics["final_accuracy"] == metrics["accuracy"][-1]
    evaluations = _show(fedinfra_bin, run_dir, "evaluation.completed")
    # Round r is evaluated in round r+1's wave (the sampled sites report counts with their
    # update); the last round in the close wave. No round has an evaluation wave of its own.
    assert [(e["round"], e["details"]["evaluated_round"]) for e in evaluations] == [(2, 1), (3, 2), (3, 3)]
    assert all(len(e["details"]["sites"]) == 3 for e in evaluations)
    assert [e["details"]["test_accuracy"] for e in evaluations] == metrics["accuracy"]
    aggregations = _show(fedinfra_bin, run_dir, "aggregation.completed")
    # The coordinator never had test figures of its own for an encrypted aggregate.
    assert all("test_accuracy" not in e["details"] for e in aggregations)
    report = json.loads((run_dir / f"report-{run_id}.json").read_text())
    assert [r["test_accuracy"] for r in report["rounds"]] == metrics["accuracy"]
    verify = subprocess.run(
        [fedinfra_bin, "audit", "verify", str(run_dir / "audit.sqlite")], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
