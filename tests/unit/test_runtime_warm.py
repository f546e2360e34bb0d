"""The warm ClientApp launcher: its secret, its command line, and its child's lifetime.

The launcher's real job (forking Flower's ``run_clientapp`` per message) runs in
``tests/e2e/test_deploy.py``; here a plain Python child stands in for the SuperNode, so
the launcher's process handling is checked with real processes in a few seconds.
"""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedinfra.runtime.warm import launcher_argv, write_secret


def _launcher(tmp_path: Path, child: str) -> subprocess.Popen[bytes]:
    secret = write_secret(tmp_path / "superexec.secret")
    argv = [sys.executable, "-m", "fedinfra.runtime.warm", "--runtime-api-address", "127.0.0.1:9",
            "--superexec-auth-secret-file", str(secret), "--", sys.executable, "-c", child]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_the_secret_is_32_fresh_bytes_readable_by_the_owner_only(tmp_path: Path) -> None:
    first = write_secret(tmp_path / "s").read_bytes()
    path = write_secret(tmp_path / "s")
    assert len(path.read_bytes()) == 32
    assert path.read_bytes() != first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_supernode_runs_in_process_isolation_with_the_same_secret(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    argv = launcher_argv("127.0.0.1:9094", secret, ["flower-supernode", "--port", "9094"], threads=2)
    assert argv[1:3] == ["-m", "fedinfra.runtime.warm"]
    assert argv[argv.index("--threads") + 1] == "2"
    supernode = argv[argv.index("--") + 1 :]
    assert supernode[:3] == ["flower-supernode", "--port", "9094"]
    assert supernode[supernode.index("--isolation") + 1] == "process"
    assert supernode[supernode.index("--superexec-auth-secret-file") + 1] == str(secret)
    assert argv[argv.index("--superexec-auth-secret-file") + 1] == str(secret)


def test_the_launcher_exits_with_the_supernodes_exit_code(tmp_path: Path) -> None:
    proc = _launcher(tmp_path, "import sys; sys.exit(3)")
    assert proc.wait(timeout=120) == 3


def test_stopping_the_launcher_stops_the_supernode(tmp_path: Path) -> None:
    proc = _launcher(tmp_path, "import time; time.sleep(300)")
    deadline = time.monotonic() + 30
    children: list[psutil.Process] = []
    while not children and time.monotonic() < deadline:
        children = psutil.Process(proc.pid).children()
        time.sleep(0.1)
    assert children, "the launcher did not start its SuperNode"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == []


def test_a_launcher_without_a_supernode_command_says_so(tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "s")
    done = subprocess.run(
        [sys.executable, "-m", "fedinfra.runtime.warm", "--runtime-api-address", "127.0.0.1:9",
         "--superexec-auth-secret-file", str(secret)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "after '--'" in done.stderr


@pytest.mark.parametrize("value", ["abc", "0", "999"])
def test_a_bad_poll_interval_falls_back_into_range(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedinfra.runtime import warm

    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", value)
    assert 0.01 <= warm._poll_interval() <= 5.0


def test_a_launcher_with_zero_threads_is_refused(tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "s")
    done = subprocess.run(
        [sys.executable, "-m", "fedinfra.runtime.warm", "--runtime-api-address", "127.0.0.1:9",
         "--superexec-auth-secret-file", str(secret), "--threads", "0", "--", sys.executable, "-c", "pass"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "--threads" in done.stderr
