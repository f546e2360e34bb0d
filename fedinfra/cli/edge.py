"""``fedinfra edge start``: run this device as a Flower SuperNode under its edge profile.

``--check`` is the preflight: it validates the profile (and the kit, if given: with the
release keys it pins and the app releases it approved, i.e. what the device will run),
reads the device's conditions and prints them - no server needed. Exit codes: 0 all conditions hold,
1 a condition fails, 2 bad profile or kit.

Without ``--check`` the device needs its data declaration: a site manifest (``site.toml``,
the same format a hospital or bank site uses) passed with ``--site`` or found next to the
device profile. Its ``name`` must be the device's name; its data set is scanned for
identifiers before anything connects (the site preflight, HIPAA 164.514(b)(2)).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from fedinfra.cli._common import (
    EXIT_CHECK_FAILED,
    OutputFormat,
    console,
    fail,
    guarded,
    host_port,
    print_json,
    start_preflight,
)
from fedinfra.errors import ConfigError, RuntimeLaunchError

edge_app = typer.Typer(help="Run an edge device (a small, resilient client).", no_args_is_help=True)


def _load(device: Path, server: str | None) -> Any:
    import psutil

    from fedinfra.config.device import DeviceProfile, load_device

    profile = load_device(device)
    if server is not None:
        data = profile.model_dump()
        data["server"] = server
        try:
            profile = DeviceProfile.model_validate(data)
        except ValueError as exc:
            raise ConfigError(f"--server {server!r} is not host:port") from exc
    total_mb = psutil.virtual_memory().total // (1024 * 1024)
    profile.check_host(total_memory_mb=total_mb, cpu_count=os.cpu_count() or 1)
    return profile


def _preflight(profile: Any, kit_dir: Path | None) -> dict[str, Any]:
    from fedinfra.edge import evaluate, load_edge_kit, make_probe

    report = evaluate(profile.conditions, make_probe(profile.probe).read(), dt.datetime.now())
    kit_info: dict[str, Any] | None = None
    if kit_dir is not None:
        kit = load_edge_kit(kit_dir, device=profile.name, require_tls=not profile.insecure)
        kit_info = {"path": str(kit.path), "site_id": kit.site_id, "tls": kit.ca_file is not None,
                    **_releases(kit.path)}
    return {
        "device": profile.name,
        "server": profile.server,
        "state_dir": str(profile.state_dir),
        "limits": profile.limits.model_dump(),
        "conditions": report.to_dict(),
        "kit": kit_info,
    }


def _releases(kit_dir: Path) -> dict[str, Any]:
    """The release keys the kit pins and the app releases it approved (what the device will run).

    A kit pinning no release key is refused here as at start (exit 2): the device would
    refuse every app. Each approved record is re-verified against the pinned keys.
    """
    from fedinfra.crypto.release import key_id, verify_record
    from fedinfra.errors import CryptoError
    from fedinfra.runtime.appcheck import approved_records, pinned_keys

    keys = pinned_keys(kit_dir)
    approved = []
    for record in approved_records(kit_dir):
        try:
            verify_record(record, keys)
            valid = True
        except CryptoError:
            valid = False
        approved.append({"app": str(record.get("app", "?")), "version": str(record.get("version", "?")),
                         "fab_sha256": str(record.get("fab_sha256", "")), "key_id": str(record.get("key_id", "")),
                         "valid": valid})
    return {"release_keys": [key_id(k) for k in keys], "approved_releases": approved}


def _print_preflight(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"device {result['device']}: preflight")
    table.add_column("condition")
    table.add_column("holds")
    table.add_column("detail")
    for check in result["conditions"]["checks"]:
        table.add_row(check["name"], "yes" if check["ok"] else "[red]no[/]", check["detail"])
    console.print(table)
    limits = result["limits"]
    console.print(f"limits: {limits['max_cpu_seconds']:g} CPU s and {limits['max_memory_mb']} MB per round")
    console.print(f"server: {result['server'] or '(not set)'}   state: {result['state_dir']}")
    if result["kit"]:
        kit = result["kit"]
        console.print(f"kit: {kit['path']} (device {kit['site_id']})")
        console.print(f"release keys pinned: {', '.join(kit['release_keys'])}", highlight=False)
        runs = [r for r in kit["approved_releases"] if r["valid"]]
        for r in kit["approved_releases"]:
            mark = "approved" if r["valid"] else "[red]ignored: not signed by a pinned key[/]"
            console.print(f"  {r['app']} {r['version']} (FAB sha256 {r['fab_sha256'][:16]}..., key {r['key_id']}): "
                          f"{mark}", highlight=False)
        if not runs:
            console.print("[yellow]no approved release: the device will refuse every app until "
                          "'fedinfra app approve' adds one[/]")
    verdict = "would train now" if result["conditions"]["ok"] else "would wait: a condition does not hold"
    console.print(f"[bold]{verdict}[/]")


def _site_manifest(profile: Any, device: Path, site: Path | None) -> Path:
    """The device's data declaration: ``--site``, else ``site.toml`` next to the profile."""
    path = site if site is not None else device.resolve().parent / "site.toml"
    if not path.is_file():
        raise ConfigError(
            f"{path}: the device's data declaration (site.toml) was not found; "
            "pass --site or put site.toml next to the device profile"
        )
    manifest = start_preflight(path)  # identifiers in training columns: exit 2, as `client start`
    if manifest.name != profile.name:
        raise ConfigError(
            f"{path}: declares site {manifest.name!r} but the device is {profile.name!r}; "
            "set 'name' in one of them to match"
        )
    return path.resolve()


def _kit(profile: Any, kit_dir: Path) -> Any:
    from fedinfra.edge import load_edge_kit

    return load_edge_kit(kit_dir, device=profile.name, require_tls=not profile.insecure)


def _run(profile: Any, kit: Any, manifest: Path) -> None:
    from fedinfra.edge import EdgeRunner, EdgeState, RunnerHooks, check_server, make_probe
    from fedinfra.edge.runner import ConnectionWatch, supernode_argv
    from fedinfra.runtime.edge_launch import check_release_pin, edge_supernode_argv
    from fedinfra.runtime.procs import flower_env, free_port

    # The SuperNode starts Flower helpers (flower-superexec, flwr-clientapp) by name: they
    # must come from this installation, whatever PATH the service manager gives us.
    executable = str(Path(sys.executable).with_name("flower-supernode"))
    if not Path(executable).exists():
        found = shutil.which("flower-supernode")
        if found is None:
            raise RuntimeLaunchError("flower-supernode not found; reinstall with 'pip install fedinfra[edge]'")
        executable = found
    supernode_argv(profile, kit, executable=executable, manifest=manifest)  # refuses a profile without server
    check_release_pin(kit)  # a kit pinning no release key would refuse every app: say so now
    if profile.server is None:  # pragma: no cover - supernode_argv already refused
        raise RuntimeLaunchError("no server")
    server: str = profile.server
    ca = None if profile.insecure else kit.ca_file

    def log(message: str) -> None:
        console.print(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} {message}", highlight=False, soft_wrap=True)

    def launch() -> subprocess.Popen[bytes]:
        # A fresh loopback port per start: a fixed one collides with another SuperNode
        # (a site, a second device) on the same host.
        # Under the warm launcher: every FAB is checked against the kit's approved releases.
        argv = edge_supernode_argv(profile, kit, executable=executable, manifest=manifest, port=free_port())
        env = flower_env(profile.state_dir / ".flwr")  # hardened: nothing phones home
        env["PATH"] = str(Path(executable).parent) + os.pathsep + env.get("PATH", "")
        # The manifest's relative paths mean "next to site.toml"; ClientApps inherit the cwd.
        from fedinfra.runtime.signals import spawn

        # Recorded for signals.child_guard the instant it exists.
        return spawn(argv, env=env, start_new_session=True, cwd=manifest.parent)

    with EdgeState(profile.state_dir) as state:
        hooks = RunnerHooks(
            launch=launch,
            check=lambda: check_server(server, ca_file=ca),
            probe=make_probe(profile.probe),
            log=log,
            connected=ConnectionWatch(server),  # signs of the server: liveness, not one socket
            forked_rounds=True,  # rounds are the launcher's forks; its SuperNode child is not one
        )

        def _stop(signum: int, frame: FrameType | None) -> None:
            hooks.stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        log(f"edge client for {profile.name!r} -> {server} (state {profile.state_dir})")
        EdgeRunner(profile, kit=kit, state=state, hooks=hooks).run()
        log("stopped")


@edge_app.command("start")
def start(
    device: Path = typer.Option(..., "--device", help="The device profile (device.toml)."),
    kit: Path | None = typer.Option(None, "--kit", help="This device's provisioning kit directory."),
    site: Path | None = typer.Option(
        None, "--site", help="The device's data declaration (default: site.toml next to --device)."
    ),
    server: str | None = typer.Option(
        None, "--server", callback=host_port, help="Override the profile's server host:port."
    ),
    check: bool = typer.Option(False, "--check", help="Preflight only: evaluate conditions and exit."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json (with --check)."),
) -> None:
    """Run this device as a SuperNode, training only when its conditions hold."""
    profile = guarded(lambda: _load(device, server))
    if check:
        result = guarded(lambda: _preflight(profile, kit))
        if fmt is OutputFormat.json:
            print_json(result)
        else:
            _print_preflight(result)
        if not result["conditions"]["ok"]:
            raise typer.Exit(EXIT_CHECK_FAILED)
        return
    if kit is None:
        fail("--kit is required to start the client; --check works without it")
    kit_dir: Path = kit
    from fedinfra.runtime.env import private_umask

    private_umask()  # ledger, receipts, residuals, logs: 0700 / 0600 (runtime/env.py)
    loaded = guarded(lambda: _kit(profile, kit_dir))  # the kit first: it names the device
    manifest = guarded(lambda: _site_manifest(profile, device, site))
    from fedinfra.runtime.signals import child_guard

    with child_guard():  # from the first instant: no SuperNode outlives this command (runtime/signals.py)
        guarded(lambda: _run(profile, loaded, manifest))


def register(app: typer.Typer) -> None:
    """Add ``fedinfra edge`` to the root app."""
    app.add_typer(edge_app, name="edge")
