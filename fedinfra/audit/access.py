"""The access log: who read the audit log, kept apart from it.

PCI DSS v4.0 10.2.1.3 asks that all access to audit logs be logged. Readers (``audit
show``, ``prove``, ``export``) open the store read-only, so they cannot append
``log.read`` to it - and must not: entries written after the sites cosigned the newest
checkpoint would be an unsigned, unwitnessed tail that anyone could delete unseen. Each
read is instead a ``log.read`` record in a separate append-only JSON-lines file, chained by
SHA-256 (each record names the digest of the one before, so an edited or removed record
breaks the chain), and naming the log's origin and the checkpoint the reader was shown.

By default the access log sits beside a SQLite store (``<store>.reads.jsonl``); for a
PostgreSQL store, or a store on a read-only medium, pass ``--access-log`` (or set
``FEDINFRA_ACCESS_LOG``). A read that cannot be recorded is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from fedinfra.audit.entry import format_ts
from fedinfra.audit.store import is_url
from fedinfra.errors import StoreError, VerificationError

ACCESS_ENV = "FEDINFRA_ACCESS_LOG"
SUFFIX = ".reads.jsonl"
_GENESIS = "0" * 64


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
