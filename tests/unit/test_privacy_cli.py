"""``fedinfra privacy epsilon|plan`` and ``fedinfra budget show``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedinfra.cli import privacy as privacy_cli
from fedinfra.privacy import PrivacyLedger


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """Root."""

    privacy_cli.register(root)
    return root


def test_epsilon_prints_the_known_answer_as_json(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, [
        "privacy", "epsilon", "--noise-multiplier", "1.5", "--sample-rate", "0.04", "--steps", "2250",
        "--delta", "1e-5", "--accountant", "rdp", "--format", "json",
    ])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epsilon"] == pytest.approx(7.32911117143, abs=1e-9)


def test_plan_prints_a_noise_multiplier_within_the_target(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, [
        "privacy", "plan", "--target-epsilon", "2", "--delta", "1e-5", "--sample-rate", "0.01",
        "--steps", "500", "--accountant", "rdp", "--format", "json",
    ])

    out = json.loads(result.stdout)
    assert result.exit_code == 0
    assert out["epsilon"] <= 2.0
    assert out["noise_multiplier"] > 0


def test_bad_delta_is_a_one_line_usage_error(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, [
        "privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10", "--delta", "2",
    ])

    assert result.exit_code == 2
    assert "delta must be in (0, 1)" in result.output
    assert "Traceback" not in result.output


def test_budget_show_lists_spends_and_totals(app: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    book = PrivacyLedger(path)
    for run, eps in (("run-1", 1.0), ("run-2", 0.5)):
        book.reserve(run_id=run, round=1, mechanism="dp-sgd", accountant="prv", params={}, epsilon=eps,
                     delta=1e-5, dataset_fingerprint="sha256:ff", run_cap=2, lifetime_cap=5)
    book.close()

    result = CliRunner().invoke(app, ["budget", "show", "--ledger", str(path), "--format", "json"])

    out = json.loads(result.stdout)
    assert result.exit_code == 0
    assert len(out["entries"]) == 2
    assert out["totals"][0]["epsilon"] == pytest.approx(1.5)


def test_budget_show_of_a_missing_ledger_fails_cleanly(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["budget", "show", "--ledger", str(tmp_path / "nope.db")])

    assert result.exit_code == 2
    assert "no such ledger file" in result.output
