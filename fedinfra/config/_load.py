"""Load TOML files into pydantic models with one-line, actionable errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fedinfra.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every configuration model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """Render the first error of ``exc`` as one line naming ``source`` and the field."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling"
    got = first.get("input")
    # Only a short scalar is echoed: a whole table (or a model's repr) is noise, and may
    # carry values the user did not mean to print.
    scalar = isinstance(got, str | int | float | bool) and len(repr(got)) <= 80
    shown = "" if first["type"] in ("missing", "extra_forbidden") or not scalar else f" (got {got!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: field '{loc}': {msg}{shown}{more}"


def parse_model(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate ``data`` as ``model``; raise :class:`ConfigError` naming ``source``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from exc


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file raises :class:`ConfigError`."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found; check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read file ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the syntax") from exc


def load_model(model: type[M], path: Path | str) -> M:
    """Read ``path`` as TOML and validate it as ``model``; an empty file is refused.

    Every field has a default only so that a file may omit it, not so that a blank or
    truncated file silently becomes a valid configuration (fail closed).
    """
    p = Path(path)
    data = read_toml(p)
    if not data:
        raise ConfigError(f"{p}: the file is empty; declare the {model.__name__} settings (see the examples)")
    return parse_model(model, data, str(p))
