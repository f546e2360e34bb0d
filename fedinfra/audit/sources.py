"""Where a verifier reads a log from: a live store, or an export directory.

An export (``fedinfra audit export``) is three plain files an auditor can archive and check
offline: ``entries.jsonl`` (one canonical entry per line, exactly the leaf data),
``checkpoints.jsonl`` (one signed note per line) and ``manifest.json`` (origin, public key),
plus ``log.vkey`` holding the public key alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fedinfra.audit.store import FORMAT, SideColumns, Store, is_url
from fedinfra.errors import StoreError

EXPORT_FORMAT = "fedinfra-audit-export/1"
ENTRIES_FILE = "entries.jsonl"
CHECKPOINTS_FILE = "checkpoints.jsonl"
MANIFEST_FILE = "manifest.json"
VKEY_FILE = "log.vkey"


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint row as stored, before verification."""

    size: int
    note: str


class LogSource(Protocol):
    """What the verifier needs from a log."""

    display: str

    def meta(self) -> dict[str, str]:
        """Return ``format``, ``origin`` and ``vkey``."""
        ...

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Return the stored checkpoints by tree size."""
        ...

    def cosignatures(self) -> list[tuple[int, str]]:
        """Return ``(tree_size, cosignature line)`` pairs stored beside the checkpoints."""
        ...

    def entries(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """Yield ``(seq, data, stored leaf hash or None)`` in order."""
        ...

    def rows(self) -> Iterator[tuple[int, bytes, bytes | None, SideColumns | None]]:
        """Yield entries with their stored side columns (``None`` where nothing is stored)."""
        ...

    def tail(self, lo: int) -> Iterator[bytes]:
        """Yield the data of the entries with ``seq >= lo``, in order."""
        ...

    def of_types(self, types: tuple[str, ...], *, below: int) -> list[bytes]:
        """The data of the entries of ``types`` with ``seq < below``, in order (after a replay checked them)."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


class StoreSource:
    """A SQLite file or PostgreSQL database written by :class:`~fedinfra.audit.log.AuditLog`."""

    def __init__(self, target: str | Path) -> None:
        self._store = Store.open(target, create=False, readonly=True)
        self.display = self._store.display
        self.target = target

    def count(self) -> int:
        """Return the number of entry rows."""
        return self._store.count()

    def meta(self) -> dict[str, str]:  # noqa: D102 - documented on the protocol
        return self._store.meta()

    def checkpoints(self) -> list[StoredCheckpoint]:  # noqa: D102
        return [StoredCheckpoint(size, note) for size, _, note, _ in self._store.checkpoints()]

    def cosignatures(self) -> list[tuple[int, str]]:  # noqa: D102
        return self._store.cosignatures()

    def entries(self) -> Iterator[tuple[int, bytes, bytes | None]]:  # noqa: D102
        yield from self._store.iter_entries()

    def rows(self) -> Iterator[tuple[int, bytes, bytes | None, SideColumns | None]]:  # noqa: D102
        yield from self._store.iter_rows()

    def tail(self, lo: int) -> Iterator[bytes]:  # noqa: D102
        for _, data, _ in self._store.iter_entries(lo=lo):
            yield data

    def of_types(self, types: tuple[str, ...], *, below: int) -> list[bytes]:  # noqa: D102
        return self._store.of_types(types, below=below)  # the type column was checked against the entry

    def close(self) -> None:  # noqa: D102
        self._store.close()


class ExportSource:
    """A directory written by :func:`fedinfra.audit.export.export_log`."""

    def __init__(self, directory: Path) -> None:
        self.display = str(directory)
        self._dir = directory
        manifest_path = directory / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise StoreError(f"{directory}: not an audit export (no {MANIFEST_FILE})") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"{manifest_path}: unreadable export manifest") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
            raise StoreError(f"{manifest_path}: not a {EXPORT_FORMAT} manifest")
        self._meta = {
            "format": FORMAT,
            "origin": str(manifest.get("origin", "")),
            "vkey": str(manifest.get("vkey", "")),
        }

    def meta(self) -> dict[str, str]:  # noqa: D102
        return dict(self._meta)

    def _checkpoint_lines(self) -> list[dict[str, object]]:
        path = self._dir / CHECKPOINTS_FILE
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise StoreError(f"{path}: cannot read checkpoints") from exc
        rows: list[dict[str, object]] = []
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError("not an object")
                int(row["tree_size"])
                str(row["note"])
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"{path}:{number}: malformed checkpoint line") from exc
            rows.append(row)
        return rows

    def checkpoints(self) -> list[StoredCheckpoint]:  # noqa: D102
        rows = [StoredCheckpoint(int(str(r["tree_size"])), str(r["note"])) for r in self._checkpoint_lines()]
        return sorted(rows, key=lambda r: r.size)

    def cosignatures(self) -> list[tuple[int, str]]:  # noqa: D102
        found: list[tuple[int, str]] = []
        for row in self._checkpoint_lines():
            lines = row.get("cosignatures", [])
            if not isinstance(lines, list):
                raise StoreError(f"{self._dir / CHECKPOINTS_FILE}: malformed cosignatures")
            found += [(int(str(row["tree_size"])), str(line)) for line in lines]
        return sorted(found)

    def entries(self) -> Iterator[tuple[int, bytes, bytes | None]]:  # noqa: D102
        path = self._dir / ENTRIES_FILE
        try:
            with path.open("rb") as fh:
                for seq, line in enumerate(fh):
                    yield seq, line.rstrip(b"\n"), None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read entries") from exc

    def rows(self) -> Iterator[tuple[int, bytes, bytes | None, SideColumns | None]]:  # noqa: D102
        for seq, data, leaf in self.entries():
            yield seq, data, leaf, None

    def tail(self, lo: int) -> Iterator[bytes]:  # noqa: D102
        for seq, data, _ in self.entries():
            if seq >= lo:
                yield data

    def of_types(self, types: tuple[str, ...], *, below: int) -> list[bytes]:  # noqa: D102
        import orjson

        wanted = frozenset(types)
        found: list[bytes] = []
        for seq, data, _ in self.entries():
            if seq >= below:
                break
            if any(t.encode() in data for t in wanted) and orjson.loads(data).get("type") in wanted:
                found.append(data)
        return found

    def close(self) -> None:  # noqa: D102
        return None


def open_source(target: str | Path) -> LogSource:
    """Open a store (path or URL) or an export directory for reading.

    Raises
    ------
    StoreError
        If ``target`` does not exist or is neither an audit store nor an export.
    """
    if not is_url(target) and Path(target).is_dir():
        return ExportSource(Path(target))
    return StoreSource(target)
