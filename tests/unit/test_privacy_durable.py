"""Durable writes of privacy state: the data is on disk before the rename, the rename before the
directory is synced, nothing stale survives, the file is private, and no descriptor leaks.

The order is observed by wrapping ``os.fsync`` and ``os.replace`` (they still run): at each call
the test records what the descriptor points at and how many bytes the file holds.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedinfra.privacy import durable
from fedinfra.privacy.durable import write_durably

DATA = b"spent epsilon 1.25 after round 7\n" * 3  # well under one write buffer: only a flush puts it in the file


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_file_holds_exactly_the_data_even_over_a_longer_stale_temporary(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(b"old state " * 100)
    (tmp_path / "ledger.json.tmp").write_bytes(b"a longer file a crash left behind " * 100)

    write_durably(path, DATA)

    assert path.read_bytes() == DATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]


@pytest.mark.usefixtures("umask_022")
def test_the_file_is_readable_by_its_owner_only_unless_asked_otherwise(tmp_path: Path) -> None:
    write_durably(tmp_path / "a", DATA)
    write_durably(tmp_path / "b", DATA, mode=0o640)

    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o640


def test_data_is_synced_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    events: list[tuple[str, str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        size = os.stat(target).st_size if os.path.isfile(target) else -1
        events.append(("fsync", target, size))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append(("replace", f"{src} -> {dst}", os.stat(str(src)).st_size))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    before = _open_fds()

    write_durably(path, DATA)

    tmp = f"{path}.tmp"
    assert events == [
        ("fsync", tmp, len(DATA)),  # the whole data is in the temporary file when it is synced
        ("replace", f"{tmp} -> {path}", len(DATA)),
        ("fsync", str(tmp_path), -1),  # then the directory holding the new entry
    ]
    assert _open_fds() == before
