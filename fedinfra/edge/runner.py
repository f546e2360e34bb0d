"""The edge device's supervisor loop: gate on conditions, connect with backoff, stay up.

One loop, every ``poll_s`` seconds:

1. evaluate the device's conditions (:mod:`fedinfra.edge.probe`); while they fail, no
   SuperNode runs (a device that is unplugged or busy is simply absent from the federation,
   and the coordinator samples among the devices that are present);
2. when they hold and no SuperNode runs, check the server (TCP, then a TLS handshake
   against the kit's CA) and start the SuperNode; an unreachable server or a certificate
   that does not verify is retried after a capped, jittered exponential backoff - never a
   tight crash loop;
3. while the SuperNode runs, a :class:`~fedinfra.edge.limits.ProcessWatchdog` kills any
   round that passes its CPU or memory limit; if the SuperNode exits (connection lost),
   the loop backs off and starts it again. Ledger and receipts live in the state
   directory, which the loop never deletes, so nothing is lost across reconnects.

Time, sleeping, the probe, the launcher and the server check are injected for tests.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fedinfra.config.device import DeviceProfile
from fedinfra.edge.backoff import Backoff
from fedinfra.edge.kit import EdgeKit
from fedinfra.edge.limits import ProcessWatchdog, Violation
from fedinfra.edge.probe import ConditionProbe, evaluate
from fedinfra.edge.state import STATUS_FILE, EdgeState
from fedinfra.errors import CryptoError, FedinfraError, RuntimeLaunchError

#: A SuperNode that stayed up this long counts as connected: the backoff starts afresh.
STABLE_S = 60.0


class NodeProcess(Protocol):
    """The parts of :class:`subprocess.Popen` the loop uses."""

    pid: int

    def poll(self) -> int | None:
        """Return the exit code, or ``None`` while running."""
        ...

    def terminate(self) -> None:
        """Ask the process to stop."""
        ...

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code."""
        ...

    def kill(self) -> None:
        """Stop the process now."""
        ...


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) into host and port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_server(address: str, *, ca_file: Path | None, timeout: float = 10.0) -> None:
    """Connect to ``address``; with ``ca_file``, complete a TLS handshake that verifies it.

    Raises
    ------
    RuntimeLaunchError
        If the server cannot be reached (retry later).
    CryptoError
        If the server's certificate does not verify against the kit's CA (one message,
        whatever the reason, RFC 8446 §6.2 alert semantics aside).
    """
    host, port = split_address(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise RuntimeLaunchError(f"server {address} unreachable ({exc.strerror or exc}); will retry") from exc
    with sock:
        if ca_file is None:
            return
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.set_alpn_protocols(["h2"])
        try:
            with ctx.wrap_socket(sock, server_hostname=host):
                return
        except ssl.SSLCertVerificationError as exc:
            raise CryptoError(
                f"server {address} presented a certificate that does not verify against the kit's CA; "
                "check --server and the kit (will retry)"
            ) from exc
        except (ssl.SSLError, OSError) as exc:
            raise RuntimeLaunchError(f"server {address}: TLS handshake failed ({exc}); will retry") from exc


@dataclass
class RunnerHooks:
    """Everything the loop touches outside itself (injected in tests)."""

    launch: Callable[[], NodeProcess]
    check: Callable[[], None]
    probe: ConditionProbe
    log: Callable[[str], None]
    now: Callable[[], dt.datetime] = dt.datetime.now
    clock: Callable[[], float] = time.monotonic
    stop: threading.Event = field(default_factory=threading.Event)


class EdgeRunner:
    """Supervises one device's SuperNode; :meth:`run` returns when :attr:`hooks.stop` is set."""

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        kit: EdgeKit,
        state: EdgeState,
        hooks: RunnerHooks,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.profile = profile
        self.kit = kit
        self.state = state
        self.hooks = hooks
        self.backoff = Backoff(profile.backoff, rng=rng)
        self.node: NodeProcess | None = None
        self.watchdog: ProcessWatchdog | None = None
        self._started_at = 0.0
        self._last_gate: str | None = None
        saved = state.read_json(STATUS_FILE) or {}
        self.status: dict[str, object] = {
            "device": profile.name,
            "starts": int(saved.get("starts", 0)),
            "failures": int(saved.get("failures", 0)),
            "limit_violations": int(saved.get("limit_violations", 0)),
            "last_error": saved.get("last_error"),
            "last_connected": saved.get("last_connected"),
        }

    # -- bookkeeping ------------------------------------------------------------------
    def _save(self, **changes: object) -> None:
        self.status.update(changes)
        self.state.write_json(STATUS_FILE, self.status)

    def _count(self, key: str) -> int:
        value = self.status.get(key, 0)
        return int(value) + 1 if isinstance(value, int) else 1

    def _violation(self, v: Violation) -> None:
        self.hooks.log(f"round process {v.pid} stopped: {v.reason}")
        self._save(limit_violations=self._count("limit_violations"), last_error=v.reason)

    # -- node lifecycle -----------------------------------------------------------------
    def _start(self) -> None:
        self.node = self.hooks.launch()
        self._started_at = self.hooks.clock()
        self.watchdog = ProcessWatchdog(self.node.pid, self.profile.limits, on_violation=self._violation)
        self.watchdog.start()
        self.hooks.log(f"SuperNode started (pid {self.node.pid})")
        now = self.hooks.now().isoformat(timespec="seconds")
        self._save(starts=self._count("starts"), last_connected=now)

    def _stop_node(self, why: str) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.node is not None:
            if self.node.poll() is None:
                self.node.terminate()
                try:
                    self.node.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.node.kill()
                    self.node.wait(timeout=5)
            self.hooks.log(f"SuperNode stopped: {why}")
            self.node = None

    def _retry_later(self, error: str) -> None:
        delay = self.backoff.next_delay()
        self.hooks.log(f"{error}; retry {self.backoff.attempt} in {delay:.1f} s")
        self._save(failures=self._count("failures"), last_error=error)
        self.hooks.stop.wait(delay)

    # -- one pass ------------------------------------------------------------------------
    def step(self) -> None:
        """One pass of the loop (public for tests)."""
        report = evaluate(self.profile.conditions, self.hooks.probe.read(), self.hooks.now())
        if not report.ok:
            gate = "; ".join(report.failing())
            if gate != self._last_gate:
                self.hooks.log(f"not training: {gate}")
                self._last_gate = gate
            self._stop_node("conditions no longer hold")
            self.hooks.stop.wait(self.profile.poll_s)
            return
        if self._last_gate is not None:
            self.hooks.log("conditions hold")
            self._last_gate = None
        if self.node is None:
            try:
                self.hooks.check()
                self._start()
            except FedinfraError as exc:
                self._retry_later(str(exc))
                return
        elif (code := self.node.poll()) is not None:
            self._stop_node(f"exited with code {code}")
            self._retry_later(f"SuperNode exited with code {code} (connection lost or refused)")
            return
        elif self.hooks.clock() - self._started_at > STABLE_S:
            self.backoff.reset()
        self.hooks.stop.wait(min(self.profile.poll_s, 5.0))

    def run(self, *, max_steps: int | None = None) -> None:
        """Loop until stopped (or ``max_steps`` passes, in tests); always stops the node."""
        steps = 0
        try:
            while not self.hooks.stop.is_set() and (max_steps is None or steps < max_steps):
                self.step()
                steps += 1
        finally:
            self._stop_node("edge client stopping")


def supernode_argv(
    profile: DeviceProfile, kit: EdgeKit, *, executable: str = "flower-supernode", port: int = 9094
) -> list[str]:
    """Build the ``flower-supernode`` command line for this device (TLS unless ``insecure``).

    ``--max-retries``/``--max-wait-time`` make Flower give up on a lost server so that this
    loop, not Flower's fixed schedule, decides when to reconnect. The node config carries
    the device name, profile-related paths and the state directory, so the ClientApp keeps
    its ledger and receipts where restarts find them.
    """
    if profile.server is None:
        raise RuntimeLaunchError(
            f"device {profile.name!r} has no server; set 'server' in device.toml or pass --server"
        )
    state = profile.state_dir
    node_config = " ".join(
        [
            f'device="{profile.name}"',
            f'state-dir="{state}"',
            f'ledger-dir="{state / "ledger"}"',
            f'receipts-dir="{state / "receipts"}"',
            f"compress-bits={profile.compression.bits}",
            f"topk-fraction={profile.compression.topk_fraction or 1.0}",
        ]
    )
    argv = [executable, "--superlink", profile.server, "--max-retries", "5", "--max-wait-time", "120"]
    argv += ["--node-config", node_config, "--port", str(port)]
    if profile.insecure:
        argv.append("--insecure")
    elif kit.ca_file is not None:
        argv += ["--root-certificates", str(kit.ca_file)]
    if kit.auth_key_file is not None:
        argv += ["--auth-supernode-private-key", str(kit.auth_key_file)]
    return argv
