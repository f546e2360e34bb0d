"""The privacy ledger: write-ahead reservations, caps, totals, persistence."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedinfra.errors import PrivacyBudgetExceeded, StoreError
from fedinfra.privacy import PrivacyLedger

FP = "sha256:" + "ab" * 32
FIXED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    book = PrivacyLedger(tmp_path / "ledger.db", clock=lambda: FIXED)
    yield book  # type: ignore[misc]
    book.close()


def _reserve(book: PrivacyLedger, run: str, rnd: int, eps: float, *, run_cap: float = 3.0,
             lifetime_cap: float = 5.0, fp: str = FP) -> object:
    return book.reserve(
        run_id=run, round=rnd, mechanism="dp-sgd", accountant="prv",
        params={"noise_multiplier": 1.1, "sample_rate": 0.05, "steps": 40 * rnd},
        epsilon=eps, delta=1e-5, dataset_fingerprint=fp, run_cap=run_cap, lifetime_cap=lifetime_cap,
    )


def test_a_reservation_is_stored_with_everything_an_auditor_needs(ledger: PrivacyLedger) -> None:
    _reserve(ledger, "run-1", 1, 0.8)

    (entry,) = ledger.entries()

    assert (entry.run_id, entry.round, entry.mechanism, entry.accountant) == ("run-1", 1, "dp-sgd", "prv")
    assert entry.params == {"noise_multiplier": 1.1, "sample_rate": 0.05, "steps": 40}
    assert (entry.epsilon, entry.delta, entry.dataset_fingerprint) == (0.8, 1e-5, FP)
    assert entry.reserved_at == FIXED.isoformat()


def test_a_run_spends_its_largest_cumulative_epsilon(ledger: PrivacyLedger) -> None:
    _reserve(ledger, "run-1", 1, 0.8)
    _reserve(ledger, "run-1", 2, 1.3)

    assert ledger.spent(dataset_fingerprint=FP, run_id="run-1") == 1.3
    assert ledger.spent(dataset_fingerprint=FP) == 1.3


def test_a_retried_round_is_not_double_counted(ledger: PrivacyLedger) -> None:
    _reserve(ledger, "run-1", 1, 0.8)
    _reserve(ledger, "run-1", 1, 0.8)

    assert ledger.spent(dataset_fingerprint=FP) == 0.8


def test_runs_add_up_over_the_lifetime_of_a_dataset(ledger: PrivacyLedger) -> None:
    _reserve(ledger, "run-1", 1, 2.0)
    _reserve(ledger, "run-2", 1, 1.5)

    (total,) = ledger.totals()

    assert (total.runs, total.rounds, total.epsilon, total.delta) == (2, 2, 3.5, 2e-5)


def test_a_round_over_the_run_cap_is_refused_and_not_written(ledger: PrivacyLedger) -> None:
    _reserve(ledger, "run-1", 1, 2.5)

    with pytest.raises(PrivacyBudgetExceeded, match="per-run cap 3"):
        _reserve(ledger, "run-1", 2, 3.2)

    assert len(ledger.entries()) == 1


def test_a_round_over_the_lifetime_cap_is_refused(ledger: PrivacyLedger) -> None:
    _reserve(ledger, "run-1", 1, 3.0)
    _reserve(ledger, "run-2", 1, 1.5)

    with pytest.raises(PrivacyBudgetExceeded, match="lifetime epsilon"):
        _reserve(ledger, "run-3", 1, 0.6)


def test_datasets_have_separate_lifetime_budgets(ledger: PrivacyLedger) -> None:
    _reserve(ledger, "run-1", 1, 3.0)
    _reserve(ledger, "run-2", 1, 2.0)

    _reserve(ledger, "run-3", 1, 3.0, fp="sha256:" + "cd" * 32)

    assert ledger.spent(dataset_fingerprint="sha256:" + "cd" * 32) == 3.0


def test_remaining_reports_the_binding_limit(ledger: PrivacyLedger) -> None:
    _reserve(ledger, "run-1", 1, 3.0)
    _reserve(ledger, "run-2", 1, 1.0)

    left = ledger.remaining(dataset_fingerprint=FP, run_id="run-2", run_cap=3.0, lifetime_cap=5.0)

    assert left.run_epsilon == pytest.approx(2.0)
    assert left.lifetime_epsilon == pytest.approx(1.0)
    assert left.epsilon == pytest.approx(1.0)


def test_a_delta_above_the_site_cap_is_refused(ledger: PrivacyLedger) -> None:
    with pytest.raises(PrivacyBudgetExceeded, match="delta"):
        ledger.reserve(run_id="r", round=1, mechanism="dp-sgd", accountant="prv", params={}, epsilon=0.1,
                       delta=1e-3, dataset_fingerprint=FP, run_cap=1, lifetime_cap=1, delta_cap=1e-5)


def test_spends_survive_reopening_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    first = PrivacyLedger(path)
    _reserve(first, "run-1", 1, 1.0)
    first.close()

    second = PrivacyLedger(path)
    try:
        assert second.spent(dataset_fingerprint=FP) == 1.0
    finally:
        second.close()


def test_a_file_that_is_not_a_ledger_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "not-a-db"
    path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(StoreError, match="cannot open privacy ledger"):
        PrivacyLedger(path)
