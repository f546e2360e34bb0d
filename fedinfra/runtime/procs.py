"""Child processes of Flower daemons: start hardened, wait until ready, stop the whole tree.

Flower daemons spawn their own children (``flower-superexec`` in a new session, then one
``flwr-serverapp`` / ``flwr-clientapp`` per task), so stopping only the daemon can leave
orphans. :meth:`FlowerProcess.stop` snapshots the descendant tree first and terminates
all of it: nothing half-started is left running.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fedinfra.errors import RuntimeLaunchError
from fedinfra.runtime.env import LOOPBACK, hardened_env

#: SuperExec polls its node for new tasks every second by default; 0.1 s costs little CPU
#: and takes ~0.5 s off every message (Flower 1.41 ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``).
TASK_POLL_INTERVAL_S = "0.1"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Hardened environment for a Flower daemon; its helpers are found next to this Python."""
    env = hardened_env(flwr_home=flwr_home)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = TASK_POLL_INTERVAL_S
    env.update(extra or {})
    return env


def flower_bin(name: str) -> str:
    """Absolute path of a Flower console script installed with this Python."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise RuntimeLaunchError(f"{name} not found next to {sys.executable}; install fedinfra with its Flower extra")
    return str(path)


def port_in_use(host: str, port: int) -> bool:
    """True if ``host:port`` cannot be bound (another listener holds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = LOOPBACK) -> int:
    """An unused TCP port on ``host`` (tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def can_connect(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class FlowerProcess:
    """One Flower daemon with its log file and its descendants."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Process id (after :meth:`start`)."""
        if self.proc is None:
            raise RuntimeLaunchError(f"{self.name} was not started")
        return self.proc.pid

    def start(self) -> None:
        """Spawn the daemon in its own session, its output appended to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        from fedinfra.runtime.signals import spawn

        with self.log_path.open("ab") as log:
            self.proc = spawn(  # recorded for signals.child_guard before any signal is handled
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def alive(self) -> bool:
        """True while the daemon runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """The log so far, without colour codes."""
        try:
            return _ANSI.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def last_error(self) -> str:
        """The most telling line of the log: Flower's error detail, else the last line."""
        lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        for marker in ("[code:", "SSL", "Error", "ERROR"):
            hits = [ln for ln in lines if marker in ln and "Exit Code" not in ln]
            if hits:
                return hits[-1]
        return lines[-1] if lines else "no output"

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Wait for ``ready()``; raise with the log's error line if the daemon dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if not self.alive():
                raise RuntimeLaunchError(f"{self.name} exited before {what}: {self.last_error()} (log {self.log_path})")
            time.sleep(0.2)
        raise RuntimeLaunchError(
            f"{self.name} not {what} within {timeout:.0f} s: {self.last_error()} (log {self.log_path})"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the daemon and every descendant (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        from fedinfra.runtime.signals import stop_tree

        stop_tree(self.proc.pid, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)
        from fedinfra.runtime.signals import forget

        forget(self.proc)


def stop_all(processes: Sequence[FlowerProcess], timeout: float = 10.0) -> None:
    """Stop several daemons within one grace period (a federation's SuperNodes and SuperLink)."""
    from fedinfra.runtime.signals import forget, stop_trees

    started = [p.proc for p in processes if p.proc is not None]
    stop_trees([proc.pid for proc in started], timeout=timeout)
    for proc in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        forget(proc)


__all__ = ["FlowerProcess", "can_connect", "flower_bin", "flower_env", "free_port", "port_in_use", "stop_all"]
