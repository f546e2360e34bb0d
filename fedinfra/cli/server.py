"""``fedinfra server start|status``: the coordinator's SuperLink."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import typer
from rich.markup import escape

from fedinfra.cli._common import EXIT_CHECK_FAILED, OutputFormat, console, err_console, fail, guarded, print_json
from fedinfra.errors import ConfigError, RuntimeLaunchError

server_app = typer.Typer(name="server", help="Run the coordinator (Flower SuperLink).", no_args_is_help=True)


@server_app.command("start")
def start_cmd(
    config: Path = typer.Option(Path("server/server.toml"), "--config", help="server.toml of this coordinator."),
    kit: Path | None = typer.Option(None, "--kit", help="The coordinator kit (default: 'kit' in server.toml)."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json (status lines)."),
) -> None:
    """Start the SuperLink (loopback) and its Fleet-only public proxy; stop with Ctrl-C or SIGTERM."""
    from fedinfra._optional import require_extra
    from fedinfra.config.server import load_server
    from fedinfra.runtime.deploy import start_superlink
    from fedinfra.runtime.env import harden, private_dir, private_umask
    from fedinfra.runtime.kit import load_coordinator_transport

    def _start() -> object:
        require_extra("fedinfra server start")
        private_umask()  # state, database, logs, runs: 0700 / 0600 (runtime/env.py)
        cfg = load_server(config)
        kit_dir = kit or cfg.kit
        if kit_dir is None:
            raise ConfigError(f"{config}: no coordinator kit; pass --kit or set 'kit'")
        private_dir(cfg.state_dir)  # before harden() creates <state>/flwr inside it
        harden(flwr_home=cfg.state_dir / "flwr")
        return start_superlink(cfg, load_coordinator_transport(kit_dir))

    from fedinfra.runtime.signals import child_guard

    with child_guard():  # from the first instant: no SuperLink outlives this command (runtime/signals.py)
        _serve(guarded(_start), fmt)


def _serve(link: object, fmt: OutputFormat) -> None:
    from fedinfra.runtime.deploy import SuperLink

    assert isinstance(link, SuperLink)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    def say(event: str, text: str, **fields: object) -> None:
        logging.getLogger("fedinfra.server").info(text, extra={"event": event, **fields})
        if fmt is OutputFormat.json:
            print_json({"event": event, **fields})
        else:
            console.print(text, highlight=False)

    say(
        "listening",
        f"SuperLink listening on {link.public} (TLS, Fleet API only; {len(link.sites)} site keys registered; "
        f"operator API on {link.address}, this host only); log {link.process.log_path}; Ctrl-C stops it",
        address=link.public,
        operator_address=link.address,
        sites=len(link.sites),
        log=str(link.process.log_path),
    )
    try:
        while not stop.wait(1.0):
            dead = next((p for p in (link.process, link.proxy) if p is not None and not p.alive()), None)
            if dead is not None:
                link.stop()
                fail(f"{dead.name} died: {dead.last_error()}", EXIT_CHECK_FAILED)
    finally:
        link.stop()
    say("stopped", "SuperLink stopped")


@server_app.command("status")
def status_cmd(
    config: Path = typer.Option(Path("server/server.toml"), "--config", help="server.toml of this coordinator."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Say whether the SuperLink runs, where, and which sites are registered."""
    from fedinfra.config.server import load_server
    from fedinfra.runtime.deploy import read_status

    cfg = guarded(lambda: load_server(config))
    try:
        status = read_status(cfg.state_dir)
    except RuntimeLaunchError as exc:  # not running is the check's answer, not bad input
        if fmt is OutputFormat.json:
            print_json({"running": False, "error": str(exc), "exit_code": EXIT_CHECK_FAILED})
        else:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CHECK_FAILED) from None
    if fmt is OutputFormat.json:
        print_json({"running": True, **status})
        return
    console.print(
        f"SuperLink running (pid {status['pid']}) on {status['address']}, public Fleet port {status['bind']}; "
        f"sites: {', '.join(sorted(status['sites'])) or 'none'}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``server`` to the root application."""
    app.add_typer(server_app)
