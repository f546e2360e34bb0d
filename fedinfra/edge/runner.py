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
   the loop backs off and starts it again. A SuperNode that is still running but shows no
   sign of reaching the server for :data:`DISCONNECTED_S` counts as lost too: Flower 1.41's
   SuperNode, once it gives up reconnecting, can stay alive forever (its runtime-API server
   thread is not a daemon thread), so the loop judges liveness itself - from the kernel's
   socket table (``/proc/<pid>/net/tcp`` via psutil), no traffic - rather than trusting
   the exit. Ledger and receipts live in the state directory, which the loop never
   deletes, so nothing is lost across reconnects.

What counts as a sign of the server (:class:`ConnectionWatch`): a connection to it that is
established now, or one that was not there at the last look and completed its handshake
(RFC 9293 §3.3.2: ESTABLISHED, or a closing state that only follows it - CLOSE_WAIT when
the server closed an idle keep-alive connection). A persistent connection is not a sign
the loop can rely on: Flower 1.41's SuperNode speaks protobuf over HTTP/1.1 (httpx), pulls
every 3 s and heartbeats every 17.5-22.5 s, and a connection idle past a keep-alive limit
(httpx's 5 s, uvicorn's 5 s on a SuperLink without the proxy) is replaced by a fresh one
at the next request; on a busy host every pull can run on a new connection, with the old
one sitting in CLOSE_WAIT in between. httpx closes an expired connection only when the
next request starts (httpcore 1.0 ``ConnectionPool``), so every connection stays in the
SuperNode's socket table until the next request: one look per step sees each of them.
The SuperNode's log is no such sign: an idle, healthy SuperNode prints nothing (its pull
loop and heartbeats are silent). A server that is gone leaves at most a stale socket seen
before, or SYN_SENT ones, neither of which counts. TIME_WAIT entries are left out: the
kernel ties them to no process, and another SuperNode on the host may talk to the same
server.

Time, sleeping, the probe, the launcher and the server check are injected for tests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
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
import psutil

from fedinfra.config.device import DeviceProfile
from fedinfra.edge.backoff import Backoff
from fedinfra.edge.kit import EdgeKit
from fedinfra.edge.limits import ProcessWatchdog, Violation
from fedinfra.edge.probe import ConditionProbe, evaluate
from fedinfra.edge.state import STATUS_FILE, EdgeState
from fedinfra.errors import CryptoError, FedinfraError, RuntimeLaunchError

#: A SuperNode that stayed connected this long counts as healthy: the backoff starts afresh.
STABLE_S = 60.0
#: A running SuperNode that showed no sign of the server for this long after its last one
#: is stopped and the loop backs off (covers Flower's own reconnection attempts and a hung
#: node). Longer than Flower's heartbeat period (at most 22.5 s), so a node busy with a
#: round, whose only traffic is heartbeats, stays up.
DISCONNECTED_S = 30.0
#: The same limit before the node's first sign of the server. check_server has just
#: reached the server, and a SuperNode whose first connection fails exits by itself after
#: ``--max-wait-time`` (120 s, :func:`supernode_argv`); this only bounds a start-up that
#: hangs. Starting Flower (and the warm launcher's imports) on a loaded host can take
#: longer than DISCONNECTED_S.
STARTUP_S = 120.0
#: After this long without a sign of the server, the loop says so (once) in its log.
QUIET_S = DISCONNECTED_S / 2

#: TCP states reached only after a completed handshake (RFC 9293 §3.3.2).
_HANDSHAKE_DONE = frozenset({
    psutil.CONN_ESTABLISHED, psutil.CONN_FIN_WAIT1, psutil.CONN_FIN_WAIT2,
    psutil.CONN_CLOSE_WAIT, psutil.CONN_CLOSING, psutil.CONN_LAST_ACK,
})


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


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _reap(procs: list[psutil.Process], timeout: float = 5.0) -> None:
    """Terminate what a stopped SuperNode left behind, then kill what is still there."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _plain_ip(text: str) -> str:
    """Canonical text of an IP address; an IPv4-mapped IPv6 address as its IPv4 form."""
    ip = ipaddress.ip_address(text)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


#: One socket of the node's process tree: (pid, fd, local address, TCP state).
_Socket = tuple[int, int, tuple[str, int], str]


def _server_sockets(pid: int, address: str) -> set[_Socket] | None:
    """The TCP sockets of ``pid`` and its descendants whose remote end is ``address``.

    Read from the kernel's socket table: no packet is sent, and no DNS query either - for
    a server named by DNS only the port is compared (the SuperNode's outgoing connections;
    its runtime API listens on its own loopback port). ``None`` if the table cannot be read
    (no permission). The descendants count: ``fedinfra edge start`` supervises the warm
    launcher, whose child is the SuperNode that holds the connections.
    """
    host, port = split_address(address)
    try:
        ips: set[str] | None = {_plain_ip(host)}
    except ValueError:
        ips = None
    found: set[_Socket] = set()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]  # under the warm launcher: its SuperNode child
    except psutil.AccessDenied:
        return None
    except psutil.Error:
        return found
    for proc in procs:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.AccessDenied:
            return None
        except psutil.NoSuchProcess:
            continue
        found |= {
            (proc.pid, c.fd, (c.laddr.ip, c.laddr.port), c.status)
            for c in conns
            if c.raddr and c.raddr.port == port and (ips is None or _plain_ip(c.raddr.ip) in ips)
        }
    return found


def holds_connection(pid: int, address: str) -> bool:
    """Whether process ``pid`` (or a descendant) has an established TCP connection to ``address``.

    If the socket table cannot be read (no permission), the answer is ``True`` so that only
    the process's exit counts. See :class:`ConnectionWatch` for what the loop judges by.
    """
    sockets = _server_sockets(pid, address)
    return sockets is None or any(s[3] == psutil.CONN_ESTABLISHED for s in sockets)


class ConnectionWatch:
    """Whether a SuperNode showed a sign of reaching ``address`` since the last look.

    A sign is a connection established now, or a connection absent at the last look whose
    handshake completed (:data:`_HANDSHAKE_DONE`): with a fresh connection per request,
    each request leaves one (see the module docstring). A stale socket - the same one as
    at the last look, in CLOSE_WAIT because the server went away - is no sign. Call it
    once per step, with the node's pid (the hook :attr:`RunnerHooks.connected`); a new
    pid starts afresh. An unreadable socket table counts as a sign (only the exit counts).
    """

    def __init__(self, address: str) -> None:
        split_address(address)  # a malformed address fails here, not at the first look
        self.address = address
        self._pid: int | None = None
        self._seen: frozenset[tuple[int, int, tuple[str, int]]] = frozenset()

    def __call__(self, pid: int) -> bool:
        """Look once: ``True`` if the node reached the server since the previous look."""
        sockets = _server_sockets(pid, self.address)
        if sockets is None:
            return True
        done = frozenset((p, fd, laddr) for p, fd, laddr, status in sockets if status in _HANDSHAKE_DONE)
        seen = self._seen if pid == self._pid else frozenset()
        self._pid, self._seen = pid, done
        return any(s[3] == psutil.CONN_ESTABLISHED for s in sockets) or bool(done - seen)


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
        # Flower 1.41's Fleet API is HTTP/1.1 (FastAPI), behind fedinfra's nginx proxy too,
        # which answers an h2-only offer with a no_application_protocol alert (RFC 7301 §3.2).
        ctx.set_alpn_protocols(["h2", "http/1.1"])
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
    #: Whether the SuperNode with this pid showed a sign of reaching the server since the
    #: previous call (a :class:`ConnectionWatch`); the default trusts the process's exit alone.
    connected: Callable[[int], bool] = lambda pid: True
    #: The launched process forks one child per round (fedinfra's warm launcher): only
    #: those forks are held to the round limits, not its long-lived SuperNode child.
    forked_rounds: bool = False
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
        self._connected_at: float | None = None
        self._progress_at: float | None = None
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
        self._connected_at = None
        self._progress_at = None
        self.watchdog = ProcessWatchdog(self.node.pid, self.profile.limits, on_violation=self._violation,
                                        forks_only=self.hooks.forked_rounds)
        self.watchdog.start()
        self.hooks.log(f"SuperNode started (pid {self.node.pid})")
        now = self.hooks.now().isoformat(timespec="seconds")
        self._save(starts=self._count("starts"), last_connected=now)

    def _stop_node(self, why: str) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.node is not None:
            helpers = _descendants(self.node.pid)  # flower-superexec, flwr-clientapp
            if self.node.poll() is None:
                self.node.terminate()
                try:
                    self.node.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.node.kill()
                    self.node.wait(timeout=5)
            _reap(helpers)
            self.hooks.log(f"SuperNode stopped: {why}")
            self.node = None

    def _retry_later(self, error: str) -> None:
        delay = self.backoff.next_delay()
        # The status file first: whoever reads the log line and then status.json sees this retry.
        self._save(
            failures=self._count("failures"),
            last_error=error,
            retry_attempt=self.backoff.attempt,
            retry_delay_s=round(delay, 3),
        )
        self.hooks.log(f"{error}; retry {self.backoff.attempt} in {delay:.1f} s")
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
        elif self._lost_connection():
            return
        self.hooks.stop.wait(min(self.profile.poll_s, 5.0))

    def _lost_connection(self) -> bool:
        """Track the running node's signs of the server; stop it and back off once they stop.

        The window runs from the last sign (:data:`DISCONNECTED_S`), or from the start
        until the first one (:data:`STARTUP_S`).
        """
        assert self.node is not None
        now = self.hooks.clock()
        if self.hooks.connected(self.node.pid):
            if self._connected_at is None:
                self._connected_at = now
                self.hooks.log("connected to the server")
            self._progress_at = now
            if now - self._connected_at > STABLE_S:
                self.backoff.reset()
            return False
        since, window = (
            (self._started_at, STARTUP_S) if self._progress_at is None else (self._progress_at, DISCONNECTED_S)
        )
        gone = now - since
        if self._connected_at is not None and gone > QUIET_S:
            self._connected_at = None
            self.hooks.log(f"no sign of the server for {gone:.0f} s; the SuperNode is retrying")
        if gone <= window:
            return False
        self._stop_node(f"no connection to the server for {gone:.0f} s")
        self._retry_later(f"no connection to server {self.profile.server} for {gone:.0f} s")
        return True

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
    profile: DeviceProfile,
    kit: EdgeKit,
    *,
    executable: str = "flower-supernode",
    port: int = 9094,
    manifest: Path | None = None,
) -> list[str]:
    """Build the ``flower-supernode`` command line for this device (TLS unless ``insecure``).

    ``--max-retries``/``--max-wait-time`` make Flower give up on a lost server so that this
    loop, not Flower's fixed schedule, decides when to reconnect. The node config carries
    what fedinfra's ClientApp reads (:func:`fedinfra.runtime.deploy.node_config`): the
    device's data declaration (``site-manifest``), its kit (HE key, audit verifier key),
    the state directory (privacy ledger, receipts - kept where restarts find them) and
    ``tls``; plus the device name and compression settings. The runtime API the ClientApp
    processes dial binds loopback only (``--host 127.0.0.1``) on ``port``.
    """
    if profile.server is None:
        raise RuntimeLaunchError(
            f"device {profile.name!r} has no server; set 'server' in device.toml or pass --server"
        )
    state = profile.state_dir
    pairs: dict[str, str | int | float | bool] = {
        "device": profile.name,
        "state-dir": str(state),
        "ledger-dir": str(state / "ledger"),
        "receipts-dir": str(state / "receipts"),
        "compress-bits": profile.compression.bits,
        "topk-fraction": profile.compression.topk_fraction or 1.0,
        "tls": not profile.insecure,
    }
    if manifest is not None:
        pairs["site-manifest"] = str(manifest.resolve())
    if kit.path.is_dir():
        pairs["kit"] = str(kit.path.resolve())
    # TOML values: JSON string escapes are valid TOML basic strings; bools lower-case.
    node_config = " ".join(
        f"{key}={str(value).lower() if isinstance(value, bool) else json.dumps(value)}"
        for key, value in pairs.items()
    )
    argv = [executable, "--superlink", profile.server, "--max-retries", "5", "--max-wait-time", "120"]
    argv += ["--node-config", node_config, "--host", "127.0.0.1", "--port", str(port)]
    if profile.insecure:
        argv.append("--insecure")
    elif kit.ca_file is not None:
        argv += ["--root-certificates", str(kit.ca_file.resolve())]  # the node runs in site.toml's dir
    if kit.auth_key_file is not None:
        argv += ["--auth-supernode-private-key", str(kit.auth_key_file.resolve())]
    return argv
