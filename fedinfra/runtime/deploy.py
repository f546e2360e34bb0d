"""The coordinator's SuperLink and a site's SuperNode, started hardened (layer L5).

Transport security (DESIGN.md security model):

* the SuperLink binds loopback only; the public address is an nginx proxy that forwards
  Fleet traffic (SuperNodes) and refuses the Control and runtime APIs, which the
  open-source SuperLink serves without a login (:mod:`fedinfra.runtime.proxy`);
* the SuperLink always serves TLS with the kit's certificate, checked before start
  (validity, chain to the consortium CA, key match, SAN for the dialled name; RFC 5280
  section 6, RFC 6125 section 6) so a wrong certificate fails in one line, not at every site;
* ``--enable-supernode-auth``: only SuperNodes whose public key the operator registered
  (the consortium's site keys from the coordinator kit) may join; others are refused;
* every SuperNode pins the consortium CA (``--root-certificates``), never the system store;
* the coordinator runs only a ServerApp its kit approved (pinned release key, approved
  record), as sites do for ClientApps (:mod:`fedinfra.runtime.serverapp_guard`);
* Flower's telemetry, update check and run-time ``uv sync`` are off in every process
  (:mod:`fedinfra.runtime.env`); listeners bind the configured address (default loopback).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedinfra.config.consortium import split_address
from fedinfra.config.server import ServerConfig
from fedinfra.config.site import SiteManifest
from fedinfra.crypto.tls import check_ca, check_server_certificate
from fedinfra.errors import ConfigError, RuntimeLaunchError
from fedinfra.runtime.env import LOOPBACK, private_dir
from fedinfra.runtime.kit import CoordinatorKit, SiteKit
from fedinfra.runtime.procs import FlowerProcess, can_connect, flower_bin, flower_env, free_port, port_in_use

CONNECTION = "fedinfra"
STATUS_FILE = "superlink.json"
_START = "start it with 'fedinfra server start'"


def connect_host(bind_host: str) -> str:
    """The address local tools dial: the bind address, or loopback for a wildcard bind."""
    return LOOPBACK if bind_host in ("0.0.0.0", "::", "") else bind_host  # noqa: S104 - comparing, not binding


def write_connection(flwr_home: Path, address: str, ca: Path) -> None:
    """Write ``$FLWR_HOME/config.toml`` naming only our SuperLink (never Flower's remote default)."""
    flwr_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f"address = {json.dumps(address)}\nroot-certificates = {json.dumps(str(ca))}\n"
    )
    (flwr_home / "config.toml").write_text(text)


def flwr_cli(args: list[str], *, flwr_home: Path, timeout: float = 180.0) -> dict[str, Any]:
    """Run ``flwr <args> --format json``; return its JSON answer (raise on failure)."""
    argv = [flower_bin("flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv
            argv, env=flower_env(flwr_home), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeLaunchError(f"'flwr {args[0]}' did not answer within {timeout:.0f} s") from exc
    try:
        start = done.stdout.index("{")
        answer: dict[str, Any] = json.loads(done.stdout[start:])
    except ValueError as exc:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeLaunchError(f"'flwr {args[0]}' failed: {tail[-1] if tail else 'no output'}") from exc
    return answer


def _error_detail(answer: dict[str, Any]) -> str:
    lines = [ln for ln in str(answer.get("error-message", "")).splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


@dataclass
class SuperLink:
    """A running SuperLink and where to reach it."""

    process: FlowerProcess
    address: str
    flwr_home: Path
    status_path: Path
    sites: dict[str, str]
    proxy: FlowerProcess | None = None
    public: str = ""

    def daemons(self) -> list[FlowerProcess]:
        """The processes :meth:`stop` stops: the proxy (if any) and the SuperLink."""
        return [p for p in (self.proxy, self.process) if p is not None]

    def stop(self) -> None:
        """Stop the proxy, the SuperLink and everything it started; remove the status file."""
        from fedinfra.runtime.procs import stop_all

        stop_all(self.daemons())
        self.status_path.unlink(missing_ok=True)


def register_sites(flwr_home: Path, keys: dict[str, Path]) -> dict[str, str]:
    """Register each site's SuperNode public key; return ``{site: node_id or 'registered'}``.

    A key registered by an earlier start (persistent database) counts as registered.
    """

    def one(item: tuple[str, Path]) -> tuple[str, str]:
        site, pub = item
        answer = flwr_cli(["supernode", "register", str(pub), CONNECTION, "--name", site], flwr_home=flwr_home)
        if answer.get("success"):
            return site, str(answer.get("node-id"))
        detail = _error_detail(answer)
        if "already in use" in detail:
            return site, "registered"
        raise RuntimeLaunchError(f"registering site {site!r} failed: {detail}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, sorted(keys.items())))


def start_superlink(cfg: ServerConfig, kit: CoordinatorKit, *, now: dt.datetime | None = None) -> SuperLink:
    """Check the kit, start the SuperLink with TLS and SuperNode auth, register the sites.

    On any failure the SuperLink is stopped before the error propagates.
    """
    dialled = split_address(cfg.public_address or kit.address)[0]
    check_server_certificate(kit.cert, kit.key, kit.ca, host=dialled, now=now)
    local = connect_host(cfg.host)
    check_server_certificate(kit.cert, kit.key, kit.ca, host=local, now=now)
    from fedinfra.runtime.appcheck import pinned_keys

    pinned_keys(kit.dir)  # a coordinator kit pinning no release key would refuse every run: say so now
    if port_in_use(cfg.host, cfg.port):
        raise RuntimeLaunchError(
            f"port {cfg.port} on {cfg.host} is in use; stop the other listener or change 'port' in server.toml"
        )
    from fedinfra.runtime.proxy import ProxySpec, nginx_bin, start_proxy

    nginx_bin()  # fail in one line before anything starts
    state = private_dir(cfg.state_dir)
    flwr_home = state / "flwr"
    internal = free_port(LOOPBACK)  # the SuperLink itself: loopback only, every API
    address = f"{LOOPBACK}:{internal}"
    write_connection(flwr_home, address, kit.ca)
    database = cfg.database or state / "superlink.db"
    argv = [
        flower_bin("flower-superlink"),
        "--ssl-ca-certfile",
        str(kit.ca),
        "--ssl-certfile",
        str(kit.cert),
        "--ssl-keyfile",
        str(kit.key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host",
        LOOPBACK,
        "--port",
        str(internal),
        "--database",
        str(database),
    ]
    from fedinfra.runtime.serverapp_guard import launcher_env

    # Every ServerApp the SuperLink launches is checked like a site checks its ClientApp.
    env = launcher_env(flower_env(flwr_home), state, kit.dir)
    proc = FlowerProcess("SuperLink", argv, env=env, log_path=state / "superlink.log", cwd=state)
    proc.start()
    proxy: FlowerProcess | None = None
    try:
        proc.wait_until(lambda: can_connect(LOOPBACK, internal), timeout=cfg.start_timeout_s, what="listening")
        sites = register_sites(flwr_home, kit.site_keys)
        proxy = start_proxy(
            ProxySpec(listen_host=cfg.host, listen_port=cfg.port, upstream_port=internal, cert=kit.cert,
                      key=kit.key, ca=kit.ca),
            state,
            timeout=cfg.start_timeout_s,
        )
    except BaseException:
        proc.stop()
        raise
    status_path = state / STATUS_FILE
    public = f"{local}:{cfg.port}"
    link = SuperLink(proc, address, flwr_home, status_path, sites, proxy=proxy, public=public)
    status = {
        "pid": proc.pid,
        "proxy_pid": proxy.pid,
        "address": address,
        "public": public,
        "bind": f"{cfg.host}:{cfg.port}",
        "ca": str(kit.ca),
        "flwr_home": str(flwr_home),
        "database": str(database),
        "sites": sites,
        "consortium": kit.consortium,
        "kit": str(kit.dir),
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    status_path.write_text(json.dumps(status, indent=2, sort_keys=True))
    return link


def read_status(state_dir: Path) -> dict[str, Any]:
    """The status a running ``fedinfra server start`` wrote; raise if none is running."""
    path = state_dir / STATUS_FILE
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeLaunchError(f"no SuperLink is running for {state_dir}; {_START}") from exc
    if not _pid_alive(int(status.get("pid", 0))):
        raise RuntimeLaunchError(f"the SuperLink recorded in {path} is not running; {_START}")
    host, port = split_address(str(status["address"]))
    status["reachable"] = can_connect(host, port)
    if not status["reachable"]:
        raise RuntimeLaunchError(f"the SuperLink at {status['address']} is not reachable; {_START}")
    return status


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- sites -------------------------------------------------------------------------------


NODE_CONFIG_FILE = "node-config.toml"
#: Per-start secret the warm launcher signs its Runtime API calls with (0600, site only).
SUPEREXEC_SECRET_FILE = "superexec.secret"  # noqa: S105 - a file name, not a secret


def node_config(manifest_path: Path, kit: SiteKit, state_dir: Path) -> dict[str, str | bool]:
    """What the site's ClientApp reads from its node config (:mod:`fedinfra.site.home`).

    ``site-manifest`` (data and declarations), ``kit`` (HE secret key, the coordinator's
    audit verifier key), ``state-dir`` (privacy ledger, receipts, model copies) and
    ``tls``: this SuperNode only ever dials TLS, pinned to the consortium CA.
    """
    return {
        "site-manifest": str(manifest_path.resolve()),
        "kit": str(kit.dir),
        "state-dir": str(state_dir.resolve()),
        "tls": True,
    }


def write_node_config(path: Path, config: dict[str, str | bool]) -> Path:
    """Write the node config as TOML (Flower reads a ``.toml`` path; no quoting pitfalls)."""
    lines = [
        f"{json.dumps(k)} = {('true' if v else 'false') if isinstance(v, bool) else json.dumps(v)}\n"
        for k, v in config.items()
    ]
    path.write_text("".join(lines))
    return path


def start_supernode(
    manifest_path: Path,
    manifest: SiteManifest,
    kit: SiteKit,
    *,
    state_dir: Path,
    superlink: str | None = None,
    port: int = 9094,
    connect_timeout: float = 60.0,
    max_retries: int | None = None,
    now: dt.datetime | None = None,
    warm: bool = True,
    clientapp_threads: int = 1,
    verify_apps: bool = True,
) -> FlowerProcess:
    """Start a SuperNode that pins the kit's CA and authenticates with the kit's key.

    Returns once the SuperLink accepted the node; a refused key, a certificate the CA does
    not vouch for, or an unreachable SuperLink raise :class:`RuntimeLaunchError` with
    Flower's reason, and the SuperNode is stopped.

    ``warm`` (default) runs the SuperNode under :mod:`fedinfra.runtime.warm`: Flower's
    ``--isolation process`` with a launcher that imports torch, Opacus and TenSEAL once and
    forks one fresh process per message, instead of Flower's default of starting (and
    importing everything in) a new ``flwr-clientapp`` per message; its ClientApps run torch
    with ``clientapp_threads`` intra-op threads (1 suits fedinfra's small tabular models).
    Every FAB is checked against the releases the kit approved before it is installed
    (:mod:`fedinfra.runtime.appcheck`). ``warm=False`` is Flower's stock ``--isolation
    subprocess``, *without* that check: only for the benchmark's baseline; so is
    ``verify_apps=False`` (the warm launcher without the check, as before issue 12).
    """
    if kit.site_id != manifest.name:
        raise ConfigError(
            f"{kit.dir}: kit is for site {kit.site_id!r} but {manifest_path} names {manifest.name!r}; "
            "use the matching kit"
        )
    check_ca(kit.ca, now=now)
    target = superlink or kit.superlink
    split_address(target)
    if port_in_use(LOOPBACK, port):
        raise RuntimeLaunchError(f"port {port} on {LOOPBACK} is in use; pick another with --port")
    private_dir(state_dir)
    argv = [
        flower_bin("flower-supernode"),
        "--root-certificates",
        str(kit.ca),
        "--superlink",
        target,
        "--auth-supernode-private-key",
        str(kit.auth_key),
        "--node-config",
        str(write_node_config(state_dir / NODE_CONFIG_FILE, node_config(manifest_path, kit, state_dir))),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    if warm:
        from fedinfra.runtime.appcheck import pinned_keys
        from fedinfra.runtime.warm import launcher_argv, write_secret

        if verify_apps:
            pinned_keys(kit.dir)  # a kit that pins no release key would refuse every task: say so now
        secret = write_secret(state_dir / SUPEREXEC_SECRET_FILE)
        argv = launcher_argv(f"{LOOPBACK}:{port}", secret, argv, threads=clientapp_threads,
                             kit=kit.dir if verify_apps else None, state_dir=state_dir)
    proc = FlowerProcess(
        f"SuperNode {manifest.name}",
        argv,
        env=flower_env(state_dir / "flwr"),
        log_path=state_dir / "supernode.log",
        # The manifest's relative paths (dataset.path) mean "next to site.toml"; every
        # ClientApp process inherits this working directory.
        cwd=manifest_path.resolve().parent,
    )
    proc.start()
    try:
        proc.wait_until(lambda: "SuperNode ID:" in proc.log_text(), timeout=connect_timeout, what="connected")
    except BaseException:
        proc.stop()
        raise
    return proc


__all__ = [
    "CONNECTION",
    "SuperLink",
    "connect_host",
    "flwr_cli",
    "node_config",
    "read_status",
    "register_sites",
    "start_superlink",
    "start_supernode",
    "write_connection",
    "write_node_config",
]
