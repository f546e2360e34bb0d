"""The edge runner's connection watch, its kit reading and its SuperNode command line."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedinfra.config.device import DeviceProfile
from fedinfra.edge.kit import load_edge_kit
from fedinfra.edge.probe import StaticProbe
from fedinfra.edge.runner import DISCONNECTED_S, EdgeRunner, RunnerHooks, holds_connection, supernode_argv
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
