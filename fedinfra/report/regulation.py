"""The regulation-shaped sections of a report: GDPR Art. 30, HIPAA 164.312, PCI DSS 10.

Each table row names the requirement, the control fedinfra applies, the evidence found in
the audit log (by sequence number where it is one entry) and a status. The status is
``met`` only when the log shows the control; a failing policy finding whose citation
names the requirement makes it ``not met``; what only a person can judge is ``manual``.

Sources: Regulation (EU) 2016/679 Art. 30(1)(a)-(g), Art. 44-46; 45 CFR 164.312(a)-(e),
164.316(b)(2); PCI DSS v4.0.1 requirement 10.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from fedinfra.config import SiteManifest
from fedinfra.config.site import ART9_POINT, LAWFUL_BASIS_POINT
from fedinfra.report.model import Art30Field, Controls, Finding, Header, ManualEvidence, Retention, TableRow
from fedinfra.report.records import AuditRecord, VerifiedLog

#: 45 CFR 164.316(b)(2)(i): documentation kept six years - 2192 days, since six years
#: hold up to two leap days (the hipaa pack's ``hipaa.documentation-retention`` rule uses
#: the same figure); PCI DSS v4.0.1 10.5.1: 12 months.
RETENTION_RULES: dict[str, tuple[int, str]] = {
    "hipaa": (2192, "45 CFR 164.316(b)(2)(i) (6 years)"),
    "pci-dss": (365, "PCI DSS v4.0.1 10.5.1 (12 months)"),
}

LIMITATIONS = [
    "Automated checks are not legal advice: they show that declared facts and recorded events meet "
    "the rules of the policy packs, not that the processing is lawful.",
    "Declarations by sites (lawful basis, consent, DPIA, agreements) are reported as attested by the "
    "site; fedinfra does not inspect the documents, only their references and hashes.",
    "Differential-privacy figures are the accountant's upper bounds for the stated mechanism and "
    "parameters; they assume the sites ran the configured mechanism.",
    "The report covers this run's entries up to the cited checkpoint; entries appended later "
    "(including this report's own record) are outside it.",
]


@lru_cache(maxsize=1)
def _reference() -> tuple[frozenset[str], dict[str, dict[str, Any]]]:
    root = resources.files("fedinfra._compliance") / "reference"
    eea = tomllib.loads((root / "eea.toml").read_text(encoding="utf-8"))
    adequacy = tomllib.loads((root / "adequacy.toml").read_text(encoding="utf-8"))
    members = frozenset(eea.get("eu", []) + eea.get("efta_eea", []))
    return members, {c["code"]: c for c in adequacy.get("country", [])}


@dataclass(frozen=True)
class SiteView:
    """A site as the log recorded it at admission, with its manifest from configuration."""

    name: str
    record: AuditRecord
    manifest: SiteManifest | None
    admitted: bool

    def get(self, key: str) -> str | None:
        """A manifest field: from the admission entry, else from the manifest."""
        value = self.record.details.get(key)
        if value is None and self.manifest is not None:
            value = getattr(self.manifest, key, None)
        return None if value is None else str(value)

    def listed(self, key: str) -> list[str]:
        """A list field (purposes, data categories, subjects) from the entry or the manifest."""
        value = self.record.details.get(key)
        if value is None and self.manifest is not None:
            value = getattr(self.manifest, key, None)
        return [str(v) for v in value] if isinstance(value, list) else []

    def purposes(self) -> list[str]:
        """Declared purposes (GDPR Art. 5(1)(b))."""
        return self.listed("purposes")

    def consent_status(self) -> str | None:
        """Consent status where consent is a basis."""
        value = self.record.details.get("consent_status")
        if value is None and self.manifest is not None and self.manifest.consent is not None:
            value = self.manifest.consent.status
        return None if value is None else str(value)

    def consent_reference(self) -> str | None:
        """Reference of the consent record or form version."""
        value = self.record.details.get("consent_reference")
        if value is None and self.manifest is not None and self.manifest.consent is not None:
            value = self.manifest.consent.reference
        return None if value is None else str(value)

    def caps(self) -> tuple[float | None, float | None]:
        """Per-run and lifetime epsilon caps the site declared."""
        budget = self.record.details.get("budget")
        if isinstance(budget, dict):
            run, life = budget.get("epsilon_per_run"), budget.get("epsilon_lifetime")
            return (float(run) if run is not None else None, float(life) if life is not None else None)
        if self.manifest is not None:
            return self.manifest.budget.epsilon_per_run, self.manifest.budget.epsilon_lifetime
        return None, None


def transfer_basis(view: SiteView) -> str:
    """Ground for sending model updates across borders (GDPR Art. 44-46)."""
    recorded = view.record.details.get("transfer_basis")
    if recorded:
        return str(recorded)
    code = view.get("jurisdiction")
    if code is None:
        return "not recorded"
    eea, adequacy = _reference()
    if code in eea:
        return "within the EEA (no Chapter V transfer)"
    if code in adequacy:
        entry = adequacy[code]
        scope = "" if entry.get("scope") == "full" else f", partial: {entry.get('covered', 'named recipients')}"
        return f"Art. 45 adequacy ({entry.get('decision', 'Commission decision')}{scope})"
    safeguard = view.get("transfer_safeguard")
    if safeguard and safeguard != "none":
        return f"Art. 46 safeguard: {safeguard}"
    return "none declared"


def lawful_basis_text(view: SiteView) -> str | None:
    """``consent (Art. 6(1)(a))`` style text of the Art. 6 basis."""
    basis = view.get("lawful_basis")
    return None if basis is None else f"{basis} ({LAWFUL_BASIS_POINT.get(basis, 'Art. 6(1)')})"


def art9_text(view: SiteView) -> str | None:
    """``research-statistics (Art. 9(2)(j))`` style text of the Art. 9 condition."""
    cond = view.get("art9_condition")
    return None if cond is None else f"{cond} ({ART9_POINT.get(cond, 'Art. 9(2)')})"


def _join(values: list[str]) -> str:
    return ", ".join(sorted(set(values))) if values else "not recorded"


def transport_text(c: Controls) -> str:
    """TLS as a reader should understand it: on, off, or off because nothing crossed a network."""
    if c.transport == "in-process":
        return "TLS off: in-process simulation, no network link (a deployment must use TLS)"
    return "TLS on" if c.tls else "TLS off" if c.tls is False else "TLS not recorded"


def _security_measures(c: Controls) -> str:
    if c.dp_mechanism == "none":
        parts = ["differential privacy: none (no DP guarantee)"]
    else:
        parts = [f"differential privacy: {c.dp_mechanism}"]
        named = (("noise multiplier", c.noise_multiplier), ("clip", c.max_grad_norm), ("delta", c.delta))
        figures = [f"{label} {value:g}" for label, value in named if value is not None]
        if figures:
            parts[-1] += f" ({', '.join(figures)})"
    parts.append(f"secure aggregation: {c.secure_aggregation}")
    parts.append(transport_text(c))
    parts.append("tamper-evident audit log with signed checkpoints (RFC 9162)")
    return "; ".join(parts)


def art30(header: Header, sites: list[SiteView], controls: Controls) -> list[Art30Field]:
    """The GDPR Art. 30(1) record of processing for this run, field by field."""
    controllers = []
    dpos = []
    for v in sites:
        if not v.admitted:
            continue
        controllers.append(
            f"{v.get('organisation') or v.name} "
            f"({v.get('role') or 'role not recorded'}, {v.get('jurisdiction') or '?'})"
        )
        if v.manifest is not None and v.manifest.dpo is not None:
            dpos.append(f"{v.manifest.dpo.name} <{v.manifest.dpo.email}> ({v.name})")
    purposes = [p for v in sites if v.admitted for p in v.purposes()]
    subjects = [s for v in sites if v.admitted for s in v.listed("data_subjects")]
    categories = [s for v in sites if v.admitted for s in v.listed("data_categories")]
    transfers = [f"{v.name} ({v.get('jurisdiction') or '?'}): {transfer_basis(v)}" for v in sites if v.admitted]
    retention = [f"{v.name}: {v.get('retention_days') or 'not declared'} days" for v in sites if v.admitted]
    job_purpose = f"job purpose '{header.purpose}'" if header.purpose else "job purpose not recorded"
    return [
        Art30Field(
            point="Art. 30(1)(a)",
            field="Controllers, joint controllers and DPO contacts",
            value=f"{_join(controllers)}; DPO: {_join(dpos)}",
        ),
        Art30Field(
            point="Art. 30(1)(b)",
            field="Purposes of the processing",
            value=f"{job_purpose}; site purposes: {_join(purposes)}",
        ),
        Art30Field(
            point="Art. 30(1)(c)",
            field="Categories of data subjects and of personal data",
            value=f"subjects: {_join(subjects)}; data: {_join(categories)}",
        ),
        Art30Field(
            point="Art. 30(1)(d)",
            field="Categories of recipients",
            value="the coordinator receives model updates only "
            f"(secure aggregation: {controls.secure_aggregation}); participating sites receive the aggregate model",
        ),
        Art30Field(
            point="Art. 30(1)(e)",
            field="Transfers to third countries and safeguards",
            value="; ".join(transfers) or "none",
        ),
        Art30Field(
            point="Art. 30(1)(f)", field="Time limits for erasure", value="; ".join(retention) or "not recorded"
        ),
        Art30Field(
            point="Art. 30(1)(g)",
            field="Technical and organisational security measures (Art. 32(1))",
            value=_security_measures(controls),
        ),
    ]


def _failing(findings: list[Finding], *needles: str) -> list[Finding]:
    """Failing findings citing one of ``needles``; a waived finding is an accepted exception."""
    return [
        f
        for f in findings
        if f.status == "fail" and not f.waiver and f.citation and any(n in f.citation for n in needles)
    ]


def _row(ref: str, requirement: str, control: str, evidence: str, ok: bool | None, fails: list[Finding]) -> TableRow:
    if fails:
        evidence += "; failing: " + ", ".join(f"{f.rule_id} (seq {f.seq})" for f in fails)
        status = "not met"
    else:
        status = "manual" if ok is None else "met" if ok else "not met"
    return TableRow(ref=ref, requirement=requirement, control=control, evidence=evidence, status=status)


def _seqs(records: list[AuditRecord], kind: str) -> list[int]:
    return [r.seq for r in records if r.type == kind]


def _span(seqs: list[int]) -> str:
    if not seqs:
        return "none"
    return f"seq {seqs[0]}" if len(seqs) == 1 else f"{len(seqs)} entries, seq {seqs[0]}-{seqs[-1]}"


def hipaa_table(
    records: list[AuditRecord], sites: list[SiteView], controls: Controls, findings: list[Finding], checkpoints: int
) -> list[TableRow]:
    """HIPAA Security Rule technical safeguards, 45 CFR 164.312(a)-(e)."""
    admitted = _seqs(records, "site.admitted")
    rejected = _seqs(records, "site.rejected")
    received = [r for r in records if r.type == "update.received"]
    hashed = sum(1 for r in received if r.subject and r.subject.get("sha256"))
    keyed = sum(1 for r in received if r.actor_key_id)
    receipts = sum(1 for r in received if r.details.get("receipt_verified") is True)
    simulated = controls.transport == "in-process"
    keyed_note = "; simulated sites hold no node keys: not evidence for a deployment" if simulated and not keyed else ""
    return [
        _row(
            "164.312(a)(1)",
            "Access control",
            "only sites admitted by the site gate receive tasks; policy evaluated before any message",
            f"admitted: {_span(admitted)}; rejected: {_span(rejected)}",
            bool(admitted),
            _failing(findings, "164.312(a)"),
        ),
        _row(
            "164.312(b)",
            "Audit controls",
            "every step appended to an RFC 9162 Merkle log",
            f"{len(records)} entries for this run, {checkpoints} signed checkpoints; store verified at report time",
            True,
            _failing(findings, "164.312(b)"),
        ),
        _row(
            "164.312(c)(1)",
            "Integrity",
            "each update and model is logged by SHA-256; checkpoints are signed (Ed25519)",
            f"{hashed} of {len(received)} updates carry a SHA-256",
            hashed == len(received) if received else None,
            _failing(findings, "164.312(c)"),
        ),
        _row(
            "164.312(d)",
            "Person or entity authentication",
            "updates attributed to a site key; sites verify inclusion receipts",
            f"{keyed} of {len(received)} updates attributed to a key id; {receipts} receipts verified{keyed_note}",
            keyed == len(received) if received else None,
            _failing(findings, "164.312(d)"),
        ),
        _row(
            "164.312(e)(1)",
            "Transmission security",
            f"TLS; secure aggregation: {controls.secure_aggregation}",
            transport_text(controls),
            controls.tls,
            _failing(findings, "164.312(e)"),
        ),
    ]


def is_health_run(scenario: str | None, packs: list[str]) -> bool:
    """The HIPAA Security Rule table applies to hospital runs and runs evaluated against ``hipaa``."""
    return scenario == "hospital" or "hipaa" in packs


def is_payment_run(scenario: str | None, packs: list[str]) -> bool:
    """PCI DSS applies to bank runs and to runs evaluated against the ``pci-dss`` pack."""
    return scenario == "bank" or "pci-dss" in packs


def pci_table(
    records: list[AuditRecord], controls: Controls, findings: list[Finding], log: VerifiedLog
) -> list[TableRow]:
    """PCI DSS v4.0.1 requirement 10 (log and monitor all access), as this run shows it."""
    reads = [r for r in log.records if r.type == "log.read"]
    retention_days = next((r.details.get("audit_retention_days") for r in records if r.type == "run.created"), None)
    return [
        _row(
            "10.2.1",
            "Audit logs are enabled and active",
            "append-only audit store",
            f"{len(records)} entries for this run",
            True,
            _failing(findings, "10.2.1 "),
        ),
        _row(
            "10.2.1.3",
            "Access to audit logs is logged",
            "log.read entries",
            f"{len(reads)} log.read entries in the store",
            True,
            _failing(findings, "10.2.1.3"),
        ),
        _row(
            "10.2.2",
            "Records hold user, event type, time, outcome, origin, resource",
            "entry schema: actor, type, ts (UTC), outcome, subject",
            "every entry validated against the schema",
            True,
            _failing(findings, "10.2.2"),
        ),
        _row(
            "10.3.2",
            "Audit logs are protected from modification",
            "append-only triggers; Merkle hashing",
            "database refuses UPDATE/DELETE; any edit breaks the tree head",
            True,
            _failing(findings, "10.3.2"),
        ),
        _row(
            "10.3.4",
            "Change detection on audit logs",
            "signed checkpoints, consistency proofs",
            f"{len(log.checkpoints)} checkpoints verified",
            True,
            _failing(findings, "10.3.4"),
        ),
        _row(
            "10.4.1",
            "Audit logs are reviewed",
            "this report; fedinfra audit show",
            "review is a person's task",
            None,
            _failing(findings, "10.4.1"),
        ),
        _row(
            "10.5.1",
            "Retain audit history at least 12 months",
            "configured audit retention",
            f"{retention_days} days" if retention_days is not None else "not recorded",
            None if not isinstance(retention_days, int) else retention_days >= 365,
            _failing(findings, "10.5.1"),
        ),
        _row(
            "10.6.1",
            "System clocks synchronised",
            "UTC timestamps in every entry",
            "clock source is the host's: check NTP",
            None,
            _failing(findings, "10.6"),
        ),
    ]


def manual_evidence(sites: list[SiteView]) -> list[ManualEvidence]:
    """Documents a person must keep and attest: DPIA (Art. 35), DPA (Art. 28), BAA, IRB approval."""
    out: list[ManualEvidence] = []
    for v in sites:
        who = f"{v.get('organisation') or v.name} (site manifest)"
        d = v.record.details
        dpia = d.get("dpia")
        if isinstance(dpia, dict):
            out.append(
                ManualEvidence(
                    kind="DPIA (GDPR Art. 35)",
                    site=v.name,
                    reference=str(dpia.get("reference")),
                    sha256=_opt(dpia.get("sha256")),
                    date=_opt(dpia.get("date")),
                    attested_by=who,
                    placeholder=is_placeholder(_opt(dpia.get("sha256"))),
                )
            )
        elif v.manifest is not None and v.manifest.dpia is not None:
            m = v.manifest.dpia
            out.append(
                ManualEvidence(
                    kind="DPIA (GDPR Art. 35)",
                    site=v.name,
                    reference=m.reference,
                    sha256=m.sha256,
                    date=m.date.isoformat(),
                    attested_by=who,
                    placeholder=is_placeholder(m.sha256),
                )
            )
        agreements = d.get("agreements")
        if isinstance(agreements, list):
            for a in agreements:
                if isinstance(a, dict):
                    out.append(
                        ManualEvidence(
                            kind=_kind(str(a.get("kind"))),
                            site=v.name,
                            reference=str(a.get("reference")),
                            sha256=_opt(a.get("sha256")),
                            date=_opt(a.get("signed")),
                            attested_by=who,
                            placeholder=is_placeholder(_opt(a.get("sha256"))),
                        )
                    )
        elif v.manifest is not None:
            for ag in v.manifest.agreements:
                out.append(
                    ManualEvidence(
                        kind=_kind(ag.kind),
                        site=v.name,
                        reference=ag.reference,
                        sha256=None,
                        date=ag.signed.isoformat(),
                        attested_by=who,
                        placeholder=False,
                    )
                )
        for a in d.get("attestations", []) if isinstance(d.get("attestations"), list) else []:
            if isinstance(a, dict):
                out.append(
                    ManualEvidence(
                        kind=str(a.get("kind")),
                        site=v.name,
                        reference=str(a.get("reference")),
                        sha256=_opt(a.get("sha256")),
                        date=_opt(a.get("date")),
                        attested_by=str(a.get("attested_by") or who),
                        placeholder=is_placeholder(_opt(a.get("sha256"))),
                    )
                )
    return out


def is_placeholder(sha256: str | None) -> bool:
    """A document hash that cannot be a real document's: all zeros (the simulation's stand-in)."""
    return sha256 is not None and len(sha256) >= 32 and set(sha256.lower()) <= {"0"}


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _kind(kind: str) -> str:
    return {
        "baa": "BAA (45 CFR 164.504(e))",
        "dpa": "DPA (GDPR Art. 28)",
        "joint-controller-arrangement": "Joint-controller arrangement (GDPR Art. 26)",
        "service-provider-contract": "Service-provider contract (16 CFR 314.4(f))",
    }.get(kind, kind)


def retention(records: list[AuditRecord], sites: list[SiteView], packs: list[str]) -> Retention:
    """Audit-record retention against the packs' minimum, and each site's data retention."""
    created = next((r for r in records if r.type == "run.created"), None)
    days = created.details.get("audit_retention_days") if created else None
    rules = [RETENTION_RULES[p] for p in packs if p in RETENTION_RULES]
    required = max(rules, default=None)
    site_days: dict[str, int | None] = {}
    for v in sites:
        value = v.get("retention_days")
        site_days[v.name] = int(value) if value is not None and value.isdigit() else None
    return Retention(
        audit_retention_days=days if isinstance(days, int) else None,
        required_days=required[0] if required else None,
        required_by=required[1] if required else None,
        site_data_days=site_days,
    )
