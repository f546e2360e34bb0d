import datetime as dt
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fedinfra.config.device import DeviceProfile, LimitsSpec
from fedinfra.edge.kit import load_edge_kit
from fedinfra.edge.limits import ProcessWatchdog, RoundGuard, run_limited
from fedinfra.edge.probe import Readings, StaticProbe
from fedinfra.edge.runner import EdgeRunner, RunnerHooks, check_server, supernode_argv
from fedinfra.edge.state import EdgeState
from fedinfra.errors import ConfigError, CryptoError, ResourceLimitExceeded, RuntimeLaunchError


def _burn(seconds: float) -> int:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return 7


def _allocate(mb: int) -> int:
    block = np.ones(mb * 1024 * 1024 // 8)
    time.sleep(0.5)
    return int(block.size)


def _own_rss_mb() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss / (1024 * 1024))


def _above_this_process(mb: int) -> int:
    """A memory limit ``mb`` above what a forked round holds before it does anything.

    A forked round starts with the parent's anonymous pages in its RSS (copy-on-write page
    tables are copied at fork), but not the parent's file-backed pages (shared libraries,
    mapped files: faulted in lazily), so neither a fixed figure nor the parent's own RSS is
    the right base: after a full session pytest held 516 MB and a fixed 512 MB limit stopped
    a round that allocated nothing (CI rehearsal 12:44); with the parent's RSS as the base, a
    round allocating 400 MB stayed under "parent + 128 MB" (rehearsal 16:55: the parent held
    far more file-backed pages than a forked child maps). So measure a forked round itself.
    """
    import psutil

    generous = int(psutil.virtual_memory().total / (1024 * 1024))
    start = run_limited(_own_rss_mb, limits=LimitsSpec(max_cpu_seconds=30, max_memory_mb=generous))
    return int(start) + mb


def test_a_round_within_limits_returns_its_result():
    limits = LimitsSpec(max_cpu_seconds=5, max_memory_mb=_above_this_process(512))
    assert run_limited(_burn, 0.05, limits=limits) == 7


def test_a_round_over_its_cpu_limit_is_stopped():
    with pytest.raises(ResourceLimitExceeded, match="CPU"):
        run_limited(_burn, 30.0, limits=LimitsSpec(max_cpu_seconds=0.5, max_memory_mb=_above_this_process(512)))


def test_a_round_over_its_memory_limit_is_stopped():
    with pytest.raises(ResourceLimitExceeded, match="memory"):
        run_limited(_allocate, 400, limits=LimitsSpec(max_cpu_seconds=30, max_memory_mb=_above_this_process(128)))


def test_round_guard_refuses_a_round_whose_peak_memory_was_too_high():
    with pytest.raises(ResourceLimitExceeded, match="peak memory"), RoundGuard(
        LimitsSpec(max_cpu_seconds=30, max_memory_mb=64)
    ):
        pass  # this test process already holds far more than 64 MB


def test_watchdog_kills_a_child_process_over_its_cpu_limit():
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess,sys; subprocess.run([sys.executable,'-c','while True: pass'])"]
    )
    try:
        dog = ProcessWatchdog(parent.pid, LimitsSpec(max_cpu_seconds=0.5, max_memory_mb=4096))
        deadline = time.monotonic() + 20
        while not dog.violations and time.monotonic() < deadline:
            dog.check_once()
            time.sleep(0.1)
        assert dog.violations
        assert "CPU" in dog.violations[0].reason
        assert parent.wait(timeout=10) is not None
    finally:
        parent.kill()
        parent.wait()


def _kit(tmp_path, site_id="dev-1"):
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "kit.toml").write_text(f'[kit]\nformat = "fedinfra-kit/1"\nrole = "site"\nsite_id = "{site_id}"\n')
    (kit / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return kit


def test_a_kit_for_another_device_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="kit is for device 'dev-2'"):
        load_edge_kit(_kit(tmp_path, "dev-2"), device="dev-1")


def test_supernode_command_uses_tls_and_the_state_dir(tmp_path):
    profile = DeviceProfile.model_validate({"name": "dev-1", "server": "10.0.0.1:9092", "state_dir": str(tmp_path)})
    argv = supernode_argv(profile, load_edge_kit(_kit(tmp_path), device="dev-1"))
    assert "--root-certificates" in argv
    assert "--insecure" not in argv
    assert f'ledger-dir="{tmp_path / "ledger"}"' in argv[argv.index("--node-config") + 1]


def test_unreachable_server_is_reported_as_retryable():
    with pytest.raises(RuntimeLaunchError, match="unreachable"):
        check_server("127.0.0.1:1", ca_file=None, timeout=2)


def test_server_with_a_certificate_from_another_ca_is_refused(tmp_path):
    import socket
    import ssl

    from fedinfra.crypto.tls import generate_ca, issue_server_certificate

    other_ca = generate_ca("other")
    kit_ca = generate_ca("kit")
    server = issue_server_certificate(other_ca, common_name="superlink", sans=["127.0.0.1"])
    (tmp_path / "s.pem").write_bytes(server.public)
    (tmp_path / "s.key").write_bytes(server.private)
    (tmp_path / "ca.pem").write_bytes(kit_ca.public)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(CryptoError, match="does not verify"):
            check_server(f"127.0.0.1:{port}", ca_file=tmp_path / "ca.pem", timeout=5)
    finally:
        listener.close()
        t.join(5)


class _FakeNode:
    """A real child process standing in for flower-supernode."""

    def __init__(self, seconds: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
        self.pid = self.proc.pid

    def poll(self):
        return self.proc.poll()

    def terminate(self):
        self.proc.terminate()

    def wait(self, timeout=None):
        return self.proc.wait(timeout)

    def kill(self):
        self.proc.kill()


def _runner(tmp_path, *, check, probe, launch):
    profile = DeviceProfile.model_validate(
        {"name": "dev-1", "server": "127.0.0.1:1", "state_dir": str(tmp_path / "state"), "poll_s": 0.01,
         "backoff": {"initial_s": 0.01, "max_s": 0.05}}
    )
    logs: list[str] = []
    hooks = RunnerHooks(launch=launch, check=check, probe=probe, log=logs.append,
                        now=lambda: dt.datetime(2025, 1, 1, 12))
    state = EdgeState(profile.state_dir)
    kit = load_edge_kit(_kit(tmp_path), device="dev-1")
    return EdgeRunner(profile, kit=kit, state=state, hooks=hooks, rng=np.random.default_rng(0)), logs, state


def test_runner_backs_off_while_the_server_is_down_then_connects(tmp_path):
    attempts = []

    def check():
        attempts.append(1)
        if len(attempts) < 4:
            raise RuntimeLaunchError("server 127.0.0.1:1 unreachable")

    nodes = []
    runner, logs, state = _runner(tmp_path, check=check, probe=StaticProbe(),
                                  launch=lambda: nodes.append(_FakeNode(30)) or nodes[-1])
    (state.ledger_dir / "ledger.db").write_bytes(b"spent")
    runner.run(max_steps=6)
    assert len(attempts) == 4
    assert len(nodes) == 1
    assert sum("retry" in line for line in logs) == 3
    assert nodes[0].poll() is not None  # stopped on exit
    status = state.read_json("status.json")
    assert status["failures"] == 3
    assert status["starts"] == 1
    assert (state.ledger_dir / "ledger.db").read_bytes() == b"spent"


def test_runner_reconnects_after_connectivity_loss(tmp_path):
    nodes = []
    runner, logs, _state = _runner(tmp_path, check=lambda: None, probe=StaticProbe(),
                                  launch=lambda: nodes.append(_FakeNode(0.2)) or nodes[-1])
    runner.step()  # start
    nodes[0].wait(10)  # the connection drops: the SuperNode exits
    runner.step()  # notice the exit, back off
    runner.step()  # start again
    runner.run(max_steps=0)  # stop
    assert len(nodes) == 2
    assert any("exited with code 0" in line for line in logs)


def test_runner_does_not_train_while_conditions_fail(tmp_path):
    probe = StaticProbe(Readings(on_power=False, battery=0.9, load_per_core=0.0))
    launched = []
    runner, logs, _ = _runner(tmp_path, check=lambda: None, probe=probe, launch=lambda: launched.append(1))
    runner.run(max_steps=3)
    assert launched == []
    assert logs == ["not training: power: on battery"]
