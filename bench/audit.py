"""Audit log: batched append throughput, full-log verification time, proof size.

Measured in one run, medians of repeats, each against a named baseline:

* append, SQLite - ``AuditLog.append_many`` (1,000-event batches, each committed with a
  signed checkpoint, WAL, ``synchronous=FULL``) vs the database floor: ``sqlite3``
  ``executemany`` of the very same pre-encoded rows into the same table, same pragmas;
* append, PostgreSQL (127.0.0.1:5432, db ``test``) - the same against ``psycopg``
  ``executemany`` of the pre-encoded rows;
* verify - ``verify_store`` (canonical form, leaf hashes, seq, timestamps, every
  checkpoint's signature and root) vs the read-and-hash floor: selecting every entry and
  computing its RFC 9162 leaf hash, with no other check;
* inclusion proof at 1,000,000 entries: raw bytes and as carried in a JSON receipt;
* cosigning (issue 15) - one round's checkpoint checked and cosigned by one site and the
  cosignature verified and stored by the coordinator, on the verify figure's log, vs what a
  site already did every round: verifying its receipt.

Event mix: per batch, 750 ``update.received`` (integer details) and 250 ``budget.spent``
(a float epsilon, which takes the slower ECMAScript number path of RFC 8785).

Goals (issue 3): >= 20,000 entries/s on SQLite, verify 1,000,000 entries in <= 15 s, an
inclusion proof <= 1 KiB; (issue 15) cosigning <= 50 ms per round per site. ``--quick``
verifies 100,000 entries and extrapolates 1,000,000 linearly (verification streams: O(log n)
memory, constant work per entry).

Run: ``python bench/audit.py [--quick]``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, parse_args, time_median

ORIGIN = "fedinfra.bench/audit"
BATCH = 1_000
PG_ADMIN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def make_batch(round_: int) -> list[Any]:
    from fedinfra.audit import Actor, Event, Subject

    events = []
    for i in range(BATCH):
        site = f"site-{i % 250:03d}"
        if i < 750:
            events.append(
                Event(
                    run_id="run-bench",
                    round=round_,
                    type="update.received",
                    actor=Actor(kind="site", id=site, key_id="c74f20a3"),
                    outcome="success",
                    subject=Subject(artifact="update", sha256=hashlib.sha256(f"{round_}/{i}".encode()).hexdigest(),
                                    size=4_000_000),
                    details={"num_examples": 512 + i},
                )
            )
        else:
            events.append(
                Event(
                    run_id="run-bench",
                    round=round_,
                    type="budget.spent",
                    actor=Actor(kind="coordinator", id="coordinator"),
                    outcome="success",
                    details={"site": site, "epsilon": 0.0123 * (i % 7 + 1), "delta": 1e-5},
                )
            )
    return events


BATCHES: list[list[Any]] = []


def fill(target: str | Path, signer: Any, entries: int) -> None:
    """Append ``entries`` events (pre-built, validated batches) with a checkpoint per batch."""
    from fedinfra.audit import AuditLog

    if not BATCHES:
        BATCHES.extend(make_batch(r) for r in range(4))
    batches = BATCHES
    with AuditLog.open(target, origin=ORIGIN, signer=signer) as log:
        log.publish_checkpoint(run_id="run-bench", now=datetime(2026, 1, 1, tzinfo=UTC))
        round_ = 0
        while log.size < entries:
            log.append_many(batches[round_ % 4], publish=True)
            round_ += 1


def encoded_rows(signer: Any, entries: int) -> list[tuple[Any, ...]]:
    """Rows exactly as AuditLog writes them, produced by a real log (for the floors)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.db"
        fill(path, signer, entries)
        with sqlite3.connect(path) as conn:
            return conn.execute(
                "SELECT seq, ts, run_id, round, type, leaf_hash, data FROM audit_entries ORDER BY seq"
            ).fetchall()


def sqlite_floor(path: Path, rows: list[tuple[Any, ...]]) -> None:
    import sqlalchemy as sa

    from fedinfra.audit.store import metadata

    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    sql = "INSERT INTO audit_entries (seq, ts, run_id, round, type, leaf_hash, data) VALUES (?,?,?,?,?,?,?)"
    for start in range(0, len(rows), BATCH):
        conn.execute("BEGIN")
        conn.executemany(sql, rows[start : start + BATCH])
        conn.execute("COMMIT")
    conn.close()


def pg_schema() -> tuple[str, str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"


def pg_drop(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def pg_floor(url: str, rows: list[tuple[Any, ...]]) -> None:
    import psycopg
    import sqlalchemy as sa

    from fedinfra.audit.store import metadata

    engine = sa.create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    schema = url.rsplit("%3D", 1)[1]
    sql = "INSERT INTO audit_entries (seq, ts, run_id, round, type, leaf_hash, data) VALUES (%s,%s,%s,%s,%s,%s,%s)"
    with psycopg.connect(PG_ADMIN, options=f"-csearch_path={schema}") as conn:
        for start in range(0, len(rows), BATCH):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows[start : start + BATCH])


def read_and_hash(path: Path) -> int:
    count = 0
    conn = sqlite3.connect(path)
    for (data,) in conn.execute("SELECT data FROM audit_entries ORDER BY seq"):
        hashlib.sha256(b"\x00" + data).digest()
        count += 1
    conn.close()
    return count


def rate(entries: int, timing: dict[str, float]) -> float:
    return entries / timing["median_s"]


def cosigning(report: Any, store: Path, signer: Any, work: Path, *, repeats: int) -> float:
    """Cosigning one round's checkpoint, for one site, on the log of the verify figure; returns ms.

    One round = a batch of 1,000 entries and its checkpoint (untimed). Timed, the whole
    added path: the coordinator builds the request (consistency proof from the site's last
    checkpoint), the site checks signature and consistency, keeps the note and cosigns with
    its own key, the coordinator verifies the cosignature and stores it. Baseline: what a
    site already did every round before cosigning - verifying its receipt (signature,
    inclusion and consistency).
    """
    from fedinfra.audit import AuditLog, Receipt, latest_checkpoint, verify_receipt
    from fedinfra.coordinator.witnesses import Witnessing
    from fedinfra.site.receipts import cosign_checkpoint, cosigner

    home = work / "site"
    held = home / "receipts"
    with AuditLog.open(store, origin=ORIGIN, signer=signer) as log:
        print(f"== cosigning one round's checkpoint, per site (log of {log.size:,} entries, rounds of {BATCH})")
        witnessing = Witnessing(log)
        witnessing.enrol("site", cosigner(home, "site").vkey)
        state = {"held": 0, "receipt": ""}

        def site_held() -> int:
            kept = latest_checkpoint(held, signer.vkey)
            return 0 if kept is None else kept.size

        def next_round() -> None:  # untimed: the site holds the head, then one round is appended
            head = log.latest_checkpoint
            size = 0 if head is None else head.size
            if site_held() != size:
                witnessing.accept("site", cosign_checkpoint(
                    witnessing.request(site_held()), directory=held, verifier_key=signer.vkey, home=home, site="site"))
            state["held"] = size
            seq = log.append_many(BATCHES[0], publish=True)[0].seq
            state["receipt"] = log.receipt(seq, since=size).to_json()

        def cosign_round() -> None:
            request = witnessing.request(int(state["held"]))
            reply = cosign_checkpoint(request, directory=held, verifier_key=signer.vkey, home=home, site="site")
            assert witnessing.accept("site", reply)

        def receipt_round() -> None:
            receipt = Receipt.from_json(str(state["receipt"]))
            previous = log.checkpoint(int(state["held"])) if state["held"] else None
            verify_receipt(receipt, verifier_key=signer.vkey, previous=previous)

        base = time_median(receipt_round, repeats=repeats, setup=next_round)
        report.baseline("receipt_verify", base, label="a site verifying its round receipt (inclusion + consistency)")
        fig = time_median(cosign_round, repeats=repeats, setup=next_round)
        report.figure("cosign_round", fig, label="request + site check & cosign + coordinator verify & store",
                      against=["receipt_verify"])
    ms = fig["median_s"] * 1000
    report.figures["cosign_round"]["ms_per_round_per_site"] = ms
    print(f"    {ms:.2f} ms per round per site (receipt check alone {base['median_s'] * 1000:.2f} ms)")
    return ms


LOAD_START: list[float] = []


def main() -> None:
    LOAD_START.extend(os.getloadavg())
    args = parse_args(__doc__ or "")
    from fedinfra.audit import AuditLog, Signer, verify_store
    from fedinfra.audit.tree import MerkleTree

    quick = args.quick
    BATCHES.extend(make_batch(r) for r in range(4))  # events are built by the caller, outside the timing
    n_append = 20_000 if quick else 100_000
    n_verify = 100_000 if quick else 1_000_000
    repeats = 3 if quick else 5
    report = Report(
        "audit",
        "Audit log: batched append (SQLite, PostgreSQL), full verification, inclusion-proof size.",
        params={"quick": quick, "append_entries": n_append, "verify_entries": n_verify, "batch": BATCH,
                "repeats": repeats, "mix": "75% update.received (ints), 25% budget.spent (floats)"},
    )
    signer = Signer.generate(ORIGIN)
    work = Path(tempfile.mkdtemp(prefix="fedinfra-bench-audit-"))
    try:
        rows = encoded_rows(signer, n_append)
        n_rows = len(rows)
        counter = iter(range(10**9))
        paths: dict[str, Path] = {}

        def fresh(key: str) -> None:
            paths[key] = work / f"{key}-{next(counter)}.db"

        print(f"== append, SQLite ({n_rows} entries in batches of {BATCH}, each with a signed checkpoint)")
        base = time_median(lambda: sqlite_floor(paths["floor"], rows), repeats=repeats, setup=lambda: fresh("floor"))
        report.baseline("sqlite_executemany", base, label="sqlite3 executemany of pre-encoded rows (floor)")
        cpu_start = time.process_time()
        fig = time_median(lambda: fill(paths["log"], signer, n_append), repeats=repeats, setup=lambda: fresh("log"))
        cpu_rate = n_rows * (repeats + 1) / (time.process_time() - cpu_start)
        report.figure("sqlite_append", fig, label="AuditLog.append_many on SQLite", against=["sqlite_executemany"])
        sqlite_rate = rate(n_rows, fig)
        print(f"    {sqlite_rate:,.0f} entries/s (floor {rate(n_rows, base):,.0f} entries/s); "
              f"{cpu_rate:,.0f} entries per CPU-second")
        report.figures["sqlite_append"].update(entries_per_s=sqlite_rate, entries_per_cpu_s=cpu_rate)

        print(f"== append, PostgreSQL ({n_rows} entries)")
        schemas: list[str] = []
        urls: dict[str, str] = {}

        def fresh_pg(key: str) -> None:
            schema, url = pg_schema()
            schemas.append(schema)
            urls[key] = url
            if key == "log":
                AuditLog.init_store(url, signer.verifier)  # the owner's step; the writer runs no DDL

        try:
            base = time_median(lambda: pg_floor(urls["floor"], rows), repeats=repeats, setup=lambda: fresh_pg("floor"))
            report.baseline("pg_executemany", base, label="psycopg executemany of pre-encoded rows (floor)")
            fig = time_median(lambda: fill(urls["log"], signer, n_append), repeats=repeats,
                              setup=lambda: fresh_pg("log"))
            report.figure("pg_append", fig, label="AuditLog.append_many on PostgreSQL", against=["pg_executemany"])
            report.figures["pg_append"]["entries_per_s"] = rate(n_rows, fig)
            print(f"    {rate(n_rows, fig):,.0f} entries/s (floor {rate(n_rows, base):,.0f} entries/s)")
        finally:
            for schema in schemas:
                pg_drop(schema)

        print(f"== verify ({n_verify} entries)")
        store = work / "verify.db"
        start = time.perf_counter()
        fill(store, signer, n_verify)
        print(f"    (built the store in {time.perf_counter() - start:.1f} s)")
        n_entries = read_and_hash(store)
        v_repeats = 3 if quick else 1
        base = time_median(lambda: read_and_hash(store), repeats=v_repeats)
        report.baseline("read_and_hash", base, label="select every entry + SHA-256 leaf hash (floor)")
        result = verify_store(store, public_key=signer.vkey)
        assert result.ok, result.problem
        cpu_start = time.process_time()
        fig1 = time_median(lambda: verify_store(store, public_key=signer.vkey, workers=1), repeats=v_repeats)
        cpu_one = (time.process_time() - cpu_start) / (v_repeats + 1)
        report.figure("verify_one_process", fig1, label=f"verify_store, 1 process, {n_entries} entries",
                      against=["read_and_hash"])
        workers = os.cpu_count() or 1
        fig = time_median(lambda: verify_store(store, public_key=signer.vkey), repeats=v_repeats)
        report.figure("verify", fig, label=f"verify_store, {workers} processes, {n_entries} entries",
                      against=["read_and_hash", "verify_one_process"])
        per_million = fig["median_s"] / n_entries * 1_000_000
        cpu_per_million = cpu_one / n_entries * 1_000_000
        report.figures["verify"].update(entries=n_entries, seconds_per_million=per_million, workers=workers,
                                        extrapolated=n_entries < 1_000_000)
        report.figures["verify_one_process"].update(cpu_seconds_per_million=cpu_per_million,
                                                    seconds_per_million=fig1["median_s"] / n_entries * 1e6)
        print(f"    {per_million:.1f} s wall per 1,000,000 entries with {workers} processes"
              + (" (extrapolated linearly)" if n_entries < 1_000_000 else "")
              + f"; one process uses {cpu_per_million:.1f} CPU-s per 1,000,000")

        print("== inclusion proof at 1,000,000 entries")
        tree = MerkleTree(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1_000_000))
        sizes = [len(tree.inclusion_proof(i, 1_000_000)) for i in (0, 123_456, 999_999)]
        raw = max(sizes) * 32
        as_json = max(len(str([base64.b64encode(b"x" * 32).decode()] * s).replace("'", '"')) for s in sizes)
        with AuditLog.open(store) as log:
            head = log.latest_checkpoint
            assert head is not None
            receipt_bytes = len(log.receipt(head.size // 2).model_dump_json())
        report.figures["proof_size"] = {"label": "inclusion proof at 1,000,000 entries", "hashes": max(sizes),
                                        "raw_bytes": raw, "json_bytes": as_json,
                                        "receipt_json_bytes_at_verify_size": receipt_bytes}
        print(f"    {max(sizes)} hashes = {raw} bytes raw, {as_json} bytes as base64 JSON; "
              f"a whole receipt at {head.size} entries is {receipt_bytes} bytes")

        cosign_ms = cosigning(report, store, signer, work, repeats=max(repeats, 7))

        report.goals["sqlite_append_rate"] = {"value": sqlite_rate, "at_least": 20_000, "met": sqlite_rate >= 20_000}
        report.goals["cosign_ms_per_round_per_site"] = {"value": cosign_ms, "at_most": 50.0, "met": cosign_ms <= 50.0}
        report.goals["verify_1m_seconds"] = {"value": per_million, "at_most": 15.0, "met": per_million <= 15.0,
                                             "extrapolated": n_entries < 1_000_000}
        report.goals["proof_bytes"] = {"value": raw, "at_most": 1024, "met": raw <= 1024}
        for key, goal in report.goals.items():
            print(f"goal {key}: {goal['value']:,.1f} -> {'met' if goal['met'] else 'NOT MET'}")
        # On a shared 2-core machine the figures move with other people's load: say how loaded it was.
        report.params["load_average_start"] = LOAD_START
        report.params["load_average_end"] = list(os.getloadavg())
        report.save(args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
