"""Durable small-file writes for privacy state (write-ahead: on disk before anything leaves).

``rename`` alone is atomic but not durable: after a power loss the directory entry may
point at a file whose data never reached the disk (the ext4 "zero-length file" problem;
POSIX leaves it to ``fsync``). So the data is fsynced before the rename and the directory
after it - the sequence SQLite's and PostgreSQL's own WAL rely on.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_durably(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably (fsync file, rename, fsync directory)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
