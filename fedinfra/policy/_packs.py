"""Policy packs: TOML files of rules, validated by pydantic, hashed with SHA-256.

A pack is data, not code. Each rule names a registered check (:mod:`._registry`), its
parameters (validated by the check's own model when the pack loads), the gate it runs at,
its severity, its legal citation and the evidence it records. The SHA-256 of the exact
pack bytes goes to the audit log with every evaluation, so an auditor can tell which
version of a rule decided.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from fedinfra.config._load import StrictModel, describe_validation_error
from fedinfra.errors import ConfigError
from fedinfra.policy import _checks  # noqa: F401  (registers the checks)
from fedinfra.policy._facts import EVIDENCE
from fedinfra.policy._registry import get_check, registered_checks

Gate = Literal["job", "site", "round", "close"]
Severity = Literal["block", "warn"]
Sector = Literal["health", "finance", "device"]
#: The packs shipped with fedinfra (``compliance/packs/<name>.toml``).
BUILTIN_PACKS = ("gdpr", "hipaa", "pci-dss", "glba", "eu-ai-act")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class RuleSpec(StrictModel):
    """One rule of a pack, as written in TOML."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$", description="unique id, e.g. hipaa.transmission-security")
    title: str = Field(min_length=1)
    citation: str = Field(min_length=3, description="article or CFR section the rule enforces")
    gate: Gate
    check: str
    params: dict[str, Any] = Field(default_factory=dict)
    severity: Severity = "block"
    sectors: list[Sector] = Field(default_factory=list, description="data sectors it applies to; empty = all")
    evidence: list[str] = Field(default_factory=list, description="facts recorded with the finding")

    @field_validator("check")
    @classmethod
    def _known_check(cls, value: str) -> str:
        try:
            get_check(value)
        except KeyError:
            raise ValueError(f"unknown check {value!r}; registered checks: {', '.join(registered_checks())}") from None
        return value

    @field_validator("evidence")
    @classmethod
    def _known_evidence(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in EVIDENCE]
        if unknown:
            raise ValueError(f"unknown evidence {unknown}; known: {', '.join(sorted(EVIDENCE))}")
        return value


class PackSpec(StrictModel):
    """A pack file: metadata plus rules."""

    name: str = Field(pattern=_NAME.pattern)
    title: str = Field(min_length=1)
    version: str = Field(min_length=1)
    regulation: str = Field(min_length=1, description="the instrument, e.g. 45 CFR Parts 160 and 164")
    source: str = Field(min_length=1, description="where the text of the regulation is published")
    rules: list[RuleSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> PackSpec:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        return self


@dataclass(frozen=True)
class Rule:
    """A loaded rule: its spec plus validated parameters."""

    spec: RuleSpec
    params: BaseModel

    @property
    def id(self) -> str:
        """The rule id."""
        return self.spec.id


@dataclass(frozen=True)
class Pack:
    """A loaded, validated pack and the SHA-256 of its bytes."""

    name: str
    title: str
    version: str
    regulation: str
    sha256: str
    rules: tuple[Rule, ...]


def parse_pack(data: bytes, source: str) -> Pack:
    """Validate pack bytes; every error names ``source`` and the field."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: invalid TOML ({exc}); fix the syntax") from exc
    try:
        spec = PackSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from exc
    rules = []
    for i, rule in enumerate(spec.rules):
        model = get_check(rule.check).params
        try:
            params = model.model_validate(rule.params)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, f"{source}: rules.{i}.params ({rule.id})")) from exc
        rules.append(Rule(spec=rule, params=params))
    return Pack(
        name=spec.name,
        title=spec.title,
        version=spec.version,
        regulation=spec.regulation,
        sha256=hashlib.sha256(data).hexdigest(),
        rules=tuple(rules),
    )


def load_pack_file(path: Path | str) -> Pack:
    """Load a pack from a TOML file (a consortium's own pack)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read policy pack ({exc}); check the path") from exc
    return parse_pack(data, str(p))


def load_packs(names: Iterable[str]) -> list[Pack]:
    """Load shipped packs by name (``gdpr``, ``hipaa``, ``pci-dss``, ``glba``, ``eu-ai-act``).

    A name ending in ``.toml`` is read as a file path instead. Duplicates load once.
    """
    packs: list[Pack] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        if name.endswith(".toml"):
            packs.append(load_pack_file(name))
            continue
        if name not in BUILTIN_PACKS:
            raise ConfigError(
                f"policy pack {name!r} does not exist; choose from {', '.join(BUILTIN_PACKS)} or give a .toml path"
            )
        ref = resources.files("fedinfra._compliance") / "packs" / f"{name}.toml"
        packs.append(parse_pack(ref.read_bytes(), f"compliance/packs/{name}.toml"))
    return packs
