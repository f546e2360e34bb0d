"""The ``fedinfra`` command line (layer L6): the only place that maps errors to exit codes.

Sub-commands live in sibling modules, each exposing a ``register(app)`` function or a
``typer.Typer`` named ``app``; they are registered in :func:`build_app`.
"""

from __future__ import annotations

import sys

import typer

from fedinfra import __version__
from fedinfra.cli._common import EXIT_BAD_INPUT, err_console, state


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedinfra {__version__}")
        raise typer.Exit(0)


def build_app() -> typer.Typer:
    """Assemble the typer application from the sub-command modules."""
    from fedinfra.cli import demo

    app = typer.Typer(
        name="fedinfra",
        help="Privacy-preserving federated learning: DP, HE, tamper-evident audit, policy gates.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    ) -> None:
        """Fedinfra: federated learning with DP, HE, audit and policy gates."""
        state.debug = debug

    demo.register(app)
    __import__("fedinfra.cli.privacy", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.keys", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.audit", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.edge", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.server", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.client", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.run", fromlist=["register"]).register(app)
    __import__("fedinfra.cli.compliance", fromlist=["register"]).register(app)
    return app


def main() -> None:
    """Console-script entry point."""
    from click.exceptions import Abort, ClickException

    app = build_app()
    try:
        rc = app(standalone_mode=False)
    except ClickException as exc:  # usage errors, bad option values
        err_console.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_BAD_INPUT)
    except Abort:
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
