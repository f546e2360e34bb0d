"""Shared CLI plumbing: output format, error mapping, exit codes and the parameter contract.

Exit codes (DESIGN.md): 0 success / all checks hold, 1 a check failed (verification,
policy, scan, budget), 2 bad input or usage. Errors are one line that says what to do;
``--debug`` adds the traceback but never changes the exit code. When the command line asks
for ``--format json`` the error is also printed as ``{"error": ..., "exit_code": ...}`` on
stdout, so a script that parses stdout never reads an empty string.

:func:`harden_tree` applies the contract to every command of the click tree - including
commands other modules add later - so a new command cannot forget it: numbers must be finite,
strings non-empty, and a path cannot lie under a regular file.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
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
EXIT_INTERRUPTED = 130


class OutputFormat(StrEnum):
    """How a command prints its result."""

    text = "text"
    json = "json"


class _State:
    debug: bool = False
    json_errors: bool = False


state = _State()


def wants_json(args: Sequence[str]) -> bool:
    """Whether a command line asks for JSON output (``--format json`` / ``--output json``)."""
    for i, arg in enumerate(args):
        if arg in ("--format=json", "--output=json"):
            return True
        if arg in ("--format", "--output") and i + 1 < len(args) and args[i + 1] == "json":
            return True
    return False


def print_json(payload: Any) -> None:
    """Print ``payload`` as stable, sorted JSON on stdout."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def one_line(message: str) -> str:
    """Collapse ``message`` to one line (an error is one line, DESIGN.md)."""
    return " ".join(message.split()) or "unknown error; rerun with --debug"


def report_error(message: str, code: int) -> None:
    """Print the one-line error (and the JSON error object when JSON output was asked for)."""
    line = one_line(message)
    if state.json_errors:
        print_json({"error": line, "exit_code": code})
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print a one-line error and exit with ``code``.

    The message is printed verbatim (markup escaped): ``pip install 'fedinfra[server]'`` and
    ``[audit] vkey`` must not be read as rich markup.
    """
    report_error(message, code)
    raise typer.Exit(code)


def _traceback() -> None:
    if state.debug:
        sys.stderr.write(traceback.format_exc())


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system error: the path, the reason, what to do."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = (exc.strerror or type(exc).__name__).lower()
    return f"{where}: {reason}; check the path and its permissions"


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; map fedinfra and file-system errors to one line + exit code.

    ``--debug`` prints the traceback first; the exit code stays the same.
    """
    try:
        return fn()
    except FedinfraError as exc:
        _traceback()
        fail(str(exc), exc.exit_code)
    except OSError as exc:  # a path given on the command line cannot be read or written
        _traceback()
        fail(describe_os_error(exc), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)


# --- logging: the standard module, text for people, JSON lines for services ------------------

LOG_LEVELS = ("debug", "info", "warning", "error")
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC), ``level``, ``logger``, ``message`` and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")})
        if record.exc_info and state.debug:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=True, default=str)


def configure_logging(level: str = "warning", fmt: str = "text") -> logging.Logger:
    """Route the ``fedinfra`` loggers to stderr at ``level``, as text or JSON lines."""
    if level not in LOG_LEVELS:
        raise typer.BadParameter(f"{level!r} is not one of {', '.join(LOG_LEVELS)}", param_hint="'--log-level'")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLogFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("fedinfra")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return root


# --- the parameter contract, applied to the whole click tree ---------------------------------


def positive(param: typer.CallbackParam, value: float | None) -> float | None:
    """Option callback: a number greater than 0."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{param.name} must be greater than 0 (got {value:g})")
    return value


def open_unit(param: typer.CallbackParam, value: float | None) -> float | None:
    """Option callback: a number in (0, 1) (a delta)."""
    if value is not None and not 0 < value < 1:
        raise typer.BadParameter(f"{param.name} must be in (0, 1) (got {value:g})")
    return value


def rate(param: typer.CallbackParam, value: float | None) -> float | None:
    """Option callback: a rate in (0, 1] (a sampling rate)."""
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"{param.name} must be in (0, 1] (got {value:g})")
    return value


def host_port(value: str | None) -> str | None:
    """Option callback: ``host:port`` or nothing (``--superlink``, ``--server``)."""
    if value is None:
        return None
    from fedinfra.config.consortium import split_address

    try:
        split_address(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return value


def start_preflight(manifest: Path) -> Any:
    """A site's or device's preflight before it starts: the same outcome for both.

    Identifiers in training columns (HIPAA Safe Harbor, 45 CFR 164.514(b)(2)) stop the
    start with exit 2: the data or its declaration is bad input that no restart can fix
    (the service units do not restart on 2). ``compliance scan`` reports the same finding
    as a failed check (exit 1).
    """
    from fedinfra.errors import ConfigError, PolicyViolation
    from fedinfra.runtime.preflight import preflight

    try:
        return preflight(manifest)
    except PolicyViolation as exc:
        raise ConfigError(f"{exc}; fix the data or {manifest.name}, then start again") from exc


def _finite(convert: Callable[..., Any]) -> Callable[..., Any]:
    def check(value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = convert(value, param, ctx)
        if isinstance(out, float) and not math.isfinite(out):
            raise click.BadParameter(f"{value!s} is not a finite number", ctx=ctx, param=param)
        return out

    return check


def _non_empty(convert: Callable[..., Any]) -> Callable[..., Any]:
    def check(value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = convert(value, param, ctx)
        if isinstance(out, str) and not out.strip():
            raise click.BadParameter("must not be empty", ctx=ctx, param=param)
        return out

    return check


def _path_not_under_file(convert: Callable[..., Any]) -> Callable[..., Any]:
    def check(value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = convert(value, param, ctx)
        text = str(out)
        if not text.strip():
            raise click.BadParameter("must not be empty", ctx=ctx, param=param)
        if "://" not in text:  # a database URL is not a path
            for parent in Path(text).parents:
                if parent.exists() and not parent.is_dir():
                    raise click.BadParameter(
                        f"{text}: {parent} is a file, not a directory; give another path", ctx=ctx, param=param
                    )
        return out

    return check


def _harden_param(param: click.Parameter) -> None:
    kind = param.type
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None
    if isinstance(kind, click.types.FloatParamType):
        wrap = _finite
    elif isinstance(kind, click.types.StringParamType):
        wrap = _non_empty
    elif isinstance(kind, click.Path):
        wrap = _path_not_under_file
    if wrap is None or getattr(kind, "_fedinfra_hardened", False):
        return
    hardened = copy.copy(kind)  # click shares one FLOAT / STRING instance between parameters
    hardened.convert = wrap(kind.convert)  # type: ignore[method-assign]
    hardened._fedinfra_hardened = True  # type: ignore[attr-defined]
    param.type = hardened


def harden_tree(command: click.Command) -> click.Command:
    """Apply the CLI contract to ``command`` and every sub-command (idempotent).

    ``-h`` is accepted wherever ``--help`` is; the typo suggestion is click's alone (typer
    adds a second "Did you mean"); every float must be finite, every string non-empty, and
    no path may lie under a regular file (``--out FILE/x`` is refused before anything runs).
    """
    command.context_settings.setdefault("help_option_names", ["-h", "--help"])
    if hasattr(command, "suggest_commands"):
        command.suggest_commands = False
    for param in command.params:
        _harden_param(param)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            harden_tree(sub)
    return command


def walk(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every leaf command of the tree with its name path (for the contract test and ``--help``)."""
    if isinstance(command, click.Group):
        out: list[tuple[tuple[str, ...], click.Command]] = []
        for name, sub in sorted(command.commands.items()):
            out.extend(walk(sub, (*path, name)))
        return out
    return [(path, command)]


def handle_uncaught(exc: BaseException) -> int:
    """Map an exception that escaped a command to the contract (one line, exit code)."""
    from click.exceptions import Abort, ClickException, NoArgsIsHelpError

    if isinstance(exc, NoArgsIsHelpError):
        help_text = exc.format_message()
        if help_text.strip():
            sys.stdout.write(help_text + "\n")
        name = exc.ctx.command_path if exc.ctx is not None else "fedinfra"
        report_error(f"{name}: a command is required; pick one above or run '{name} --help'", EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    if isinstance(exc, ClickException):
        report_error(exc.format_message(), EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    if isinstance(exc, Abort | KeyboardInterrupt):
        report_error("interrupted", EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    _traceback()
    if isinstance(exc, FedinfraError):
        report_error(str(exc), exc.exit_code)
        return exc.exit_code
    if isinstance(exc, OSError):
        report_error(describe_os_error(exc), EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    report_error(
        f"internal error ({type(exc).__name__}); rerun with --debug for the traceback and report it",
        EXIT_CHECK_FAILED,
    )
    return EXIT_CHECK_FAILED
