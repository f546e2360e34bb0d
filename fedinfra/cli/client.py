"""``fedinfra client start``: a site's SuperNode, after the site's preflight."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import typer

from fedinfra.cli._common import console, guarded

client_app = typer.Typer(name="client", help="Run a site (Flower SuperNode).", no_args_is_help=True)


@client_app.command("start")
def start_cmd(
    site: Path = typer.Option(..., "--site", help="The site manifest (site.toml)."),
    kit: Path = typer.Option(..., "--kit", help="This site's kit from 'fedinfra keys init'."),
    superlink: str | None = typer.Option(None, "--superlink", help="Coordinator host:port (default: from the kit)."),
    port: int = typer.Option(9094, "--port", help="Local port of the SuperNode's runtime API (loopback)."),
    state_dir: Path = typer.Option(
        Path("state"), "--state-dir", help="This site's private state: privacy ledger, receipts, model copies, logs."
    ),
    connect_timeout: float = typer.Option(120.0, "--connect-timeout", help="Seconds to wait for the coordinator."),
) -> None:
    """Run the preflight, then connect to the coordinator with the kit's CA and key.

    The SuperNode's node config names the manifest, the kit, the state directory and
    ``tls=true``; fedinfra's ClientApp handles every message from them.
    """
    from fedinfra.runtime.deploy import start_supernode
    from fedinfra.runtime.env import harden, private_dir, private_umask
    from fedinfra.runtime.kit import load_site_transport
    from fedinfra.runtime.preflight import preflight
    from fedinfra.runtime.procs import FlowerProcess

    def _start() -> FlowerProcess:
        private_umask()  # ledger, receipts, model copies, logs: 0700 / 0600 (runtime/env.py)
        site_kit = load_site_transport(kit)
        manifest = preflight(site)
        private_dir(state_dir.resolve())  # before harden() creates <state>/flwr inside it
        harden(flwr_home=state_dir.resolve() / "flwr")
        return start_supernode(
            site, manifest, site_kit, state_dir=state_dir.resolve(), superlink=superlink,
            port=port, connect_timeout=connect_timeout,
        )

    proc = guarded(_start)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    console.print(f"site connected to the coordinator; log {proc.log_path}; Ctrl-C stops it", highlight=False)
    try:
        while not stop.wait(1.0):
            if not proc.alive():
                console.print(f"[bold red]error:[/] SuperNode exited: {proc.last_error()}", highlight=False)
                raise typer.Exit(1)
    finally:
        proc.stop()
    console.print("site stopped", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``client`` to the root application."""
    app.add_typer(client_app)
