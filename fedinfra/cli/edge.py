"""``fedinfra edge start``: run this device as a Flower SuperNode under its edge profile.

``--check`` is the preflight: it validates the profile (and the kit, if given), reads the
device's conditions and prints them - no server needed. Exit codes: 0 all conditions hold,
1 a condition fails, 2 bad profile or kit.
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

from fedinfra.cli._common import EXIT_CHECK_FAILED, OutputFormat, console, fail, guarded, print_json
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
        kit_info = {"path": str(kit.path), "site_id": kit.site_id, "tls": kit.ca_file is not None}
    return {
        "device": profile.name,
        "server": profile.server,
        "state_dir": str(profile.state_dir),
        "limits": profile.limits.model_dump(),
        "conditions": report.to_dict(),
        "kit": kit_info,
    }


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
        console.print(f"kit: {result['kit']['path']} (device {result['kit']['site_id']})")
    verdict = "would train now" if result["conditions"]["ok"] else "would wait: a condition does not hold"
    console.print(f"[bold]{verdict}[/]")


def _run(profile: Any, kit_dir: Path) -> None:
    from fedinfra.edge import EdgeRunner, EdgeState, RunnerHooks, check_server, load_edge_kit, make_probe
    from fedinfra.edge.runner import supernode_argv
    from fedinfra.runtime.env import hardened_env

    kit = load_edge_kit(kit_dir, device=profile.name, require_tls=not profile.insecure)
    executable = shutil.which("flower-supernode") or str(Path(sys.executable).with_name("flower-supernode"))
    if not Path(executable).exists():
        raise RuntimeLaunchError("flower-supernode not found; reinstall with 'pip install fedinfra[edge]'")
    argv = supernode_argv(profile, kit, executable=executable)
    if profile.server is None:  # pragma: no cover - supernode_argv already refused
        raise RuntimeLaunchError("no server")
    server: str = profile.server
    ca = None if profile.insecure else kit.ca_file

    def log(message: str) -> None:
        console.print(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} {message}", highlight=False)

    def launch() -> subprocess.Popen[bytes]:
        env = hardened_env(flwr_home=profile.state_dir / ".flwr")
        return subprocess.Popen(argv, env=env, start_new_session=True)  # noqa: S603 - fixed argv, no shell

    with EdgeState(profile.state_dir) as state:
        hooks = RunnerHooks(
            launch=launch, check=lambda: check_server(server, ca_file=ca), probe=make_probe(profile.probe), log=log
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
    server: str | None = typer.Option(None, "--server", help="Override the profile's server host:port."),
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
    guarded(lambda: _run(profile, kit_dir))


def register(app: typer.Typer) -> None:
    """Add ``fedinfra edge`` to the root app."""
    app.add_typer(edge_app, name="edge")
