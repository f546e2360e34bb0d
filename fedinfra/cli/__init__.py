"""The ``fedinfra`` command line (layer L6): the only place that maps errors to exit codes.

Sub-commands live in sibling modules, each exposing a ``register(app)`` function or a
``typer.Typer`` named ``app``; they are registered in :func:`build_app`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import click
import typer
from typer.core import TyperGroup

from fedinfra import __version__
from fedinfra.cli._common import configure_logging, handle_uncaught, harden_tree, state, wants_json


class LogLevel(StrEnum):
    """``--log-level``."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    """``--log-format``."""

    text = "text"
    json = "json"


class FedinfraGroup(TyperGroup):
    """The root group: applies the CLI contract (:func:`harden_tree`) to every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        harden_tree(self)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedinfra {__version__}")
        raise typer.Exit(0)


def build_app() -> typer.Typer:
    """Assemble the typer application from the sub-command modules."""
    from fedinfra.cli import demo

    app = typer.Typer(
        name="fedinfra",
        cls=FedinfraGroup,
        context_settings={"help_option_names": ["-h", "--help"]},
        help="Privacy-preserving federated learning: DP, HE, tamper-evident audit, policy gates.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
        log_level: LogLevel = typer.Option(LogLevel.warning, "--log-level", help="Level of fedinfra's log records."),
        log_format: LogFormat = typer.Option(
            LogFormat.text, "--log-format", help="text, or json (one object per line, for services)."
        ),
    ) -> None:
        """Fedinfra: federated learning with DP, HE, audit and policy gates."""
        state.debug = debug
        configure_logging(log_level.value, log_format.value)

    demo.register(app)
    __import__("fedinfra.cli.privacy", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.keys", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.app", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.audit", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.edge", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.server", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.client", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.run", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.simulate", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.new", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.model", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.compliance", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.runs", fromlist=["register"]).register(app)
    return app


def invoke(argv: Sequence[str] | None = None, command: click.Command | None = None) -> int:
    """Run the command line ``argv`` and return its exit code; never raises (the contract).

    ``--debug`` and ``--format json`` are read from the whole command line first, so that a
    usage error found before any command runs is reported the way the user asked.
    ``command`` reuses a tree built once (``typer.main.get_command(build_app())``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    state.debug = "--debug" in args
    state.json_errors = wants_json(args)
    try:
        if command is None:
            command = typer.main.get_command(build_app())
        rc = command.main(args, prog_name="fedinfra", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except (Exception, KeyboardInterrupt) as exc:
        return handle_uncaught(exc)
    return rc if isinstance(rc, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(invoke())
