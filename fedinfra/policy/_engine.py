"""Evaluate packs at a gate into findings; fail closed.

Status of a finding:

* ``pass`` - the check holds;
* ``fail`` - it does not and the rule's severity is ``block`` (blocking), or the check
  raised (always blocking: an error never becomes a skip), or a fact it needs is unknown
  at an online gate;
* ``warn`` - it does not hold and the rule's severity is ``warn``;
* ``manual`` - a human must decide, or (offline preflight only) the fact is known only
  to the coordinator, which checks it at job admission.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedinfra.config import JobSpec, SiteManifest
from fedinfra.errors import PolicyViolation
from fedinfra.policy._facts import EvidenceUnavailable, Facts, JobFacts, collect_evidence
from fedinfra.policy._packs import Gate, Pack, Rule, load_packs
from fedinfra.policy._registry import get_check
from fedinfra.policy.scan import ScanSummary, scan_site_data

Status = Literal["pass", "fail", "warn", "manual"]
GATES: tuple[Gate, ...] = ("job", "site", "round", "close")
#: Packs a site applies to itself when its manifest names none.
SECTOR_PACKS: dict[str, tuple[str, ...]] = {
    "health": ("gdpr", "hipaa"),
    "finance": ("gdpr", "pci-dss", "glba"),
    "device": ("gdpr",),
}


@dataclass(frozen=True)
class Finding:
    """The result of one rule at one gate (JSON-serialisable via :meth:`to_dict`)."""

    rule_id: str
    pack: str
    title: str
    citation: str
    gate: Gate
    severity: str
    status: Status
    blocking: bool
    message: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (stable keys)."""
        return {
            "rule_id": self.rule_id,
            "pack": self.pack,
            "title": self.title,
            "citation": self.citation,
            "gate": self.gate,
            "severity": self.severity,
            "status": self.status,
            "blocking": self.blocking,
            "message": self.message,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class Evaluation:
    """All findings of one or more gates, with the SHA-256 of every pack used."""

    gates: tuple[Gate, ...]
    findings: tuple[Finding, ...]
    pack_hashes: dict[str, str]
    not_applicable: tuple[str, ...] = ()

    @property
    def blocking(self) -> list[Finding]:
        """Findings that deny the action (fail closed)."""
        return [f for f in self.findings if f.blocking]

    @property
    def passed(self) -> bool:
        """``True`` when no finding blocks."""
        return not self.blocking

    def counts(self) -> dict[str, int]:
        """Number of findings per status."""
        out = {"pass": 0, "fail": 0, "warn": 0, "manual": 0}
        for f in self.findings:
            out[f.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``policy.evaluated`` audit payload: gates, pack hashes, findings, verdict."""
        return {
            "gates": list(self.gates),
            "packs": dict(sorted(self.pack_hashes.items())),
            "passed": self.passed,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
            "not_applicable": list(self.not_applicable),
        }

    def reason(self) -> str:
        """One line naming the blocking rules (empty when passed)."""
        return "; ".join(f"{f.rule_id} ({f.citation}): {f.message}" for f in self.blocking)

    def raise_if_blocked(self) -> None:
        """Raise :class:`PolicyViolation` with :meth:`reason` when a finding blocks."""
        if not self.passed:
            raise PolicyViolation(f"policy gate {'/'.join(self.gates)} denied: {self.reason()}")

    def merge(self, other: Evaluation) -> Evaluation:
        """Combine two evaluations (e.g. job and site gates of a preflight)."""
        return Evaluation(
            gates=tuple(dict.fromkeys(self.gates + other.gates)),
            findings=self.findings + other.findings,
            pack_hashes={**self.pack_hashes, **other.pack_hashes},
            not_applicable=self.not_applicable + other.not_applicable,
        )


def _sector(gate: Gate, facts: Facts) -> str:
    if gate == "site" and facts.site is not None:
        return facts.site.sector
    return facts.job.sector


def _run(pack: Pack, rule: Rule, gate: Gate, facts: Facts) -> Finding:
    spec = rule.spec
    evidence = collect_evidence(spec.evidence, facts)
    blocking_sev = spec.severity == "block"
    try:
        outcome = get_check(spec.check).fn(rule.params, facts)
    except EvidenceUnavailable as exc:
        if facts.offline:
            status: Status = "manual"
            message = f"not checkable offline ({exc}); checked again at admission"
            blocking = False
        else:
            status, message, blocking = "fail", f"evidence missing: {exc}", True
    except Exception as exc:  # fail closed: a broken check denies, it never skips
        status, message, blocking = "fail", f"check '{spec.check}' raised {type(exc).__name__}: {exc}", True
    else:
        evidence.update(outcome.evidence)
        message = outcome.message
        if outcome.ok is None:
            status, blocking = "manual", False
        elif outcome.ok:
            status, blocking = "pass", False
        else:
            status, blocking = ("fail", True) if blocking_sev else ("warn", False)
    return Finding(
        rule_id=spec.id,
        pack=pack.name,
        title=spec.title,
        citation=spec.citation,
        gate=gate,
        severity=spec.severity,
        status=status,
        blocking=blocking,
        message=message,
        evidence=evidence,
    )


def evaluate(packs: Iterable[Pack], gate: Gate, facts: Facts) -> Evaluation:
    """Run every rule of ``packs`` that belongs to ``gate`` against ``facts``.

    Rules restricted to other sectors are listed in ``not_applicable``, not evaluated.
    """
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}; one of {GATES}")
    sector = _sector(gate, facts)
    findings: list[Finding] = []
    skipped: list[str] = []
    hashes: dict[str, str] = {}
    for pack in packs:
        hashes[pack.name] = pack.sha256
        for rule in pack.rules:
            if rule.spec.gate != gate:
                continue
            if rule.spec.sectors and sector not in rule.spec.sectors:
                skipped.append(rule.id)
                continue
            findings.append(_run(pack, rule, gate, facts))
    return Evaluation(gates=(gate,), findings=tuple(findings), pack_hashes=hashes, not_applicable=tuple(skipped))


def site_packs(site: SiteManifest, job: JobSpec) -> list[str]:
    """Packs a site applies to itself: its own (or its sector's) plus the job's."""
    own = site.policy_packs or list(SECTOR_PACKS[site.sector])
    return list(dict.fromkeys([*own, *job.policy_packs]))


def preflight(
    site: SiteManifest,
    job: JobSpec,
    data_path: Path | str | None = None,
    *,
    scan: ScanSummary | None = None,
    packs: list[Pack] | None = None,
    tls: bool | None = None,
    audit_enabled: bool | None = None,
    audit_retention_days: int | None = None,
    site_epsilon_spent: float | None = None,
    today: dt.date | None = None,
) -> Evaluation:
    """A site's own check of a job before it trains: job and site gates, offline.

    Scans the site's data (``data_path`` or the manifest's dataset) unless ``scan`` is
    given. Facts only the coordinator knows (TLS, audit, lifetime spend) may be passed;
    left ``None`` they give ``manual`` findings, not passes.
    """
    if scan is None and (data_path is not None or site.dataset is not None):
        scan = scan_site_data(site, data_path)
    chosen = packs if packs is not None else load_packs(site_packs(site, job))
    facts = Facts(
        job=JobFacts(spec=job, tls=tls, audit_enabled=audit_enabled, audit_retention_days=audit_retention_days),
        site=site,
        scan=scan,
        site_epsilon_spent=site_epsilon_spent,
        today=today or dt.datetime.now(dt.UTC).date(),
        offline=True,
    )
    return evaluate(chosen, "job", facts).merge(evaluate(chosen, "site", facts))
