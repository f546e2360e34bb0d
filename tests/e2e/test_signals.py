"""SIGINT/SIGTERM at every stage of ``fedinfra server|client|edge start`` leave no process behind.

Real commands, real SuperLink (behind its nginx Fleet proxy) and SuperNodes on loopback.
A watcher records every descendant of the command while it starts; the signal is sent at
a stage (just spawned, SuperLink/SuperNode child running, port open = registering site
keys, ready; for a device also: backing off while its server is down); after the command
exits, none of the recorded processes may be alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from fedinfra.config import JobSpec
from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.config.server import load_server
from fedinfra.runtime.deploy import start_superlink
from fedinfra.runtime.kit import load_coordinator_transport
from fedinfra.runtime.loopback import write_demo_sites
from fedinfra.runtime.procs import can_connect, free_port
from fedinfra.runtime.provision import provision

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITES = ["site0", "site1"]
DEVICE = "edge-0"


class Watched:
    """A command started in its own session, with every descendant it ever had recorded."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = {**os.environ, "FLWR_HOME": str(cwd / "flwr-home"), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.seen: dict[int, psutil.Process] = {}
        self.out: list[str] = []
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _watch(self) -> None:
        try:
            root = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while not self._done.is_set() and self.proc.poll() is None:
            try:
                for child in root.children(recursive=True):
                    self.seen.setdefault(child.pid, child)
            except psutil.Error:
                pass
            time.sleep(0.02)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line.decode(errors="replace"))

    def children_named(self, name: str) -> bool:
        return any(name in " ".join(_cmdline(p)) for p in self.seen.values())

    def finish(self, sig: int, timeout: float = 60) -> list[str]:
        """Send ``sig``, wait for the exit; return the recorded processes still alive."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self._done.set()
            self._reader.join(timeout=5)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        time.sleep(0.2)
        left = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(" ".join(_cmdline(p)) or str(p.pid))
                    p.kill()
            except psutil.Error:
                continue
        return left


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _wait(pred: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError("stage not reached")


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signals")
    port = free_port()
    consortium = ConsortiumConfig(name="sig", sites=[*SITES, DEVICE], coordinator={"address": f"127.0.0.1:{port}"})
    provision(consortium, root / "kits")
    write_demo_sites(JobSpec(), [*SITES, DEVICE], root / "sites")
    (root / "server.toml").write_text(
        f'host = "127.0.0.1"\nport = {port}\nstate_dir = "state"\nruns_dir = "runs"\n'
        f'app_dir = "{REPO / "server"}"\nkit = "kits/coordinator"\n'
    )
    return root


def _port(root: Path) -> int:
    return int(load_server(root / "server.toml").port)


SERVER_STAGES: dict[str, Callable[[Watched, Path], None]] = {
    "just spawned": lambda w, root: time.sleep(0.05),
    "superlink child running": lambda w, root: _wait(lambda: w.children_named("flower-superlink")),
    "port open, registering site keys": lambda w, root: _wait(lambda: can_connect("127.0.0.1", _port(root), 0.05)),
    "listening": lambda w, root: _wait(lambda: any("listening" in line for line in w.out)),
}


def _cases(stages: dict[str, object], sigint_at: str) -> list[object]:
    """SIGTERM at every stage; SIGINT (the same handler) at one.

    ``make test`` runs the SIGINT case (the stage the attack hit); the SIGTERM sweep over
    every stage is marked slow (``make e2e``).
    """
    cases = [pytest.param(stage, signal.SIGTERM, id=f"{stage}-SIGTERM", marks=pytest.mark.slow) for stage in stages]
    return [*cases, pytest.param(sigint_at, signal.SIGINT, id=f"{sigint_at}-SIGINT")]


@pytest.mark.parametrize(("stage", "sig"), _cases(SERVER_STAGES, "port open, registering site keys"))
def test_a_signal_at_any_stage_of_server_start_leaves_no_process(stage: str, sig: int, consortium: Path) -> None:
    w = Watched([str(BIN / "fedinfra"), "server", "start", "--config", "server.toml"], consortium)
    SERVER_STAGES[stage](w, consortium)

    left = w.finish(sig)

    assert left == [], f"{stage}: left behind {left}\n{''.join(w.out)}"
    assert not can_connect("127.0.0.1", _port(consortium), 0.2)


@pytest.fixture(scope="module")
def running_link(consortium: Path) -> Iterator[None]:
    kit = load_coordinator_transport(consortium / "kits" / "coordinator")
    link = start_superlink(load_server(consortium / "server.toml"), kit)
    try:
        yield
    finally:
        link.stop()


CLIENT_STAGES: dict[str, Callable[[Watched], None]] = {
    "just spawned": lambda w: time.sleep(0.05),
    "supernode child running": lambda w: _wait(lambda: w.children_named("flower-supernode")),
    "connected": lambda w: _wait(lambda: any("connected" in line for line in w.out)),
}


@pytest.mark.parametrize(("stage", "sig"), _cases(CLIENT_STAGES, "supernode child running"))
def test_a_signal_at_any_stage_of_client_start_leaves_no_process(
    stage: str, sig: int, consortium: Path, running_link: None
) -> None:
    name = SITES[0]
    argv = [
        str(BIN / "fedinfra"), "client", "start", "--site", f"sites/{name}/site.toml", "--kit", f"kits/sites/{name}",
        "--state-dir", f"site-state-{stage.replace(' ', '-')}-{sig}", "--port", str(free_port()),
    ]
    w = Watched(argv, consortium)
    CLIENT_STAGES[stage](w)

    left = w.finish(sig)

    assert left == [], f"{stage}: left behind {left}\n{''.join(w.out)}"


def _device(root: Path, server_port: int, tag: str) -> Path:
    """A device profile (state of its own) for the consortium's device; idle gate off (shared CI host)."""
    profile = root / "sites" / DEVICE / f"device-{tag}.toml"
    profile.write_text(
        f'name = "{DEVICE}"\nserver = "127.0.0.1:{server_port}"\nstate_dir = "edge-state-{tag}"\n'
        'probe = "linux"\npoll_s = 1\n'
        "[conditions]\nrequire_power = true\nmin_battery = 0.2\nrequire_idle = false\n"
        "[backoff]\ninitial_s = 0.5\nmax_s = 2.0\nmultiplier = 2.0\njitter = 0.5\n"
    )
    return profile


EDGE_STAGES: dict[str, Callable[[Watched], None]] = {
    "just spawned": lambda w: time.sleep(0.05),
    "supernode child running": lambda w: _wait(lambda: w.children_named("flower-supernode")),
    "connected": lambda w: _wait(lambda: any("SuperNode ID:" in line for line in w.out)),
}


@pytest.mark.parametrize(("stage", "sig"), _cases(EDGE_STAGES, "supernode child running"))
def test_a_signal_at_any_stage_of_edge_start_leaves_no_process(
    stage: str, sig: int, consortium: Path, running_link: None
) -> None:
    profile = _device(consortium, _port(consortium), f"{stage.replace(' ', '-')}-{sig}")
    argv = [str(BIN / "fedinfra"), "edge", "start", "--device", str(profile), "--kit", f"kits/sites/{DEVICE}"]
    w = Watched(argv, consortium)
    EDGE_STAGES[stage](w)

    left = w.finish(sig)

    assert left == [], f"{stage}: left behind {left}\n{''.join(w.out)}"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_device_backs_off_from_a_server_that_is_down_leaves_no_process(
    sig: int, consortium: Path
) -> None:
    """The server is not running: the device backs off (no SuperNode yet), then is stopped."""
    profile = _device(consortium, free_port(), f"backoff-{sig}")
    argv = [str(BIN / "fedinfra"), "edge", "start", "--device", str(profile), "--kit", f"kits/sites/{DEVICE}"]
    w = Watched(argv, consortium)
    _wait(lambda: any("; retry 2 in" in line for line in w.out), 60)

    left = w.finish(sig)

    assert left == [], f"backing off: left behind {left}\n{''.join(w.out)}"
    assert not w.children_named("flower-supernode")
    assert w.proc.returncode == 0, "".join(w.out)[-2000:]
