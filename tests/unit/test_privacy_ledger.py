"""The privacy ledger: write-ahead reservations, caps, totals, persistence, schema, refusals."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from fedinfra.errors import ConfigError, PrivacyBudgetExceeded, StoreError
from fedinfra.privacy import PrivacyLedger
from fedinfra.privacy.ledger import _metadata

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


# -- what the ledger stores and reads back, field by field, and each refusal's whole text --
# Found by mutation testing (issue 20): the parts the cap tests do not reach. The on-disk
# schema is a file contract (auditors' tools and older sites read the same file; a change must
# bump SCHEMA_VERSION); every read's filter keeps another dataset's, run's or mechanism's spends
# out; each refusal names its field and says what to do. Each test below failed on at least
# one surviving mutant.

OTHER_FP = "sha256:" + "cd" * 32


def _spend(book: PrivacyLedger, run: str = "r", rnd: int = 1, eps: float = 1.0, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "run_id": run,
        "round": rnd,
        "mechanism": "dp-sgd",
        "accountant": "rdp",
        "params": {},
        "epsilon": eps,
        "delta": 1e-6,
        "dataset_fingerprint": FP,
        "run_cap": 2.0,
        "lifetime_cap": 3.0,
    }
    args.update(kw)
    return book.reserve(**args)


# -- the schema on disk -------------------------------------------------------------------

SQLITE_SCHEMA = [
    ("index", "ix_privacy_spend_dataset_fingerprint",
     "CREATE INDEX ix_privacy_spend_dataset_fingerprint ON privacy_spend (dataset_fingerprint)"),
    ("index", "ix_privacy_spend_run_id", "CREATE INDEX ix_privacy_spend_run_id ON privacy_spend (run_id)"),
    ("table", "ledger_meta",
     'CREATE TABLE ledger_meta (\n\t"key" VARCHAR(64) NOT NULL, \n\tvalue TEXT NOT NULL, \n\tPRIMARY KEY ("key")\n)'),
    ("table", "privacy_spend",
     "CREATE TABLE privacy_spend (\n\tid INTEGER NOT NULL, \n\trun_id VARCHAR(128) NOT NULL, \n"
     "\tround INTEGER NOT NULL, \n\tmechanism VARCHAR(32) NOT NULL, \n\taccountant VARCHAR(32) NOT NULL, \n"
     "\tparams TEXT NOT NULL, \n\tepsilon FLOAT NOT NULL, \n\tdelta FLOAT NOT NULL, \n"
     "\tdataset_fingerprint VARCHAR(160) NOT NULL, \n\treserved_at VARCHAR(40) NOT NULL, \n\tPRIMARY KEY (id)\n)"),
]


def test_a_new_ledger_file_has_the_version_1_schema(tmp_path: Path) -> None:
    """Every column NOT NULL, the two lookup indexes, the schema version row (a file contract)."""
    PrivacyLedger(tmp_path / "l.db").close()

    db = sqlite3.connect(tmp_path / "l.db")
    try:
        objects = db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
        meta = db.execute("SELECT key, value FROM ledger_meta").fetchall()
    finally:
        db.close()

    assert objects == SQLITE_SCHEMA
    assert meta == [("schema_version", "1")]


def test_on_postgresql_the_spend_id_is_generated_by_the_database() -> None:
    """PostgreSQL needs SERIAL for the id: the insert names no id (SQLite's rowid hides this)."""
    ddl = str(CreateTable(_metadata().tables["privacy_spend"]).compile(dialect=postgresql.dialect()))

    assert "\tid SERIAL NOT NULL, \n" in ddl


# -- reads: each filter and each field ---------------------------------------------------


def test_entries_of_one_dataset_are_that_datasets_only_with_their_ids(ledger: PrivacyLedger) -> None:
    first = _spend(ledger, "r1", dataset_fingerprint=FP)
    _spend(ledger, "r2", dataset_fingerprint=OTHER_FP)
    third = _spend(ledger, "r3", dataset_fingerprint=FP)

    mine = ledger.entries(dataset_fingerprint=FP)

    assert [(e.id, e.run_id) for e in mine] == [(first.id, "r1"), (third.id, "r3")]
    assert [e.id for e in ledger.entries()] == [1, 2, 3]


def test_release_rounds_counts_only_this_dataset_run_and_mechanism(ledger: PrivacyLedger) -> None:
    _spend(ledger, "r", 1)
    _spend(ledger, "r", 2, dataset_fingerprint=OTHER_FP)
    _spend(ledger, "other-run", 3)
    _spend(ledger, "r", 4, mechanism="gaussian")
    _spend(ledger, "r", 5)

    assert ledger.release_rounds(dataset_fingerprint=FP, run_id="r", mechanism="dp-sgd") == [1, 5]


def test_remaining_is_what_is_left_and_never_negative(ledger: PrivacyLedger) -> None:
    _spend(ledger, "r1", eps=1.75, run_cap=2.0, lifetime_cap=2.5)
    _spend(ledger, "r2", eps=0.5, run_cap=2.0, lifetime_cap=2.5)

    left = ledger.remaining(dataset_fingerprint=FP, run_id="r1", run_cap=2.0, lifetime_cap=2.5)
    spent_out = ledger.remaining(dataset_fingerprint=FP, run_id="r1", run_cap=1.0, lifetime_cap=2.0)

    assert (left.run_epsilon, left.lifetime_epsilon) == (pytest.approx(0.25), pytest.approx(0.25))
    assert (spent_out.run_epsilon, spent_out.lifetime_epsilon, spent_out.epsilon) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(("field", "value"), [("run_cap", 0.0), ("lifetime_cap", float("nan"))])
def test_remaining_names_a_bad_cap(ledger: PrivacyLedger, field: str, value: float) -> None:
    caps = {"run_cap": 1.0, "lifetime_cap": 1.0, field: value}

    with pytest.raises(ConfigError, match=rf"^{field} must be > 0 \(got {value!r}\)$"):
        ledger.remaining(dataset_fingerprint=FP, run_id="r", **caps)


def test_totals_count_distinct_runs_and_rounds_per_dataset_sorted_by_fingerprint(ledger: PrivacyLedger) -> None:
    """A retried round is one round; each dataset is reported under its own fingerprint."""
    _spend(ledger, "z", 1, 0.5, dataset_fingerprint=OTHER_FP)
    _spend(ledger, "r1", 1, 0.5)
    _spend(ledger, "r1", 2, 1.0)
    _spend(ledger, "r1", 2, 1.0)  # the same round retried
    _spend(ledger, "r2", 1, 0.25)

    totals = ledger.totals()

    assert [(t.dataset_fingerprint, t.runs, t.rounds) for t in totals] == [(FP, 2, 3), (OTHER_FP, 1, 1)]
    assert (totals[0].epsilon, totals[0].delta) == (1.25, pytest.approx(2e-6))


# -- refusals: the whole message ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run_id": ""}, "run_id and dataset_fingerprint must be non-empty"),
        ({"dataset_fingerprint": ""}, "run_id and dataset_fingerprint must be non-empty"),
        ({"round": -1}, "round must be >= 0 (got -1)"),
        ({"epsilon": float("nan")}, "epsilon must be a finite number >= 0 (got nan)"),
        ({"epsilon": -0.5}, "epsilon must be a finite number >= 0 (got -0.5)"),
        ({"delta": float("inf")}, "delta must be a finite number >= 0 (got inf)"),
        ({"run_cap": 0}, "run_cap must be > 0 (got 0)"),
        ({"lifetime_cap": float("nan")}, "lifetime_cap must be > 0 (got nan)"),
        ({"delta_cap": 0.0}, "delta_cap must be > 0 (got 0.0)"),
        ({"delta_lifetime_cap": -1.0}, "delta_lifetime_cap must be > 0 (got -1.0)"),
    ],
)
def test_a_bad_reservation_names_its_field(ledger: PrivacyLedger, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        _spend(ledger, **change)
    assert ledger.entries() == []


def test_round_zero_and_zero_spends_are_accepted(ledger: PrivacyLedger) -> None:
    record = _spend(ledger, rnd=0, eps=0.0, delta=0.0)

    assert (record.round, record.epsilon, record.delta) == (0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (
            {},
            {"epsilon": 2.5},
            "run r round 2: epsilon would reach 2.5, above the per-run cap 2 (spent 1); "
            "stop this run or raise the site's epsilon_per_run",
        ),
        (
            {"run_id": "a", "epsilon": 2.0},
            {"run_id": "b", "epsilon": 1.5},
            "run b round 2: lifetime epsilon of dataset sha256:abababababab would reach 3.5, above its cap 3 "
            "(spent 2); this dataset's budget is exhausted",
        ),
        (
            {},
            {"delta": 2e-6, "delta_cap": 1e-6},
            "run r round 2: delta 2e-06 exceeds the site's delta cap 1e-06; lower the job's delta",
        ),
        (
            {"run_id": "a"},
            {"run_id": "b", "delta_lifetime_cap": 1.5e-6},
            "run b round 2: lifetime delta of dataset sha256:abababababab would reach 2e-06, above its cap "
            "1.5e-06; this dataset's delta is exhausted",
        ),
    ],
)
def test_each_cap_refusal_says_what_was_exceeded_and_what_to_do(
    ledger: PrivacyLedger, first: dict[str, Any], second: dict[str, Any], message: str
) -> None:
    _spend(ledger, rnd=1, **first)

    with pytest.raises(PrivacyBudgetExceeded, match=f"^{re.escape(message)}$"):
        _spend(ledger, rnd=2, **second)
    assert len(ledger.entries()) == 1


def test_the_lifetime_delta_cap_counts_each_run_once_at_its_largest_delta_per_dataset(
    ledger: PrivacyLedger,
) -> None:
    """Deltas add across runs (Dwork & Roth 2014, Thm. 3.16) but a run's later round is not a new run."""
    cap = {"delta": 1e-6, "delta_lifetime_cap": 1.5e-6}
    _spend(ledger, "r", dataset_fingerprint=OTHER_FP, **cap)  # another dataset's delta is not ours
    _spend(ledger, "r", 1, **cap)
    _spend(ledger, "r", 2, **cap)  # the same run again: still 1e-6 of the dataset's 1.5e-6

    with pytest.raises(PrivacyBudgetExceeded, match="lifetime delta"):
        _spend(ledger, "r2", 1, **cap)  # a second run: 2e-6
    assert [e.run_id for e in ledger.entries(dataset_fingerprint=FP)] == ["r", "r"]


def test_a_first_spend_at_the_lifetime_delta_cap_passes_and_above_it_is_refused(ledger: PrivacyLedger) -> None:
    with pytest.raises(PrivacyBudgetExceeded, match="lifetime delta"):
        _spend(ledger, "r", delta=2e-6, delta_lifetime_cap=1e-6)

    _spend(ledger, "r", delta=1e-6, delta_lifetime_cap=1e-6)

    assert len(ledger.entries()) == 1


def test_a_run_id_reused_on_another_dataset_is_a_separate_spend(ledger: PrivacyLedger) -> None:
    _spend(ledger, "r", eps=1.5, dataset_fingerprint=OTHER_FP)
    _spend(ledger, "r", eps=0.5)

    assert ledger.spent(dataset_fingerprint=FP, run_id="r") == 0.5
    assert ledger.remaining(dataset_fingerprint=FP, run_id="r", run_cap=2.0, lifetime_cap=3.0).run_epsilon == 1.5


def test_by_default_a_reservation_is_stamped_in_utc(tmp_path: Path) -> None:
    """The audit trail and the ledger compare times across sites: local time would be ambiguous."""
    book = PrivacyLedger(tmp_path / "l.db")
    try:
        stamp = datetime.fromisoformat(_spend(book).reserved_at)
    finally:
        book.close()

    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_a_run_ids_delta_on_another_dataset_is_not_credited_against_this_datasets_lifetime_delta(
    ledger: PrivacyLedger,
) -> None:
    _spend(ledger, "a", delta=1e-6, delta_lifetime_cap=1.5e-6)
    _spend(ledger, "r", delta=1.4e-6, dataset_fingerprint=OTHER_FP, delta_lifetime_cap=1.5e-6)

    with pytest.raises(PrivacyBudgetExceeded, match="lifetime delta of dataset sha256:abababababab would reach 2e-06"):
        _spend(ledger, "r", delta=1e-6, delta_lifetime_cap=1.5e-6)


def test_reserve_returns_the_record_it_stored(ledger: PrivacyLedger) -> None:
    record = _spend(ledger, "r", 3, 0.5, mechanism="gaussian", accountant="gdp", params={"z": 1.5})

    assert record == ledger.entries()[0]
    assert (record.run_id, record.mechanism, record.accountant, record.params) == ("r", "gaussian", "gdp", {"z": 1.5})
    assert record.dataset_fingerprint == FP


def test_params_are_stored_as_sorted_json_with_other_values_as_text(ledger: PrivacyLedger, tmp_path: Path) -> None:
    """The stored text is the same for the same parameters (sorted keys); a Path or a date is kept as text."""
    _spend(ledger, params={"b": 2, "a": Path("kit/x"), "when": FIXED})

    db = sqlite3.connect(tmp_path / "ledger.db")
    try:
        (stored,) = db.execute("SELECT params FROM privacy_spend").fetchone()
    finally:
        db.close()

    assert stored == '{"a": "kit/x", "b": 2, "when": "2025-01-02 03:04:05+00:00"}'


def test_a_spend_exactly_at_the_float_tolerance_above_a_cap_passes(ledger: PrivacyLedger) -> None:
    """The only tolerance is the documented one: cap + 1e-12 for epsilon, cap * (1 + 1e-9) for delta."""
    third = "sha256:" + "ef" * 32
    _spend(ledger, "r1", eps=1.0 + 1e-12, run_cap=1.0, lifetime_cap=10.0)  # the run cap's edge
    _spend(ledger, "r2", eps=2.0 + 1e-12, run_cap=5.0, lifetime_cap=2.0, dataset_fingerprint=OTHER_FP)  # lifetime
    _spend(ledger, "r3", delta=1e-6 * (1 + 1e-9), delta_lifetime_cap=1e-6, dataset_fingerprint=third)  # delta

    assert len(ledger.entries()) == 3


def test_a_ledger_opened_read_only_reads_its_spends_and_refuses_a_file_without_a_schema_version(
    tmp_path: Path,
) -> None:
    book = PrivacyLedger(tmp_path / "l.db")
    _spend(book, eps=0.5)
    book.close()

    reader = PrivacyLedger(tmp_path / "l.db", readonly=True)
    try:
        assert reader.spent(dataset_fingerprint=FP) == 0.5
    finally:
        reader.close()
    db = sqlite3.connect(tmp_path / "l.db")
    db.execute("DELETE FROM ledger_meta")
    db.commit()
    db.close()

    with pytest.raises(StoreError, match=r"^privacy ledger has no schema version; not a ledger fedinfra wrote$"):
        PrivacyLedger(tmp_path / "l.db", readonly=True)


def test_a_ledger_named_by_an_sqlalchemy_url_is_the_file_the_url_names(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'by-url.db'}"
    book = PrivacyLedger(url)
    _spend(book, eps=0.25)
    book.close()

    reader = PrivacyLedger(url, readonly=True)
    try:
        assert reader.spent(dataset_fingerprint=FP) == 0.25
    finally:
        reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-url.db"]


def test_opening_a_missing_ledger_read_only_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        PrivacyLedger(tmp_path / "missing.db", readonly=True)

    assert list(tmp_path.iterdir()) == []


def test_every_ledger_connection_waits_for_writers_and_syncs_fully(ledger: PrivacyLedger) -> None:
    """The write-ahead promise: a reservation is on disk (synchronous FULL) before the update leaves,
    and a second process waits for the write lock (busy_timeout) instead of failing."""
    with ledger._engine.connect() as conn:
        synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        busy = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()

    assert (synchronous, busy) == (2, 10000)


def test_each_unreadable_ledger_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE other (x INTEGER)").connection.close()
    future = tmp_path / "future.db"
    PrivacyLedger(future).close()
    db = sqlite3.connect(future)
    db.execute("UPDATE ledger_meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()

    cannot_open = f"^{re.escape(str(garbage))}: cannot open privacy ledger \\(DatabaseError\\); check the path$"
    not_a_ledger = f"^{re.escape(str(empty))}: not a privacy ledger \\(no privacy_spend table\\)$"

    with pytest.raises(StoreError, match=cannot_open):
        PrivacyLedger(garbage)
    with pytest.raises(StoreError, match=not_a_ledger):
        PrivacyLedger(empty, readonly=True)
    with pytest.raises(StoreError, match=r"^privacy ledger schema 2 is not supported \(expected 1\)$"):
        PrivacyLedger(future)
