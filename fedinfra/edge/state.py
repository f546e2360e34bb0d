"""The device's local state directory: survives restarts and connectivity loss.

Everything a device must not lose - its privacy-budget ledger, the inclusion receipts it
verified, its error-feedback memory, its connection history - lives under one directory
(``device.toml``'s ``state_dir``). Writes are atomic (write a temporary file, ``fsync``,
``rename``; POSIX ``rename(2)`` replaces the target atomically), so a power cut leaves the
old or the new file, never a torn one. An exclusive ``flock(2)`` keeps two clients from
sharing one state directory. The directory is created mode 0700: receipts and ledgers are
the device's own records.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from fedinfra.errors import StoreError

#: Where the ClientApp keeps its ledger and receipts (passed in the SuperNode node config).
LEDGER_DIR = "ledger"
RECEIPTS_DIR = "receipts"
RESIDUAL_FILE = "residual.npy"
STATUS_FILE = "status.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (tmp + fsync + rename + directory fsync)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write ({exc.strerror}); check the state directory") from exc


class EdgeState:
    """A locked state directory. Use as a context manager; :meth:`close` releases the lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for sub in (LEDGER_DIR, RECEIPTS_DIR):
                (root / sub).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{root}: cannot create the state directory ({exc.strerror})") from exc
        self._lock: IO[bytes] | None = None

    def __enter__(self) -> EdgeState:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock(self) -> None:
        """Take the directory's exclusive lock, or fail if another client holds it."""
        fh = (self.root / ".lock").open("ab")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            raise StoreError(
                f"{self.root}: another fedinfra edge client is using this state directory; stop it first"
            ) from exc
        self._lock = fh

    def close(self) -> None:
        """Release the lock."""
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    @property
    def ledger_dir(self) -> Path:
        """Directory for the device's privacy-budget ledger."""
        return self.root / LEDGER_DIR

    @property
    def receipts_dir(self) -> Path:
        """Directory for verified inclusion receipts."""
        return self.root / RECEIPTS_DIR

    def write_json(self, name: str, doc: dict[str, Any]) -> None:
        """Atomically write ``doc`` as ``<root>/<name>``."""
        atomic_write(self.root / name, json.dumps(doc, sort_keys=True, indent=2).encode())

    def read_json(self, name: str) -> dict[str, Any] | None:
        """Read ``<root>/<name>``, or ``None`` if absent; a corrupt file raises StoreError."""
        path = self.root / name
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable state file; restore it from backup or delete it") from exc
        if not isinstance(doc, dict):
            raise StoreError(f"{path}: not a state document; restore it from backup or delete it")
        return doc

    def save_residual(self, residual: npt.NDArray[np.float64]) -> None:
        """Persist the error-feedback memory (no pickle)."""
        buf = io.BytesIO()
        np.save(buf, np.asarray(residual, dtype=np.float64), allow_pickle=False)
        atomic_write(self.root / RESIDUAL_FILE, buf.getvalue())

    def load_residual(self) -> npt.NDArray[np.float64] | None:
        """Return the saved error-feedback memory, or ``None``."""
        path = self.root / RESIDUAL_FILE
        if not path.exists():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable residual; delete it to start the memory afresh") from exc
        return np.asarray(arr, dtype=np.float64)
