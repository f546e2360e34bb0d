"""Dated reference data shipped in ``compliance/reference/`` (the wheel's ``fedinfra._compliance``).

Every file names its source and an ``as_of`` date; checks put that date in their evidence
so an auditor sees which version of the list a decision relied on.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from fedinfra.errors import ConfigError


def _read(name: str) -> dict[str, Any]:
    ref = resources.files("fedinfra._compliance") / "reference" / name
    try:
        return tomllib.loads(ref.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"compliance/reference/{name}: cannot read reference data ({exc}); reinstall fedinfra"
        ) from exc


@dataclass(frozen=True)
class Adequacy:
    """One adequacy decision (GDPR Art. 45)."""

    code: str
    decision: str
    scope: str
    covered: str | None
    valid_until: dt.date | None


@dataclass(frozen=True)
class AdequacyList:
    """The Commission's adequacy decisions as of a date."""

    as_of: dt.date
    source: str
    countries: dict[str, Adequacy]


@lru_cache(maxsize=1)
def adequacy_list() -> AdequacyList:
    """Countries with an adequacy decision (``compliance/reference/adequacy.toml``)."""
    raw = _read("adequacy.toml")
    countries = {
        c["code"]: Adequacy(
            code=c["code"],
            decision=c["decision"],
            scope=c["scope"],
            covered=c.get("covered"),
            valid_until=c.get("valid_until"),
        )
        for c in raw["country"]
    }
    return AdequacyList(as_of=raw["as_of"], source=raw["source"], countries=countries)


@lru_cache(maxsize=1)
def eea_members() -> tuple[dt.date, frozenset[str]]:
    """``(as_of, codes)`` of the EEA member states (``compliance/reference/eea.toml``)."""
    raw = _read("eea.toml")
    return raw["as_of"], frozenset(raw["eu"]) | frozenset(raw["efta_eea"])


@lru_cache(maxsize=1)
def restricted_zip3() -> tuple[dt.date, frozenset[str]]:
    """``(as_of, prefixes)`` of ZIP3 areas of 20,000 people or fewer (45 CFR 164.514(b)(2)(i)(B))."""
    raw = _read("restricted-zip3.toml")
    return raw["as_of"], frozenset(raw["prefixes"])
