"""The per-entry half of verification, which can run on several cores at once.

:func:`scan_entries` checks each entry on its own (canonical RFC 8785 bytes, schema,
``seq`` equal to its position, leaf hash, timestamps non-decreasing) and returns the leaf
hashes, packed, for the ordered half in :mod:`fedinfra.audit.verify` (Merkle roots,
checkpoints). :func:`scan_store_range` is the same over one seq range of a store, run in
a worker process; workers open the store themselves, so only 32 bytes per entry travel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from fedinfra.audit.canonical import canonical_with_details, parse_canonical
from fedinfra.audit.entry import has_entry_shape
from fedinfra.audit.merkle import leaf_hash
from fedinfra.errors import VerificationError

if TYPE_CHECKING:
    from fedinfra.audit.store import SideColumns

TS_LENGTH = len("2026-01-01T00:00:00.000000Z")


class Failure(Exception):
    """The first problem found, with where it is (``entry 17``, ``checkpoint 3 (...)``)."""

    def __init__(self, position: str, problem: str) -> None:
        super().__init__(f"{position}: {problem}")
        self.position = position
        self.problem = problem


@dataclass
class Chunk:
    """What one scan found: ``count`` good entries from ``lo`` and the first failure, if any."""

    lo: int
    count: int = 0
    leaves: bytes = b""
    announcements: list[int] = field(default_factory=list)
    first_ts: str | None = None
    last_ts: str = ""
    failure: tuple[str, str] | None = None


def parse_entry(data: bytes, where: str) -> dict[str, Any]:
    """Parse one entry, check its shape and that ``data`` is exactly its canonical form."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Failure(where, "not JSON; its bytes were edited") from exc
    if not has_entry_shape(obj):
        raise Failure(where, "not an audit entry (missing, extra or mistyped fields, or unknown type)")
    try:
        again: bytes | None = canonical_with_details(obj)
    except ValueError:
        again = None
    if again != data:
        try:
            parse_canonical(data)  # the reference path: big integral doubles in details
        except VerificationError as exc:
            raise Failure(where, "not canonical JSON (RFC 8785); its bytes were edited") from exc
    result: dict[str, Any] = obj
    return result


def _check_side(obj: dict[str, Any], side: SideColumns, where: str) -> None:
    """The stored side columns must repeat the signed entry (they are what filters read)."""
    if side != (obj["ts"], obj["run_id"], obj["round"], obj["type"]):
        raise Failure(where, "a stored column (ts, run_id, round or type) differs from the signed entry")


def scan_entries(
    rows: Iterable[tuple[int, bytes, bytes | None, SideColumns | None]], lo: int, hi: int | None = None
) -> Chunk:
    """Check entries ``lo, lo + 1, ...`` (up to ``hi``, exclusive) from ``rows`` in seq order.

    ``rows`` may run past ``hi``: the row after the range tells a gap at its end apart
    from the range simply ending. Stops at the first failure and records it.
    """
    chunk = Chunk(lo=lo)
    leaves = bytearray()
    expected = lo
    last_ts = ""
    try:
        for seq, data, stored_leaf, side in rows:
            if hi is not None and expected >= hi:
                break
            where = f"entry {expected}"
            if seq != expected:
                raise Failure(where, f"missing (the next stored entry is {seq})")
            obj = parse_entry(data, where)
            if obj["seq"] != seq:
                raise Failure(where, f"records seq {obj['seq']!r} (entries swapped, moved or edited)")
            ts = obj["ts"]
            if len(ts) != TS_LENGTH or ts < last_ts:
                raise Failure(where, "timestamp is malformed or earlier than the previous entry's")
            if chunk.first_ts is None:
                chunk.first_ts = ts
            last_ts = ts
            leaf = leaf_hash(data)
            if stored_leaf is not None and stored_leaf != leaf:
                raise Failure(where, "stored leaf hash does not match the entry's data")
            if side is not None:
                _check_side(obj, side, where)
            if obj["type"] == "checkpoint.published":
                if obj["details"].get("tree_size") != seq + 1:
                    raise Failure(where, "checkpoint.published does not announce the tree ending at itself")
                chunk.announcements.append(seq)
            leaves += leaf
            expected += 1
    except Failure as failure:
        chunk.failure = (failure.position, failure.problem)
    chunk.count = expected - lo
    chunk.leaves = bytes(leaves)
    chunk.last_ts = last_ts
    return chunk


def scan_store_range(target: str | Path, lo: int, hi: int) -> Chunk:
    """Scan entries ``[lo, hi)`` of the store at ``target`` (run in a worker process)."""
    from fedinfra.audit.store import Store

    store = Store.open(target, create=False, readonly=True)
    try:
        return scan_entries(store.iter_rows(lo=lo, limit=hi - lo + 1), lo, hi)
    finally:
        store.close()
