"""The access log: who read the audit log, recorded apart from it, then sealed into it.

PCI DSS v4.0 10.2.1.3 asks that all access to audit logs be logged. Readers (``audit
show``, ``prove``, ``export``) open the store read-only and hold no key, so each read is
first a ``log.read`` record in a separate append-only JSON-lines file, chained by SHA-256
(each record names the digest of the one before, so an edited or removed record breaks the
chain), naming the log's origin and the checkpoint the reader was shown.

A hash chain alone protects nothing against whoever can rewrite the file. So the log's
writer **seals** it: whenever it signs a checkpoint (every round and at close on a
coordinator; ``audit prove --sign-with`` on demand) it first appends one ``log.read`` entry
per new access record - carrying the record's number and SHA-256 - to the signed log, so
the checkpoint, and the sites' cosignatures on it, cover every read made before it
(:func:`fold_events`). A record edited or removed after that no longer matches its sealed
digest (:func:`check_sealed`); a chain found broken while sealing is itself sealed as a
``log.read`` failure. Records after the last seal are protected by the chain only: removing
the newest unsealed ones is not detectable until a checkpoint seals them.

By default the access log sits beside a SQLite store (``<store>.reads.jsonl``); for a
PostgreSQL store, or a store on a read-only medium, pass ``--access-log`` (or set
``FEDINFRA_ACCESS_LOG``, which the coordinator also reads to seal it). A read that cannot
be recorded is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from fedinfra.audit.canonical import parse_canonical
from fedinfra.audit.entry import Actor, Event, format_ts
from fedinfra.audit.store import is_url
from fedinfra.errors import StoreError, VerificationError

ACCESS_ENV = "FEDINFRA_ACCESS_LOG"
SUFFIX = ".reads.jsonl"
_GENESIS = "0" * 64
SEAL_ACTOR_ID = "audit-log"
"""Actor id (kind ``system``) of a seal that found the access log broken (the log's own actor)."""


def default_access_log(target: str | Path) -> Path | None:
    """Where reads of ``target`` are recorded unless told otherwise (``None``: must be told)."""
    if os.environ.get(ACCESS_ENV):
        return Path(os.environ[ACCESS_ENV])
    if is_url(target):
        return None
    return Path(str(target) + SUFFIX)


def _digest(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def record_read(
    path: Path,
    *,
    store: str,
    origin: str,
    tree_size: int,
    root: str | None,
    command: str,
    actor: str,
    details: dict[str, object],
    now: datetime | None = None,
) -> dict[str, object]:
    """Append one ``log.read`` record to the access log at ``path`` and return it.

    Raises
    ------
    StoreError
        If the access log cannot be written (the read must then be refused).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise StoreError(
            f"{path}: cannot record this read ({exc.strerror}); pass --access-log PATH to a writable file"
        ) from exc
    with os.fdopen(fd, "r+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        lines = fh.read().splitlines()
        record: dict[str, object] = {
            "seq": len(lines),
            "ts": format_ts(now or datetime.now(UTC)),
            "type": "log.read",
            "actor": {"kind": "operator", "id": actor},
            "store": store,
            "origin": origin,
            "tree_size": tree_size,
            "root": root,
            "details": {"command": command, **details},
            "prev": _digest(lines[-1]) if lines else _GENESIS,
        }
        fh.write(json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return record


def verify_access_log(path: Path) -> int:
    """Check the access log's chain; return how many records it holds.

    Raises
    ------
    StoreError
        If the file cannot be read.
    VerificationError
        If a record was edited, removed or reordered.
    """
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read access log ({exc.strerror})") from exc
    prev = _GENESIS
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise VerificationError(f"{path}: record {number} is not JSON") from exc
        if not isinstance(record, dict) or record.get("seq") != number or record.get("prev") != prev:
            raise VerificationError(f"{path}: record {number} breaks the chain (edited, removed or reordered)")
        prev = _digest(line)
    return len(lines)


# -- sealing into the signed log ------------------------------------------------------------


@dataclass(frozen=True)
class SealState:
    """Where sealing resumes: the next access record's number and the digest it must chain to."""

    next_seq: int = 0
    prev: str = _GENESIS


def seal_state(sealed: Iterable[bytes]) -> SealState:
    """The state after the newest seal among ``sealed`` (``log.read`` entries, newest first)."""
    for data in sealed:
        details = parse_canonical(data).get("details")
        if not isinstance(details, dict):
            continue
        seq, digest = details.get("access_seq"), details.get("access_sha256")
        if isinstance(seq, int) and isinstance(digest, str):
            return SealState(seq + 1, digest)
        nxt, prev = details.get("access_next"), details.get("access_prev")
        if isinstance(nxt, int) and isinstance(prev, str):
            return SealState(nxt, prev)
    return SealState()


def _read_lines(path: Path) -> list[bytes] | None:
    try:
        return path.read_bytes().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the access log to seal it ({exc.strerror})") from exc


def _sealed_read(record: dict[str, object], number: int, digest: str) -> Event:
    actor = record.get("actor")
    actor_id = actor.get("id") if isinstance(actor, dict) else None
    raw = record.get("details")
    details = raw if isinstance(raw, dict) else {}
    run = details.get("run")
    base: dict[str, object] = {
        "access_seq": number,
        "access_sha256": digest,
        "read_at": record.get("ts"),
        "tree_size": record.get("tree_size"),
        "command": details.get("command"),
    }
    extra = {k: v for k, v in details.items() if k not in ("command", "run") and isinstance(v, (int, str))}
    for fields in ({**base, **extra}, base):  # what the reader asked for, if it passes the schema
        try:
            return Event(
                run_id=run if isinstance(run, str) else None,
                type="log.read",
                actor=Actor(kind="operator", id=str(actor_id)),
                outcome="success",
                details=fields,
            )
        except ValidationError:
            run = None
    raise ValueError("not a well-formed access record")


def _broken(number: int, lines: list[bytes], why: str) -> Event:
    return Event(
        type="log.read",
        actor=Actor(kind="system", id=SEAL_ACTOR_ID),
        outcome="failure",
        details={
            "access_next": len(lines),
            "access_prev": _digest(lines[-1]) if lines else _GENESIS,
            "problem": f"access log record {number} {why}; sealing resumes after record {len(lines) - 1}",
        },
    )


def fold_events(path: Path, state: SealState) -> list[Event]:
    """``log.read`` events sealing the access records at ``path`` from ``state`` on.

    A record that does not chain to the last sealed one (edited, removed or reordered), or
    a file shorter than what was sealed, yields one ``failure`` event saying so, after
    which sealing resumes from the file as it now is. A missing file seals nothing.

    Raises
    ------
    StoreError
        If the file exists but cannot be read.
    """
    lines = _read_lines(path)
    if lines is None:
        return []
    if len(lines) < state.next_seq:
        return [_broken(len(lines), lines, f"and later ones were sealed but are gone ({state.next_seq} sealed)")]
    events: list[Event] = []
    prev = state.prev
    for number in range(state.next_seq, len(lines)):
        line = lines[number]
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or record.get("seq") != number or record.get("prev") != prev:
                raise ValueError("breaks the chain")
            events.append(_sealed_read(record, number, _digest(line)))
        except ValueError:
            events.append(_broken(number, lines, "breaks the chain (edited, removed or reordered)"))
            return events
        prev = _digest(line)
    return events


@dataclass(frozen=True)
class AccessCheck:
    """Outcome of checking an access log against the reads sealed in the signed log."""

    path: str
    records: int
    sealed: int
    problem: str | None = None


def check_sealed(path: Path, sealed: Iterable[bytes]) -> AccessCheck:
    """Check the access log at ``path`` against the sealed ``log.read`` entries (in log order).

    Every sealed record must still be in the file with the sealed SHA-256, and the chain
    must hold; a seal that recorded a broken chain is a problem too (the signed log says a
    read record was edited or removed).

    Raises
    ------
    StoreError
        If the file cannot be read.
    """
    lines = _read_lines(path)
    if lines is None:
        raise StoreError(f"{path}: no such access log; pass --access-log PATH (or omit it to skip this check)")
    count = 0
    problem: str | None = None
    for data in sealed:
        entry = parse_canonical(data)
        details = entry.get("details")
        if not isinstance(details, dict):
            continue
        seq, digest = details.get("access_seq"), details.get("access_sha256")
        if isinstance(seq, int) and isinstance(digest, str):
            count += 1
            if problem is None and (seq >= len(lines) or _digest(lines[seq]) != digest):
                problem = (
                    f"access record {seq}, sealed in entry {entry.get('seq')}, was removed or edited "
                    "after the log signed it"
                )
        elif problem is None and isinstance(details.get("problem"), str):
            problem = f"entry {entry.get('seq')} (sealing the access log) records: {details['problem']}"
    if problem is None:
        try:
            verify_access_log(path)
        except VerificationError as exc:
            problem = str(exc)
    return AccessCheck(str(path), len(lines), count, problem)
