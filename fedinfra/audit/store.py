"""The append-only SQL store under an audit log: SQLite (default) or PostgreSQL.

Four tables: ``audit_meta`` (format, origin, the origin's verifier key), ``audit_entries``
(one row per leaf: canonical bytes and leaf hash), ``audit_checkpoints`` (signed notes) and
``audit_cosignatures`` (the sites' C2SP tlog-cosignature lines, beside their checkpoint).
Database triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) on all of them, so
an honest process cannot rewrite history by mistake; a dishonest one that drops the
triggers is caught by the Merkle tree and the signatures, which is what
:func:`fedinfra.audit.verify.verify_store` checks (tamper *evidence*, RFC 9162 §1).

SQLite runs in WAL mode with ``synchronous=FULL``: readers never block the writer and a
committed append survives power loss (https://sqlite.org/wal.html, https://sqlite.org/pragma.html#pragma_synchronous).
PostgreSQL targets are SQLAlchemy URLs; put the tables in a schema of your choice with
libpq's ``options=-csearch_path=NAME``. There the schema is created once, by its owner
(:meth:`Store.init`, ``fedinfra audit init-store``), and the coordinator connects as a role
that may only SELECT and INSERT: opening a store runs no DDL, so the writer cannot drop or
disable the triggers (least privilege, NIST SP 800-53 AC-6; PCI DSS v4.0 10.3.2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fedinfra._optional import extra_imports
from fedinfra.errors import ConfigError, StoreError

EntryRow = tuple[int, str, str | None, int | None, str, bytes, bytes]
"""One ``audit_entries`` row: seq, ts, run_id, round, type, leaf_hash, data."""

SideColumns = tuple[str, str | None, int | None, str]
"""The columns stored beside an entry's signed bytes: ts, run_id, round, type."""

FORMAT = "fedinfra-audit/1"
"""Value of ``audit_meta.format`` in every store this version writes."""

metadata = sa.MetaData()

meta_table = sa.Table(
    "audit_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

entries_table = sa.Table(
    "audit_entries",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(128), nullable=True, index=True),
    sa.Column("round", sa.BigInteger, nullable=True),
    sa.Column("type", sa.String(64), nullable=False, index=True),
    sa.Column("leaf_hash", sa.LargeBinary, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

checkpoints_table = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root_hash", sa.LargeBinary, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("published_at", sa.String(32), nullable=False),
)

cosignatures_table = sa.Table(
    "audit_cosignatures",
    metadata,
    sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("cosigner", sa.String(255), primary_key=True),
    sa.Column("key_id", sa.String(8), primary_key=True),
    sa.Column("line", sa.Text, nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
)

_TABLES = ("audit_meta", "audit_entries", "audit_checkpoints", "audit_cosignatures")
_WRITER_TABLES = ("audit_entries", "audit_checkpoints", "audit_cosignatures")
"""What the coordinator's role may INSERT into; audit_meta is written once, by the owner."""

_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'fedinfra audit store is append-only: {op} on {table} refused'); END"
    for table in _TABLES
    for op in ("UPDATE", "DELETE")
]

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION fedinfra_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'fedinfra audit store is append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END $$
"""

_PG_TRIGGERS = [
    stmt
    for table in _TABLES
    for stmt in (
        f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION fedinfra_audit_append_only()",
        f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION fedinfra_audit_append_only()",
    )
]


_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def grant_statements(schema: str, *, writer: str | None, reader: str | None) -> list[str]:
    """The GRANTs of a least-privilege deployment (also printed in server/README.md).

    Raises
    ------
    ConfigError
        If a name is not a lower-case SQL identifier.
    """
    for name in (schema, writer, reader):
        if name is not None and not _ROLE.fullmatch(name):
            raise ConfigError(f"{name!r}: role and schema names must be lower-case identifiers ([a-z_][a-z0-9_]*)")
    stmts: list[str] = []
    if writer:
        stmts += [
            f'GRANT USAGE ON SCHEMA "{schema}" TO "{writer}"',
            f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{writer}"',
            *(f'GRANT INSERT ON "{schema}"."{t}" TO "{writer}"' for t in _WRITER_TABLES),
        ]
    if reader:
        stmts += [
            f'GRANT USAGE ON SCHEMA "{schema}" TO "{reader}"',
            f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{reader}"',
        ]
    return stmts


def is_url(target: str | Path) -> bool:
    """Return whether ``target`` is a database URL rather than a file path."""
    return isinstance(target, str) and "://" in target


def _sqlite_begin_immediate(conn: Connection) -> None:
    """Writers take SQLite's write lock when a transaction begins, not at its first INSERT.

    Several writers may share one consortium log: a deferred transaction that read the
    log's size and then tries to write after another writer committed fails at once
    (SQLITE_BUSY_SNAPSHOT); an immediate one waits ``busy_timeout`` for its turn and then
    sees the other's rows (https://sqlite.org/lang_transaction.html).
    """
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _sqlite_readonly_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=1")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _pg_readonly(dbapi_conn: Any, _record: Any) -> None:
    """Every transaction of a reader's connection is READ ONLY (PostgreSQL refuses writes)."""
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True
    with dbapi_conn.cursor() as cur:
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    dbapi_conn.autocommit = autocommit


def _readonly_sqlite(path: Path) -> Engine:
    """An engine that opens ``path`` with SQLite's ``mode=ro`` URI and never writes to it.

    A WAL database on a read-only medium has no ``-shm`` file to map; SQLite then refuses
    ``mode=ro`` and the file is opened ``immutable=1`` instead (https://sqlite.org/uri.html,
    https://sqlite.org/wal.html#readonly): nothing can be writing to a read-only medium.
    """
    import sqlite3
    from urllib.parse import quote

    uri = f"file:{quote(str(path.resolve()))}?mode=ro"

    def connect() -> sqlite3.Connection:
        try:
            con = sqlite3.connect(uri, uri=True, check_same_thread=False)
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc) and "readonly" not in str(exc):
                raise
            con = sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)
        return con

    engine = sa.create_engine("sqlite://", creator=connect)
    sa.event.listen(engine, "connect", _sqlite_readonly_pragmas)
    return engine


def make_engine(target: str | Path, *, create: bool, readonly: bool = False) -> tuple[Engine, str]:
    """Return an engine for ``target`` and a printable name for it (no password).

    With ``readonly`` nothing is ever written: SQLite opens with the ``mode=ro`` URI (no
    journal-mode change, no file created), PostgreSQL runs every transaction READ ONLY.

    Raises
    ------
    StoreError
        If ``target`` is a path that does not exist (or is empty) and ``create`` is false,
        or names an unsupported database.
    """
    if is_url(target):
        url_text = str(target)
        if url_text.startswith("postgresql://"):
            url_text = "postgresql+psycopg://" + url_text[len("postgresql://") :]
        try:
            url = sa.make_url(url_text)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"{target}: not a database URL") from exc
        if url.drivername not in ("postgresql+psycopg", "sqlite"):
            raise StoreError(f"{url.drivername}: unsupported audit store; use a SQLite path or postgresql+psycopg://")
        display = url.render_as_string(hide_password=True)
        if url.drivername == "sqlite":
            return make_engine(Path(url.database or ""), create=create, readonly=readonly)
        with extra_imports("a PostgreSQL audit store"):  # SQLAlchemy loads psycopg here
            engine = sa.create_engine(url, pool_pre_ping=True)
        if readonly:
            sa.event.listen(engine, "connect", _pg_readonly)
        return engine, display
    path = Path(target)
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not an audit store")
    if not create and not path.is_file():
        raise StoreError(f"{path}: no such audit store")
    if not create and path.stat().st_size == 0:
        raise StoreError(f"{path}: empty file, not an audit store")
    if readonly:
        return _readonly_sqlite(path), str(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{path}")
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    sa.event.listen(engine, "begin", _sqlite_begin_immediate)
    return engine, str(path)


def _translate(display: str, exc: sa.exc.SQLAlchemyError) -> StoreError:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if "file is not a database" in text:
        return StoreError(f"{display}: not an audit store (not a SQLite database)")
    return StoreError(f"{display}: audit store error: {text}")


class Store:
    """Thin SQL access for one audit store; no Merkle logic lives here."""

    def __init__(self, engine: Engine, display: str) -> None:
        self.engine = engine
        self.display = display
        self.dialect = engine.dialect.name

    @classmethod
    def open(cls, target: str | Path, *, create: bool, readonly: bool = False) -> Store:
        """Open (and with ``create``, initialise) the store at ``target``; ``readonly`` never writes."""
        if create and readonly:
            raise ValueError("a store cannot be created read-only")
        engine, display = make_engine(target, create=create, readonly=readonly)
        store = cls(engine, display)
        try:
            with engine.begin() as conn:
                present = set(sa.inspect(conn).get_table_names())
                if not create and "audit_meta" not in present:
                    raise StoreError(f"{display}: not a fedinfra audit store (no audit_meta table)")
                if create and store.dialect == "postgresql":
                    missing = sorted(set(_TABLES) - present)
                    if missing:
                        raise StoreError(
                            f"{display}: no audit tables ({', '.join(missing)}); create them once as the schema's "
                            "owner with 'fedinfra audit init-store URL --public-key KEY' (see server/README.md)"
                        )
                elif create:
                    store._create_schema(conn)  # an embedded SQLite file: one owner, created on first use
        except sa.exc.SQLAlchemyError as exc:
            engine.dispose()
            raise _translate(display, exc) from exc
        except StoreError:
            engine.dispose()
            raise
        return store

    @classmethod
    def init(cls, target: str | Path, *, writer: str | None = None, reader: str | None = None) -> Store:
        """Create the tables and append-only triggers (the owner's one-off step); grant least privilege.

        On PostgreSQL the coordinator's ``writer`` role gets USAGE on the schema, SELECT on
        every table and INSERT on entries, checkpoints and cosignatures - nothing else: it
        cannot UPDATE, DELETE, TRUNCATE, or disable or drop the triggers (only the owner
        may ALTER a table). ``reader`` gets USAGE and SELECT. Idempotent.

        Raises
        ------
        StoreError
            If the database refuses (e.g. the role does not own the schema).
        ConfigError
            If a role name is not a plain identifier, or roles are given for SQLite.
        """
        engine, display = make_engine(target, create=True)
        store = cls(engine, display)
        try:
            with engine.begin() as conn:
                store._create_schema(conn)
                if writer or reader:
                    if store.dialect != "postgresql":
                        raise ConfigError("--writer/--reader grant PostgreSQL roles; a SQLite file has none")
                    for stmt in grant_statements(str(conn.execute(sa.text("SELECT current_schema()")).scalar()),
                                                 writer=writer, reader=reader):
                        conn.execute(sa.text(stmt))
        except sa.exc.SQLAlchemyError as exc:
            engine.dispose()
            raise _translate(display, exc) from exc
        except (StoreError, ConfigError):
            engine.dispose()
            raise
        return store

    def _create_schema(self, conn: Connection) -> None:
        metadata.create_all(conn, checkfirst=True)
        if self.dialect == "postgresql":
            conn.execute(sa.text(_PG_FUNCTION))
            for stmt in _PG_TRIGGERS:
                conn.execute(sa.text(stmt))
        else:
            for stmt in _SQLITE_TRIGGERS:
                conn.execute(sa.text(stmt))

    def close(self) -> None:
        """Release every connection."""
        self.engine.dispose()

    def guard(self, exc: sa.exc.SQLAlchemyError) -> StoreError:
        """Translate a database error into a one-line :class:`StoreError`."""
        return _translate(self.display, exc)

    # -- reads -------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        """Return the ``audit_meta`` key/value pairs."""
        try:
            with self.engine.connect() as conn:
                return {row.key: row.value for row in conn.execute(sa.select(meta_table))}
        except sa.exc.SQLAlchemyError as exc:
            raise self.guard(exc) from exc

    def size(self, conn: Connection | None = None) -> int:
        """Return ``max(seq) + 1`` (the log size if seq is contiguous), 0 when empty."""
        stmt = sa.select(sa.func.max(entries_table.c.seq))
        if conn is not None:
            top = conn.execute(stmt).scalar()
        else:
            with self.engine.connect() as own:
                top = own.execute(stmt).scalar()
        return 0 if top is None else int(top) + 1

    def leaf_hashes(self, lo: int = 0) -> Iterator[bytes]:
        """Yield the stored leaf hashes from ``seq >= lo`` in order, as read in one snapshot.

        Raises
        ------
        StoreError
            If a seq is missing (the entries are not contiguous).
        """
        stmt = (
            sa.select(entries_table.c.seq, entries_table.c.leaf_hash)
            .where(entries_table.c.seq >= lo)
            .order_by(entries_table.c.seq)
        )
        expected = lo
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=50_000).execute(stmt)
            for seq, leaf in result:
                if seq != expected:
                    raise StoreError(f"{self.display}: entry {expected} is missing; run `fedinfra audit verify`")
                expected += 1
                yield bytes(leaf)

    def count(self) -> int:
        """Return the number of entry rows."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(entries_table)).scalar() or 0)

    def iter_entries(self, *, lo: int = 0, limit: int | None = None) -> Iterator[tuple[int, bytes, bytes]]:
        """Yield ``(seq, data, leaf_hash)`` for entries with ``seq >= lo`` in order, streaming."""
        for seq, data, leaf, _ in self.iter_rows(lo=lo, limit=limit):
            yield seq, data, leaf

    def iter_rows(self, *, lo: int = 0, limit: int | None = None) -> Iterator[tuple[int, bytes, bytes, SideColumns]]:
        """Yield ``(seq, data, leaf_hash, (ts, run_id, round, type))`` from ``seq >= lo`` in order.

        The side columns are what ``audit show`` and the resume logic filter on; the
        verifier checks them against the signed entry. Reads through the driver's own
        cursor (a server-side cursor on PostgreSQL): at a million rows SQLAlchemy's row
        objects would cost more than the verification.
        """
        raw = self.engine.raw_connection()
        columns = "seq, data, leaf_hash, ts, run_id, round, type"
        try:
            if self.dialect == "sqlite":
                cur: Any = raw.cursor()
                cur.execute(
                    f"SELECT {columns} FROM audit_entries WHERE seq >= ? ORDER BY seq LIMIT ?",  # noqa: S608 - constant
                    (lo, -1 if limit is None else limit),
                )
            else:
                cur = raw.driver_connection.cursor(name=f"fedinfra_audit_scan_{os.getpid()}_{lo}")  # type: ignore[union-attr]
                cur.execute(
                    f"SELECT {columns} FROM audit_entries WHERE seq >= %s ORDER BY seq LIMIT %s",  # noqa: S608 - constant
                    (lo, limit),
                )
            while rows := cur.fetchmany(20_000):
                for seq, data, leaf, ts, run_id, rnd, type_ in rows:
                    yield seq, bytes(data), bytes(leaf), (ts, run_id, rnd, type_)
            cur.close()
        finally:
            raw.close()

    def entry_data(self, seq: int) -> bytes | None:
        """Return the canonical bytes of entry ``seq``, or ``None``."""
        stmt = sa.select(entries_table.c.data).where(entries_table.c.seq == seq)
        with self.engine.connect() as conn:
            data = conn.execute(stmt).scalar()
        return None if data is None else bytes(data)

    def select_entries(self, *, run_id: str | None, type_: str | None, limit: int | None) -> list[bytes]:
        """Return the canonical bytes of the entries matching the filters, in seq order."""
        stmt = sa.select(entries_table.c.data).order_by(entries_table.c.seq)
        if run_id is not None:
            stmt = stmt.where(entries_table.c.run_id == run_id)
        if type_ is not None:
            stmt = stmt.where(entries_table.c.type == type_)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return [bytes(data) for (data,) in conn.execute(stmt)]

    def latest_of_types(self, types: tuple[str, ...], *, batch: int = 256) -> Iterator[bytes]:
        """Yield the canonical bytes of the entries of ``types``, newest first (indexed on type).

        Reads ``batch`` rows per short transaction, so a caller that stops early holds no cursor.
        """
        below: int | None = None
        while True:
            stmt = sa.select(entries_table.c.seq, entries_table.c.data).where(entries_table.c.type.in_(types))
            if below is not None:
                stmt = stmt.where(entries_table.c.seq < below)
            with self.engine.connect() as conn:
                rows = [(int(seq), bytes(data)) for seq, data in conn.execute(
                    stmt.order_by(entries_table.c.seq.desc()).limit(batch))]
            for seq, data in rows:
                below = seq
                yield data
            if len(rows) < batch:
                return

    def of_types(self, types: tuple[str, ...], *, below: int) -> list[bytes]:
        """The canonical bytes of the entries of ``types`` with ``seq < below``, in seq order."""
        stmt = (
            sa.select(entries_table.c.data)
            .where(entries_table.c.type.in_(types), entries_table.c.seq < below)
            .order_by(entries_table.c.seq)
        )
        with self.engine.connect() as conn:
            return [bytes(data) for (data,) in conn.execute(stmt)]

    def cosignatures(self, size: int | None = None) -> list[tuple[int, str]]:
        """Return ``(tree_size, line)`` for the stored cosignatures (of one ``size``), by tree size.

        A store written before cosignatures existed has no such table: it has none.
        """
        stmt = sa.select(cosignatures_table.c.tree_size, cosignatures_table.c.line).order_by(
            cosignatures_table.c.tree_size, cosignatures_table.c.cosigner, cosignatures_table.c.key_id
        )
        if size is not None:
            stmt = stmt.where(cosignatures_table.c.tree_size == size)
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("audit_cosignatures"):
                return []
            return [(int(tree_size), str(line)) for tree_size, line in conn.execute(stmt)]

    @staticmethod
    def insert_cosignature(
        conn: Connection, *, size: int, cosigner: str, key_id: str, line: str, received_at: str
    ) -> None:
        """Insert one cosignature line of the checkpoint of ``size``."""
        conn.execute(
            sa.insert(cosignatures_table),
            [{"tree_size": size, "cosigner": cosigner, "key_id": key_id, "line": line, "received_at": received_at}],
        )

    def checkpoints(self) -> list[tuple[int, bytes, str, str]]:
        """Return ``(tree_size, root_hash, note, published_at)`` rows by tree size."""
        stmt = sa.select(checkpoints_table).order_by(checkpoints_table.c.tree_size)
        with self.engine.connect() as conn:
            return [(int(r.tree_size), bytes(r.root_hash), r.note, r.published_at) for r in conn.execute(stmt)]

    # -- writes (inside a caller's transaction) ------------------------------------------
    @staticmethod
    def insert_meta(conn: Connection, values: dict[str, str]) -> None:
        """Insert ``audit_meta`` rows."""
        conn.execute(sa.insert(meta_table), [{"key": k, "value": v} for k, v in values.items()])

    def insert_entries(self, conn: Connection, rows: Sequence[EntryRow]) -> None:
        """Insert entry rows ``(seq, ts, run_id, round, type, leaf_hash, data)``.

        Goes straight to the driver's ``executemany``: SQLAlchemy's per-value type
        processing costs more than the insert itself at tens of thousands of rows a second.
        """
        if rows:
            mark = "?" if self.dialect == "sqlite" else "%s"
            columns = "seq, ts, run_id, round, type, leaf_hash, data"
            sql = f"INSERT INTO audit_entries ({columns}) VALUES ({', '.join([mark] * 7)})"  # noqa: S608 - constant
            conn.exec_driver_sql(sql, list(rows))

    @staticmethod
    def insert_checkpoint(conn: Connection, *, size: int, root: bytes, note: str, published_at: str) -> None:
        """Insert one signed checkpoint."""
        conn.execute(
            sa.insert(checkpoints_table),
            [{"tree_size": size, "root_hash": root, "note": note, "published_at": published_at}],
        )
