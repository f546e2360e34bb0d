"""What ``fedinfra run`` writes into a run directory is private to the operator (0600/0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fedinfra.coordinator.artifacts import atomic_write
from fedinfra.runtime.submit import _private_log


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_flower_log_and_run_records_are_created_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with _private_log(tmp_path / "flower.log") as log:
            log.write(b"line\n")
        with _private_log(tmp_path / "flower.log") as log:  # appends, keeps the mode
            log.write(b"more\n")
        atomic_write(tmp_path / "flower-runs.json", b'["1"]')
    finally:
        os.umask(old)
    assert (tmp_path / "flower.log").read_bytes() == b"line\nmore\n"
    assert _mode(tmp_path / "flower.log") == 0o600
    assert _mode(tmp_path / "flower-runs.json") == 0o600
