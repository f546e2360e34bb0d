"""Shared CLI plumbing: output format, error mapping and exit codes.

Exit codes (DESIGN.md): 0 success / all checks hold, 1 a check failed (verification,
policy, scan, budget), 2 bad input or usage. Errors are one line that says what to do;
tracebacks only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from fedinfra.errors import FedinfraError

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class OutputFormat(StrEnum):
    """How a command prints its result."""

    text = "text"
    json = "json"


class _State:
    debug: bool = False


state = _State()


def print_json(payload: Any) -> None:
    """Print ``payload`` as stable, sorted JSON on stdout."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print a one-line error and exit with ``code``.

    The message is printed verbatim (markup escaped): ``pip install 'fedinfra[server]'`` and
    ``[audit] vkey`` must not be read as rich markup.
    """
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; map fedinfra errors to one line + exit code (traceback with --debug)."""
    try:
        return fn()
    except FedinfraError as exc:
        if state.debug:
            raise
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
