"""The site's privacy ledger: a write-ahead record of every privacy spend (SQLite).

Each row is one reservation: run, round, mechanism, accountant, parameters, the run's
*cumulative* epsilon after that round (as the accountant composes it), delta, and the
dataset fingerprint. A reservation is committed to disk *before* the update leaves the
site, so a crash after reserving can over-count (the round may never have been sent) but
can never under-count (an update never leaves without its spend on disk).

Counting rules, all conservative:

* a run's spend on a dataset is the *largest* cumulative epsilon reserved for it (so a
  retried round does not double count, and nothing reserved is ever forgotten);
* a dataset's lifetime spend is the *sum* over runs of their spends, with deltas summed
  too - basic sequential composition across runs (Dwork & Roth 2014, Thm. 3.16), which
  holds whatever each run's accountant was; both sums are capped;
* every reservation is one distinct release (:meth:`PrivacyLedger.release_rounds` lists them):
  the caller charges the composition of all of them, so a second release of the same
  round - from a model that differs in one bit - costs again. Only a byte-identical replay
  of a stored reply is free, and it never reaches the ledger.

Caps are plain numbers passed by the caller (from the site's manifest); a reservation that
would exceed the per-run or lifetime cap raises :class:`PrivacyBudgetExceeded` and writes
nothing. Reservations are serialised with ``BEGIN IMMEDIATE`` so two processes sharing a
ledger file cannot both pass the check on the same remaining budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedinfra.errors import ConfigError, PrivacyBudgetExceeded, StoreError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

SCHEMA_VERSION = 1
_EPS_SLACK = 1e-12  # float noise tolerated when comparing a spend with a cap


@dataclass(frozen=True)
class SpendRecord:
    """One reserved spend as stored."""

    id: int
    run_id: str
    round: int
    mechanism: str
    accountant: str
    params: dict[str, Any]
    epsilon: float
    delta: float
    dataset_fingerprint: str
    reserved_at: str


@dataclass(frozen=True)
class Remaining:
    """Budget left for a run on a dataset (never negative)."""

    run_epsilon: float
    lifetime_epsilon: float

    @property
    def epsilon(self) -> float:
        """The binding limit: the smaller of the two."""
        return min(self.run_epsilon, self.lifetime_epsilon)


@dataclass(frozen=True)
class DatasetTotal:
    """Totals for one dataset fingerprint across all runs."""

    dataset_fingerprint: str
    runs: int
    rounds: int
    epsilon: float
    delta: float


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _metadata() -> Any:
    from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

    md = MetaData()
    Table(
        "privacy_spend",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", String(128), nullable=False, index=True),
        Column("round", Integer, nullable=False),
        Column("mechanism", String(32), nullable=False),
        Column("accountant", String(32), nullable=False),
        Column("params", Text, nullable=False),
        Column("epsilon", Float, nullable=False),
        Column("delta", Float, nullable=False),
        Column("dataset_fingerprint", String(160), nullable=False, index=True),
        Column("reserved_at", String(40), nullable=False),
    )
    Table("ledger_meta", md, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))
    return md


def _finite_nonneg(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a finite number >= 0 (got {value!r})")
    return v


def _cap(name: str, value: float) -> float:
    v = float(value)
    if math.isnan(v) or v <= 0:
        raise ConfigError(f"{name} must be > 0 (got {value!r})")
    return v


class PrivacyLedger:
    """A persistent, write-ahead ledger of privacy spends at one site.

    Parameters
    ----------
    path:
        SQLite file (created if missing) or an SQLAlchemy URL (``sqlite:///...``,
        ``postgresql+psycopg://...``).
    clock:
        Returns the current time; injected so tests are deterministic.
    """

    def __init__(
        self, path: str | Path, *, clock: Callable[[], datetime] = _utc_now, readonly: bool = False
    ) -> None:
        from urllib.parse import quote

        from sqlalchemy import create_engine, event, inspect
        from sqlalchemy.exc import SQLAlchemyError

        url = str(path) if "://" in str(path) else f"sqlite:///{Path(path)}"
        if readonly and "://" not in str(path):
            # ``budget show``: SQLite's mode=ro URI never creates, converts or writes the file.
            url = f"sqlite:///file:{quote(str(Path(path).resolve()))}?mode=ro&uri=true"
        self._sqlite = url.startswith("sqlite")
        self._clock = clock
        self._readonly = readonly
        try:
            self._engine: Engine = create_engine(url, future=True)
            if readonly:
                self._md = _metadata()
                if not inspect(self._engine).has_table("privacy_spend"):
                    raise StoreError(f"{path}: not a privacy ledger (no privacy_spend table)")
                self._table = self._md.tables["privacy_spend"]
                self._check_schema()
                return
            if self._sqlite:
                # SQLAlchemy's pysqlite recipe: hand transaction control to us, then open
                # every transaction with BEGIN IMMEDIATE so the write lock is taken before
                # the cap check, and wait for other writers instead of failing.
                @event.listens_for(self._engine, "connect")
                def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                    dbapi_conn.isolation_level = None
                    dbapi_conn.execute("PRAGMA busy_timeout = 10000")
                    dbapi_conn.execute("PRAGMA synchronous = FULL")

                @event.listens_for(self._engine, "begin")
                def _on_begin(conn: Any) -> None:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")

            self._md = _metadata()
            self._md.create_all(self._engine)
            self._table = self._md.tables["privacy_spend"]
            self._check_schema()
        except SQLAlchemyError as exc:
            raise StoreError(f"{path}: cannot open privacy ledger ({type(exc).__name__}); check the path") from exc

    def _check_schema(self) -> None:
        from sqlalchemy import select

        meta = self._md.tables["ledger_meta"]
        with self._tx() as conn:
            row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
            if row is None and self._readonly:
                raise StoreError("privacy ledger has no schema version; not a ledger fedinfra wrote")
            if row is None:
                conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif row[0] != str(SCHEMA_VERSION):
                raise StoreError(f"privacy ledger schema {row[0]} is not supported (expected {SCHEMA_VERSION})")

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            yield conn

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    # -- reading -------------------------------------------------------------------------

    def _run_spend(self, conn: Connection, dataset: str, run_id: str) -> float:
        from sqlalchemy import func, select

        t = self._table
        q = select(func.max(t.c.epsilon)).where(t.c.dataset_fingerprint == dataset, t.c.run_id == run_id)
        return float(conn.execute(q).scalar() or 0.0)

    def _run_delta(self, conn: Connection, dataset: str, run_id: str) -> float:
        from sqlalchemy import func, select

        t = self._table
        q = select(func.max(t.c.delta)).where(t.c.dataset_fingerprint == dataset, t.c.run_id == run_id)
        return float(conn.execute(q).scalar() or 0.0)

    def _lifetime(self, conn: Connection, dataset: str) -> tuple[float, float]:
        from sqlalchemy import func, select

        t = self._table
        per_run = (
            select(func.max(t.c.epsilon).label("eps"), func.max(t.c.delta).label("dlt"))
            .where(t.c.dataset_fingerprint == dataset)
            .group_by(t.c.run_id)
            .subquery()
        )
        eps, dlt = conn.execute(select(func.sum(per_run.c.eps), func.sum(per_run.c.dlt))).one()
        return float(eps or 0.0), float(dlt or 0.0)

    def spent(self, *, dataset_fingerprint: str, run_id: str | None = None) -> float:
        """Epsilon spent on a dataset: by one run if ``run_id`` is given, else lifetime."""
        with self._tx() as conn:
            if run_id is not None:
                return self._run_spend(conn, dataset_fingerprint, run_id)
            return self._lifetime(conn, dataset_fingerprint)[0]

    def remaining(
        self, *, dataset_fingerprint: str, run_id: str, run_cap: float, lifetime_cap: float
    ) -> Remaining:
        """Budget left for ``run_id`` on a dataset under the given caps."""
        run_cap, lifetime_cap = _cap("run_cap", run_cap), _cap("lifetime_cap", lifetime_cap)
        with self._tx() as conn:
            run = self._run_spend(conn, dataset_fingerprint, run_id)
            life, _ = self._lifetime(conn, dataset_fingerprint)
        # The lifetime left for this run includes what the run already holds.
        return Remaining(
            run_epsilon=max(0.0, run_cap - run), lifetime_epsilon=max(0.0, lifetime_cap - life)
        )

    def release_rounds(self, *, dataset_fingerprint: str, run_id: str, mechanism: str) -> list[int]:
        """The round of every release reserved for ``run_id`` on a dataset by ``mechanism``.

        Every reservation is one release: a site reserves only when it will send something
        new (a byte-identical replay is served from the stored reply and reserves nothing),
        so ``len(...)`` is the number of distinct releases the composition must charge.
        """
        from sqlalchemy import select

        t = self._table
        q = (
            select(t.c.round)
            .where(t.c.dataset_fingerprint == dataset_fingerprint, t.c.run_id == run_id, t.c.mechanism == mechanism)
            .order_by(t.c.id)
        )
        with self._tx() as conn:
            return [int(r) for (r,) in conn.execute(q).all()]

    def entries(self, *, dataset_fingerprint: str | None = None) -> list[SpendRecord]:
        """Every reservation, oldest first."""
        from sqlalchemy import select

        t = self._table
        q = select(t).order_by(t.c.id)
        if dataset_fingerprint is not None:
            q = q.where(t.c.dataset_fingerprint == dataset_fingerprint)
        with self._tx() as conn:
            rows = conn.execute(q).mappings().all()
        return [
            SpendRecord(
                id=int(r["id"]),
                run_id=str(r["run_id"]),
                round=int(r["round"]),
                mechanism=str(r["mechanism"]),
                accountant=str(r["accountant"]),
                params=dict(json.loads(r["params"])),
                epsilon=float(r["epsilon"]),
                delta=float(r["delta"]),
                dataset_fingerprint=str(r["dataset_fingerprint"]),
                reserved_at=str(r["reserved_at"]),
            )
            for r in rows
        ]

    def totals(self) -> list[DatasetTotal]:
        """Lifetime totals per dataset fingerprint, sorted by fingerprint."""
        from sqlalchemy import func, select

        t = self._table
        with self._tx() as conn:
            fps = conn.execute(select(t.c.dataset_fingerprint).distinct().order_by(t.c.dataset_fingerprint))
            out = []
            for (fp,) in fps.all():
                eps, dlt = self._lifetime(conn, fp)
                mine = t.c.dataset_fingerprint == fp
                runs = conn.execute(select(func.count(func.distinct(t.c.run_id))).where(mine)).scalar_one()
                pairs = select(t.c.run_id, t.c.round).where(mine).distinct().subquery()
                rounds = conn.execute(select(func.count()).select_from(pairs)).scalar_one()
                out.append(DatasetTotal(str(fp), int(runs), int(rounds), eps, dlt))
        return out

    # -- writing -------------------------------------------------------------------------

    def reserve(
        self,
        *,
        run_id: str,
        round: int,
        mechanism: str,
        accountant: str,
        params: Mapping[str, Any],
        epsilon: float,
        delta: float,
        dataset_fingerprint: str,
        run_cap: float,
        lifetime_cap: float,
        delta_cap: float | None = None,
        delta_lifetime_cap: float | None = None,
    ) -> SpendRecord:
        """Check the caps and durably record a spend; call it *before* the update leaves.

        ``epsilon`` is the run's cumulative epsilon after this round (what the accountant
        reports for all steps of the run so far), not the round's increment.

        Raises
        ------
        PrivacyBudgetExceeded
            The run's cumulative epsilon would exceed ``run_cap``, the dataset's lifetime
            total would exceed ``lifetime_cap``, ``delta`` exceeds ``delta_cap``, or the
            dataset's summed delta would exceed ``delta_lifetime_cap``. Nothing is written.
        """
        if not run_id or not dataset_fingerprint:
            raise ConfigError("run_id and dataset_fingerprint must be non-empty")
        if round < 0:
            raise ConfigError(f"round must be >= 0 (got {round})")
        eps = _finite_nonneg("epsilon", epsilon)
        dlt = _finite_nonneg("delta", delta)
        run_cap, lifetime_cap = _cap("run_cap", run_cap), _cap("lifetime_cap", lifetime_cap)
        if delta_cap is not None and dlt > _cap("delta_cap", delta_cap):
            raise PrivacyBudgetExceeded(
                f"run {run_id} round {round}: delta {dlt:g} exceeds the site's delta cap {delta_cap:g}; "
                "lower the job's delta"
            )
        params_json = json.dumps(dict(params), sort_keys=True, default=str)
        with self._tx() as conn:
            held = self._run_spend(conn, dataset_fingerprint, run_id)
            held_delta = self._run_delta(conn, dataset_fingerprint, run_id)
            life, life_delta = self._lifetime(conn, dataset_fingerprint)
            new_life_delta = life_delta - held_delta + max(held_delta, dlt)
            if delta_lifetime_cap is not None and new_life_delta > _cap("delta_lifetime_cap", delta_lifetime_cap) * (
                1 + 1e-9
            ):
                raise PrivacyBudgetExceeded(
                    f"run {run_id} round {round}: lifetime delta of dataset {dataset_fingerprint[:19]} would reach "
                    f"{new_life_delta:.3g}, above its cap {delta_lifetime_cap:g}; this dataset's delta is exhausted"
                )
            new_run = max(held, eps)
            new_life = life - held + new_run
            if new_run > run_cap + _EPS_SLACK:
                raise PrivacyBudgetExceeded(
                    f"run {run_id} round {round}: epsilon would reach {new_run:.4g}, above the per-run cap "
                    f"{run_cap:g} (spent {held:.4g}); stop this run or raise the site's epsilon_per_run"
                )
            if new_life > lifetime_cap + _EPS_SLACK:
                raise PrivacyBudgetExceeded(
                    f"run {run_id} round {round}: lifetime epsilon of dataset {dataset_fingerprint[:19]} would "
                    f"reach {new_life:.4g}, above its cap {lifetime_cap:g} (spent {life:.4g}); "
                    "this dataset's budget is exhausted"
                )
            reserved_at = self._clock().isoformat()
            result = conn.execute(
                self._table.insert().values(
                    run_id=run_id,
                    round=int(round),
                    mechanism=mechanism,
                    accountant=accountant,
                    params=params_json,
                    epsilon=eps,
                    delta=dlt,
                    dataset_fingerprint=dataset_fingerprint,
                    reserved_at=reserved_at,
                )
            )
            key = result.inserted_primary_key
            if key is None:  # pragma: no cover - every supported backend returns the key
                raise StoreError("privacy ledger did not return the new row's id")
            new_id = int(key[0])
        return SpendRecord(
            id=new_id,
            run_id=run_id,
            round=int(round),
            mechanism=mechanism,
            accountant=accountant,
            params=json.loads(params_json),
            epsilon=eps,
            delta=dlt,
            dataset_fingerprint=dataset_fingerprint,
            reserved_at=reserved_at,
        )
