"""The edge runner's connection watch, its kit reading and its SuperNode command line."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedinfra.config.device import DeviceProfile
from fedinfra.edge.kit import load_edge_kit
from fedinfra.edge.probe import StaticProbe
from fedinfra.edge.runner import (
    DISCONNECTED_S,
    STARTUP_S,
    ConnectionWatch,
    EdgeRunner,
    NodeProcess,
    RunnerHooks,
    holds_connection,
    supernode_argv,
)
from fedinfra.edge.state import EdgeState
from fedinfra.errors import ConfigError


def _kit(tmp_path: Path, *, auth: bool = True) -> Path:
    """A kit laid out as ``fedinfra keys init`` writes a site kit."""
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "kit.toml").write_text(
        '[kit]\nformat = "fedinfra-kit/1"\nrole = "site"\nsite_id = "dev-1"\n'
        '[tls]\nca_file = "ca.crt"\nsuperlink = "127.0.0.1:9092"\n'
        '[supernode]\nauth_key_file = "supernode_auth.key"\nauth_public_file = "supernode_auth.pub"\n'
    )
    (kit / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    if auth:
        (kit / "supernode_auth.key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    return kit


def test_the_auth_key_is_read_from_the_supernode_table_keys_init_writes(tmp_path: Path) -> None:
    kit = load_edge_kit(_kit(tmp_path), device="dev-1")

    assert kit.auth_key_file == tmp_path / "kit" / "supernode_auth.key"


def test_a_kit_missing_its_auth_key_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"supernode_auth\.key: SuperNode authentication key missing"):
        load_edge_kit(_kit(tmp_path, auth=False), device="dev-1")


def test_the_supernode_gets_the_manifest_kit_and_a_loopback_runtime_api(tmp_path: Path) -> None:
    profile = DeviceProfile.model_validate({"name": "dev-1", "server": "10.0.0.1:9092", "state_dir": str(tmp_path)})
    manifest = tmp_path / "site.toml"

    argv = supernode_argv(profile, load_edge_kit(_kit(tmp_path), device="dev-1"), manifest=manifest, port=40001)

    config = argv[argv.index("--node-config") + 1]
    assert f'site-manifest="{manifest}"' in config
    assert f'kit="{tmp_path / "kit"}"' in config
    assert "tls=true" in config
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "40001"
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(tmp_path / "kit" / "supernode_auth.key")


def test_holds_connection_sees_an_established_tcp_connection_and_its_absence() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = subprocess.Popen(
        [sys.executable, "-c",
         f"import socket,sys,time; s=socket.create_connection(('127.0.0.1',{port})); sys.stdout.write('up\\n'); "
         "sys.stdout.flush(); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == "up\n"

        assert holds_connection(client.pid, f"127.0.0.1:{port}")
        assert not holds_connection(client.pid, f"127.0.0.1:{port + 1 if port < 65535 else port - 1}")
    finally:
        client.kill()
        client.wait()
        assert client.stdout is not None
        client.stdout.close()
        listener.close()


class _Node:
    """A real child process standing in for a SuperNode that hangs after giving up."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        self.proc.terminate()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()


def test_a_running_node_without_a_connection_is_stopped_and_the_runner_backs_off(tmp_path: Path) -> None:
    profile = DeviceProfile.model_validate(
        {"name": "dev-1", "server": "127.0.0.1:1", "state_dir": str(tmp_path / "state"), "poll_s": 0.01,
         "backoff": {"initial_s": 0.01, "max_s": 0.05}}
    )
    clock = [0.0]
    connected = [True]
    nodes: list[_Node] = []
    logs: list[str] = []
    def launch() -> _Node:
        nodes.append(_Node())
        return nodes[-1]

    hooks = RunnerHooks(
        launch=launch, check=lambda: None, probe=StaticProbe(), log=logs.append,
        now=lambda: dt.datetime(2025, 1, 1, 12), clock=lambda: clock[0], connected=lambda pid: connected[0],
    )
    with EdgeState(profile.state_dir) as state:
        runner = EdgeRunner(profile, kit=load_edge_kit(_kit(tmp_path), device="dev-1"), state=state, hooks=hooks,
                            rng=np.random.default_rng(0))
        runner.step()  # starts the node
        runner.step()  # connected
        connected[0] = False
        runner.step()  # lost: grace period starts
        clock[0] += DISCONNECTED_S / 2
        runner.step()  # still within the grace period: Flower may reconnect by itself
        assert nodes[0].poll() is None
        clock[0] += DISCONNECTED_S
        runner.step()  # past it: stop the node, back off

        assert nodes[0].poll() is not None
        assert any("no connection to server 127.0.0.1:1" in line and "retry 1 in" in line for line in logs)
        status = state.read_json("status.json")
        assert status is not None
        assert status["failures"] == 1
        runner.run(max_steps=0)


# -- liveness from signs of the server (a fresh connection per request) ---------------------

#: A stand-in for Flower 1.41's SuperNode pull loop, driven one request at a time ("pull" on
#: stdin): each request opens a fresh connection and keeps it until the next request starts
#: (httpx closes an expired keep-alive connection only then). With ``eof`` it reads until
#: the server closes the connection after its reply (uvicorn's 5-s keep-alive, compressed);
#: the socket then sits in CLOSE_WAIT. It answers "done", or "refused" if the server is gone.
_CLIENT = r"""
import socket, sys
port, wait_eof, held = int(sys.argv[1]), sys.argv[2] == "eof", None
for line in sys.stdin:
    if held is not None:
        held.close()
        held = None
    try:
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        print("refused", flush=True)
        continue
    held.sendall(b"pull\n")
    reply = held.recv(64)
    while wait_eof and reply:
        reply = held.recv(64)
    print("done", flush=True)
"""


class _Server:
    """A TCP server on loopback answering each request; ``close_each`` closes after the reply."""

    def __init__(self, *, close_each: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.close_each = close_each
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                conn.recv(64)
                conn.sendall(b"ok\n")
                if self.close_each:
                    conn.close()
                else:
                    self.held.append(conn)

    def vanish(self) -> None:
        """The server goes away: no more connections, and the open ones are closed."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # Linux: wakes accept(), stops listening
        self.listener.close()
        self.thread.join(5)
        assert not self.thread.is_alive()
        for conn in self.held:
            conn.close()


class _Client:
    """The stand-in SuperNode as a real process (the runner's :class:`NodeProcess`)."""

    def __init__(self, port: int, *, wait_eof: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CLIENT, str(port), "eof" if wait_eof else "keep"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.pid = self.proc.pid

    def pull(self) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("pull\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        self.proc.terminate()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _watched_runner(
    tmp_path: Path, port: int, launch: Callable[[], NodeProcess], clock: list[float], logs: list[str]
) -> tuple[EdgeRunner, EdgeState]:
    server = f"127.0.0.1:{port}"
    profile = DeviceProfile.model_validate(
        {"name": "dev-1", "server": server, "state_dir": str(tmp_path / "state"), "poll_s": 0.01,
         "backoff": {"initial_s": 0.01, "max_s": 0.05}}
    )
    hooks = RunnerHooks(
        launch=launch, check=lambda: None, probe=StaticProbe(), log=logs.append,
        now=lambda: dt.datetime(2025, 1, 1, 12), clock=lambda: clock[0], connected=ConnectionWatch(server),
    )
    state = EdgeState(profile.state_dir)
    state.lock()
    runner = EdgeRunner(profile, kit=load_edge_kit(_kit(tmp_path), device="dev-1"), state=state, hooks=hooks,
                        rng=np.random.default_rng(0))
    return runner, state


def _wait_for_state(pid: int, port: int, status: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conns = psutil.Process(pid).net_connections("tcp")
        if any(c.raddr and c.raddr.port == port and c.status == status for c in conns):
            return
        time.sleep(0.01)
    raise AssertionError(f"no {status} socket to port {port}")


def test_a_node_with_a_fresh_connection_per_request_is_not_stopped(tmp_path: Path) -> None:
    """A node that reaches the server at every request, but never over a lasting connection, stays up.

    This is Flower 1.41's SuperNode on a busy host: each pull finds its keep-alive connection
    expired and opens a new one, which the server closes once idle. Each time the runner
    looks, the node holds only a CLOSE_WAIT socket - a new one. The old code judged by an
    ESTABLISHED socket (``holds_connection``, asserted absent at every look below), so it
    stopped this node DISCONNECTED_S after its start: the test failed on it.
    """
    server = _Server(close_each=True)
    clock = [0.0]
    logs: list[str] = []
    nodes: list[_Client] = []

    def launch() -> _Client:
        nodes.append(_Client(server.port, wait_eof=True))
        return nodes[-1]

    runner, state = _watched_runner(tmp_path, server.port, launch, clock, logs)
    try:
        runner.step()  # starts the node
        for _ in range(int(2 * STARTUP_S / 5)):  # well past both windows, a request every 5 s
            assert nodes[0].pull() == "done"
            assert not holds_connection(nodes[0].pid, f"127.0.0.1:{server.port}")  # all the old code saw
            clock[0] += 5.0
            runner.step()
            assert nodes[0].poll() is None, logs

        assert len(nodes) == 1
        assert logs.count("connected to the server") == 1
        assert not any("no connection" in line or "no sign" in line for line in logs)
        status = state.read_json("status.json")
        assert status is not None
        assert status["failures"] == 0
    finally:
        runner.run(max_steps=0)
        state.close()
        for node in nodes:
            node.close()
        server.vanish()


def test_a_node_whose_server_is_gone_is_stopped_after_the_window(tmp_path: Path) -> None:
    """Once the server is gone, a stale socket and refused attempts are no sign: stop, back off.

    The node first holds one established connection, with no new request for longer than
    the window (a keep-alive connection through the proxy): it stays up. Then the server
    closes it and stops listening. The node keeps that socket (now CLOSE_WAIT, the one seen
    before) and every new attempt is refused: DISCONNECTED_S after its last sign it is
    stopped and the runner backs off, status.json recording the failure. The old code
    behaved so too (it fails here only on the new log line "no sign of the server"); the
    test fails on a watch that took any CLOSE_WAIT socket for a sign (checked: the node
    was never stopped) or that ignored a lasting established connection.
    """
    server = _Server(close_each=False)
    clock = [0.0]
    logs: list[str] = []
    nodes: list[_Client] = []

    def launch() -> _Client:
        nodes.append(_Client(server.port, wait_eof=False))
        return nodes[-1]

    runner, state = _watched_runner(tmp_path, server.port, launch, clock, logs)
    try:
        runner.step()  # starts the node
        assert nodes[0].pull() == "done"
        runner.step()  # an established connection: a sign
        assert logs[-1] == "connected to the server"
        for _ in range(int(2 * DISCONNECTED_S / 5)):  # the same connection, no new request
            clock[0] += 5.0
            runner.step()
        assert nodes[0].poll() is None
        last_sign = clock[0]

        server.vanish()
        _wait_for_state(nodes[0].pid, server.port, "CLOSE_WAIT")
        clock[0] += 5.0
        runner.step()  # the stale socket is no sign
        while clock[0] - last_sign < DISCONNECTED_S:
            assert nodes[0].pull() == "refused"
            clock[0] += 5.0
            runner.step()
            assert nodes[0].poll() is None  # within the window: Flower may reconnect by itself
        assert any(line.startswith("no sign of the server for") for line in logs)
        assert nodes[0].pull() == "refused"
        clock[0] += 5.0
        runner.step()  # past the window: stopped, back off

        assert nodes[0].poll() is not None
        assert logs[-1].startswith(f"no connection to server 127.0.0.1:{server.port} for 35 s; retry 1 in")
        status = state.read_json("status.json")
        assert status is not None
        assert (status["failures"], status["retry_attempt"]) == (1, 1)
    finally:
        runner.run(max_steps=0)
        state.close()
        for node in nodes:
            node.close()


def test_a_starting_node_gets_the_startup_window_then_is_stopped(tmp_path: Path) -> None:
    """Before its first sign of the server a node has STARTUP_S, not DISCONNECTED_S.

    Starting Flower on a loaded host can take longer than DISCONNECTED_S; a start that
    never reaches the server is still stopped. The old code stopped it after
    DISCONNECTED_S: the test failed on it.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there: the node never reaches a server
    clock = [0.0]
    logs: list[str] = []
    nodes: list[_Node] = []

    def launch() -> _Node:
        nodes.append(_Node())
        return nodes[-1]

    runner, state = _watched_runner(tmp_path, port, launch, clock, logs)
    try:
        runner.step()  # starts the node
        clock[0] = DISCONNECTED_S + 5
        runner.step()
        assert nodes[0].poll() is None
        clock[0] = STARTUP_S + 1
        runner.step()

        assert nodes[0].poll() is not None
        assert any(f"no connection to server 127.0.0.1:{port} for 121 s; retry 1 in" in line for line in logs)
    finally:
        runner.run(max_steps=0)
        state.close()
