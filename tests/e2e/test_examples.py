"""``fedinfra simulate`` runs an example task end to end: Flower simulation, DP + secagg."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow  # ~90 s of Flower simulation; tests/unit/test_examples.py trains the same task in-process
def test_digits_cnn_on_png_images_federates_with_dp_sgd_and_secure_aggregation(
    fedinfra_bin: str, tmp_path: Path
) -> None:
    root = tmp_path / "digits_cnn"
    shutil.copytree(EXAMPLES / "digits_cnn", root)
    runpy.run_path(str(root / "prepare.py"), run_name="example")["main"](root)

    out = str(tmp_path / "runs")
    proc = subprocess.run(
        [fedinfra_bin, "simulate", "--job", str(root / "job.toml"), "--out", out, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    task = metrics["task"]
    assert task["ref"] == "digits_task:DigitsCNN"
    assert task["headline"] == "accuracy"
    assert task["metrics"]["accuracy"] > 0.3  # chance is 0.1; about 0.68 measured at epsilon 8
    assert 0.5 < task["metrics"]["roc_auc"] <= 1.0
    assert metrics["secure_aggregation"] == "secagg"
    assert metrics["privacy"]["mechanism"] == "dp-sgd"
    assert all(0 < e <= 8.0 for e in metrics["privacy"]["epsilon_per_site"].values())
    assert all("metrics" in r["details"] for r in metrics["rounds"])


def test_simulate_refuses_a_task_that_cannot_be_imported_in_one_line(fedinfra_bin: str, tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text('[task]\nref = "no_such_task_module:Task"\n')

    proc = subprocess.run(
        [fedinfra_bin, "simulate", "--job", str(tmp_path / "job.toml")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert proc.returncode == 2
    assert "cannot be imported" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
