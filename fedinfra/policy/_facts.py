"""Typed facts a gate is evaluated on, and the named evidence a rule may record.

Facts are what the caller knows at a gate: the job (always), a site's manifest and scan
summary (site gate), the round's participation and spend (round gate), the run's final
state (close gate). A fact that is ``None`` is *unknown*: a check that needs it raises
:class:`EvidenceUnavailable`, which the engine turns into a failing finding (fail closed)
or, in an offline preflight, into a ``manual`` finding that says who checks it later.

Evidence names (``job.tls``, ``site.jurisdiction`` ...) are a closed vocabulary: a pack
that asks for an unknown name is rejected when it loads. Every value is a number, a
boolean, a short code or a list of codes - never a cell value or a contact detail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedinfra.config import JobSpec, SiteManifest
from fedinfra.policy.scan import ScanSummary

#: Job scenario -> data sector, so job-gate rules know whether health data is involved.
SCENARIO_SECTOR: dict[str, str] = {"hospital": "health", "bank": "finance", "edge": "device"}


class EvidenceUnavailable(LookupError):
    """A fact a check needs is unknown at this gate."""


@dataclass(frozen=True)
class JobFacts:
    """The job plus the deployment facts only the caller knows (TLS, audit)."""

    spec: JobSpec
    tls: bool | None = None
    #: ``True`` for an in-process simulation: coordinator and sites share one process tree
    #: on loopback and no update crosses a network link that TLS could protect.
    in_process: bool = False
    audit_enabled: bool | None = None
    audit_retention_days: int | None = None

    @property
    def sector(self) -> str:
        """The data sector of the job's scenario."""
        return SCENARIO_SECTOR[self.spec.scenario]


@dataclass(frozen=True)
class RoundFacts:
    """What the coordinator knows before (or after) aggregating one round."""

    round: int
    participants: int
    epsilon_spent: float | None = None
    audit_verified: bool | None = None


@dataclass(frozen=True)
class CloseFacts:
    """What the coordinator knows when the run closes."""

    rounds_completed: int
    epsilon_spent: float | None = None
    audit_verified: bool | None = None


@dataclass(frozen=True)
class Facts:
    """Everything a gate may look at; unknown parts are ``None``.

    ``site_epsilon_spent`` is the site's lifetime spend before this job (from its ledger).
    ``offline`` marks a preflight that cannot know coordinator-side facts.
    """

    job: JobFacts
    site: SiteManifest | None = None
    scan: ScanSummary | None = None
    round: RoundFacts | None = None
    close: CloseFacts | None = None
    site_epsilon_spent: float | None = None
    today: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    offline: bool = False

    def need_site(self) -> SiteManifest:
        """The site manifest, or :class:`EvidenceUnavailable`."""
        if self.site is None:
            raise EvidenceUnavailable("no site manifest at this gate")
        return self.site

    def need_scan(self) -> ScanSummary:
        """The PHI/PII scan summary, or :class:`EvidenceUnavailable`."""
        if self.scan is None:
            raise EvidenceUnavailable("no PHI/PII scan summary; run the site scan first")
        return self.scan

    def need_round(self) -> RoundFacts:
        """The round facts, or :class:`EvidenceUnavailable`."""
        if self.round is None:
            raise EvidenceUnavailable("no round facts at this gate")
        return self.round

    def need_close(self) -> CloseFacts:
        """The close facts, or :class:`EvidenceUnavailable`."""
        if self.close is None:
            raise EvidenceUnavailable("no close facts at this gate")
        return self.close


def need(value: Any, what: str) -> Any:
    """Return ``value`` or raise :class:`EvidenceUnavailable` naming ``what``."""
    if value is None:
        raise EvidenceUnavailable(f"{what} is not known")
    return value


def _flagged_columns(f: Facts) -> list[str]:
    return [c.column for c in f.need_scan().flagged]


#: The closed vocabulary of evidence names a rule may list (``evidence = [...]``).
EVIDENCE: dict[str, Callable[[Facts], Any]] = {
    "job.name": lambda f: f.job.spec.name,
    "job.scenario": lambda f: f.job.spec.scenario,
    "job.purpose": lambda f: f.job.spec.purpose,
    "job.privacy.mechanism": lambda f: f.job.spec.privacy.mechanism,
    "job.privacy.epsilon": lambda f: f.job.spec.privacy.epsilon,
    "job.privacy.delta": lambda f: f.job.spec.privacy.delta,
    "job.secure_aggregation.mode": lambda f: f.job.spec.secure_aggregation.mode,
    "job.sites.min_sites": lambda f: f.job.spec.sites.min_sites,
    "job.sites.count": lambda f: f.job.spec.sites.count,
    "job.tls": lambda f: f.job.tls,
    "job.audit_enabled": lambda f: f.job.audit_enabled,
    "job.audit_retention_days": lambda f: f.job.audit_retention_days,
    "site.name": lambda f: f.need_site().name,
    "site.role": lambda f: f.need_site().role,
    "site.jurisdiction": lambda f: f.need_site().jurisdiction,
    "site.sector": lambda f: f.need_site().sector,
    "site.lawful_basis": lambda f: f.need_site().lawful_basis,
    "site.art9_condition": lambda f: f.need_site().art9_condition,
    "site.purposes": lambda f: list(f.need_site().purposes),
    "site.consent.reference": lambda f: c.reference if (c := f.need_site().consent) else None,
    "site.consent.status": lambda f: c.status if (c := f.need_site().consent) else None,
    "site.data_categories": lambda f: list(f.need_site().data_categories),
    "site.retention_days": lambda f: f.need_site().retention_days,
    "site.dpia.reference": lambda f: d.reference if (d := f.need_site().dpia) else None,
    "site.dpia.sha256": lambda f: d.sha256 if (d := f.need_site().dpia) else None,
    "site.dpia.date": lambda f: d.date.isoformat() if (d := f.need_site().dpia) else None,
    "site.agreements": lambda f: [f"{a.kind}:{a.reference}" for a in f.need_site().agreements],
    "site.transfer_safeguard": lambda f: f.need_site().transfer_safeguard,
    "site.dpo_declared": lambda f: f.need_site().dpo is not None,
    "site.budget.epsilon_per_run": lambda f: f.need_site().budget.epsilon_per_run,
    "site.budget.epsilon_lifetime": lambda f: f.need_site().budget.epsilon_lifetime,
    "site.epsilon_spent": lambda f: f.site_epsilon_spent,
    "site.feature_columns": lambda f: list(d.feature_columns) if (d := f.need_site().dataset) else None,
    "scan.flagged_columns": _flagged_columns,
    "scan.rows_scanned": lambda f: f.need_scan().rows_scanned,
    "scan.k_anonymity": lambda f: f.need_scan().k_anonymity,
    "scan.quasi_identifiers": lambda f: list(f.need_scan().quasi_identifiers),
    "round.number": lambda f: f.need_round().round,
    "round.participants": lambda f: f.need_round().participants,
    "round.epsilon_spent": lambda f: f.need_round().epsilon_spent,
    "round.audit_verified": lambda f: f.need_round().audit_verified,
    "close.rounds_completed": lambda f: f.need_close().rounds_completed,
    "close.epsilon_spent": lambda f: f.need_close().epsilon_spent,
    "close.audit_verified": lambda f: f.need_close().audit_verified,
}


def collect_evidence(names: list[str], facts: Facts) -> dict[str, Any]:
    """Resolve evidence ``names`` against ``facts``; an unknown fact is recorded as ``None``."""
    out: dict[str, Any] = {}
    for name in names:
        try:
            out[name] = EVIDENCE[name](facts)
        except EvidenceUnavailable:
            out[name] = None
    return out
