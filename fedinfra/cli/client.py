"""``fedinfra client start``: a site's SuperNode, after the site's preflight."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

from fedinfra.cli._common import (
    EXIT_CHECK_FAILED,
    OutputFormat,
    console,
    fail,
    guarded,
    host_port,
    positive,
    start_preflight,
)

if TYPE_CHECKING:
    from fedinfra.runtime.procs import FlowerProcess

client_app = typer.Typer(name="client", help="Run a site (Flower SuperNode).", no_args_is_help=True)


@client_app.command("start")
def start_cmd(
    site: Path = typer.Option(..., "--site", help="The site manifest (site.toml)."),
    kit: Path = typer.Option(..., "--kit", help="This site's kit from 'fedinfra keys init'."),
    superlink: str | None = typer.Option(
        None, "--superlink", callback=host_port, help="Coordinator host:port (default: from the kit)."
    ),
    port: int = typer.Option(
        9094, "--port", min=1, max=65535, help="Local port of the SuperNode's runtime API (loopback)."
    ),
    state_dir: Path = typer.Option(
        Path("state"), "--state-dir", help="This site's private state: privacy ledger, receipts, model copies, logs."
    ),
    connect_timeout: float = typer.Option(
        120.0, "--connect-timeout", callback=positive, help="Seconds to wait for the coordinator."
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json (status lines)."),
) -> None:
    """Run the preflight, then connect to the coordinator with the kit's CA and key.

    The SuperNode's node config names the manifest, the kit, the state directory and
    ``tls=true``; fedinfra's ClientApp handles every message from them.
    """
    from fedinfra.runtime.deploy import start_supernode
    from fedinfra.runtime.env import harden, private_dir, private_umask
    from fedinfra.runtime.kit import load_site_transport

    def _start() -> FlowerProcess:
        private_umask()  # ledger, receipts, model copies, logs: 0700 / 0600 (runtime/env.py)
        manifest = start_preflight(site)  # the data first: nothing starts for a site that fails it
        site_kit = load_site_transport(kit)
        private_dir(state_dir.resolve())  # before harden() creates <state>/flwr inside it
        harden(flwr_home=state_dir.resolve() / "flwr")
        return start_supernode(
            site, manifest, site_kit, state_dir=state_dir.resolve(), superlink=superlink,
            port=port, connect_timeout=connect_timeout,
        )

    from fedinfra.runtime.signals import child_guard

    with child_guard():  # from the first instant: no SuperNode outlives this command (runtime/signals.py)
        _serve(guarded(_start), fmt)


def _serve(proc: FlowerProcess, fmt: OutputFormat) -> None:
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    say = _sayer(fmt)
    say("connected", f"site connected to the coordinator; log {proc.log_path}; Ctrl-C stops it", log=str(proc.log_path))
    try:
        while not stop.wait(1.0):
            if not proc.alive():
                fail(f"SuperNode exited: {proc.last_error()}", EXIT_CHECK_FAILED)
    finally:
        proc.stop()
    say("stopped", "site stopped")


def _sayer(fmt: OutputFormat) -> Callable[..., None]:
    """Status lines as text, or one JSON object per line (``--format json``)."""

    def say(event: str, text: str, **fields: object) -> None:
        logging.getLogger("fedinfra.client").info(text, extra={"event": event, **fields})
        if fmt is OutputFormat.json:
            sys.stdout.write(json.dumps({"event": event, **fields}, sort_keys=True) + "\n")
            sys.stdout.flush()
        else:
            console.print(text, highlight=False)

    return say


def register(app: typer.Typer) -> None:
    """Add ``client`` to the root application."""
    app.add_typer(client_app)
