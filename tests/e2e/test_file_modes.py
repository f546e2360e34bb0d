"""`fedinfra server start` and `fedinfra client start` run by hand keep their files private.

The review found state directories 0755 and ``superlink.db`` 0644 when the commands were
started from a shell (umask 022): ``harden()`` created ``<state>/flwr`` before the state
directory got its 0700, and Flower's SQLite files follow the umask. Both commands are
started here exactly as an operator would, from a shell with umask 022.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedinfra.config import JobSpec
from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.runtime.loopback import write_demo_sites
from fedinfra.runtime.procs import free_port
from fedinfra.runtime.provision import provision

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _start(args: list[str], *, root: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLWR_HOME": str(root / "flwr-home")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "fedinfra"), *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
            preexec_fn=lambda: os.umask(0o022),  # an operator's shell
        )


def _wait(predicate: object, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        if proc.poll() is not None:
            raise AssertionError(log.read_text()[-2000:])
        time.sleep(0.3)
    raise AssertionError("timed out; " + log.read_text()[-2000:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _files_and_dirs(root: Path) -> tuple[list[Path], list[Path]]:
    paths = [root, *root.rglob("*")]
    return [p for p in paths if p.is_file() and not p.is_symlink()], [p for p in paths if p.is_dir()]


def test_server_and_client_started_by_hand_keep_state_private(tmp_path: Path) -> None:
    port = free_port()
    consortium = ConsortiumConfig(name="modes", sites=["site0"], coordinator={"address": f"127.0.0.1:{port}"})
    provision(consortium, tmp_path / "kits")
    manifests = write_demo_sites(JobSpec(), ["site0"], tmp_path / "sites")
    (tmp_path / "server.toml").write_text(
        f'host = "127.0.0.1"\nport = {port}\nstate_dir = "state"\nruns_dir = "runs"\n'
        f'app_dir = "{REPO / "server"}"\nkit = "kits/coordinator"\n'
    )
    server_log, client_log = tmp_path / "server.out", tmp_path / "client.out"
    server = _start(["server", "start", "--config", str(tmp_path / "server.toml")], root=tmp_path, log=server_log)
    client = None
    try:
        _wait(lambda: "listening" in server_log.read_text(), server, server_log, 120)
        client = _start(
            ["client", "start", "--site", str(manifests["site0"]), "--kit", str(tmp_path / "kits" / "sites" / "site0"),
             "--state-dir", str(tmp_path / "site-state"), "--port", str(free_port())],
            root=tmp_path, log=client_log,
        )
        _wait(lambda: "connected" in client_log.read_text(), client, client_log, 120)

        state, site_state = tmp_path / "state", tmp_path / "site-state"
        assert (state / "superlink.db").is_file()
        assert (site_state / "supernode.log").is_file()
        for root in (state, site_state):
            files, dirs = _files_and_dirs(root)
            assert {str(d): oct(_mode(d)) for d in dirs if _mode(d) != 0o700} == {}
            assert {str(f): oct(_mode(f)) for f in files if _mode(f) & 0o077} == {}
    finally:
        if client is not None:
            _stop(client)
        _stop(server)


def test_insecure_is_refused_for_a_remote_server() -> None:
    from fedinfra.config.device import DeviceProfile

    with pytest.raises(ValueError, match="loopback"):
        DeviceProfile.model_validate({"name": "dev", "server": "10.0.0.5:9092", "insecure": True})
    with pytest.raises(ValueError, match="loopback"):
        DeviceProfile.model_validate({"name": "dev", "server": "coordinator.example.org:9092", "insecure": True})
    assert DeviceProfile.model_validate({"name": "dev", "server": "127.0.0.1:9092", "insecure": True}).insecure
    assert DeviceProfile.model_validate({"name": "dev", "server": "[::1]:9092", "insecure": True}).insecure
