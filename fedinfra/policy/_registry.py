"""The check registry: policy rules name a check, checks register by name.

A pack never carries code: each rule names a registered check and gives its parameters,
which the check's own pydantic model validates when the pack loads (so a typo in a pack is
a load-time error, not a silent skip at run time). This follows the registry pattern of
Opacus ``accountants/registry.py`` instead of an if-chain over rule kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from fedinfra.policy._facts import Facts


class NoParams(BaseModel):
    """Parameters of a check that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Params(BaseModel):
    """Base of check parameter models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Outcome:
    """What a check concludes.

    ``ok`` is ``True`` (holds), ``False`` (violated) or ``None`` (a human must decide:
    the finding becomes ``manual``). ``evidence`` holds computed, non-personal values.
    """

    ok: bool | None
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


P = TypeVar("P", bound=BaseModel)
CheckFn = Callable[[Any, Facts], Outcome]


@dataclass(frozen=True)
class CheckDef:
    """A registered check: its name, parameter model and function."""

    name: str
    params: type[BaseModel]
    fn: CheckFn
    summary: str


_REGISTRY: dict[str, CheckDef] = {}


def register_check(
    name: str, params: type[P]
) -> Callable[[Callable[[P, Facts], Outcome]], Callable[[P, Facts], Outcome]]:
    """Register the decorated function as check ``name`` taking ``params``."""

    def wrap(fn: Callable[[P, Facts], Outcome]) -> Callable[[P, Facts], Outcome]:
        if name in _REGISTRY:
            raise ValueError(f"check {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = CheckDef(name=name, params=params, fn=fn, summary=doc[0] if doc else "")
        return fn

    return wrap


def get_check(name: str) -> CheckDef:
    """Return the check registered as ``name``; ``KeyError`` if there is none."""
    return _REGISTRY[name]


def registered_checks() -> list[str]:
    """Names of every registered check, sorted."""
    return sorted(_REGISTRY)
