"""Job and site admission: the policy gates that run before any training message.

A failing blocking rule stops the run before a single update is requested (fail closed,
GDPR Art. 25 data protection by design); every evaluation is written to the audit log as
``policy.evaluated`` with the SHA-256 of the packs applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedinfra.config import JobSpec, SiteManifest
from fedinfra.config.wire import SiteHello
from fedinfra.coordinator.trail import AuditTrail

if TYPE_CHECKING:
    from fedinfra.policy import Evaluation, Pack


@dataclass(frozen=True)
class GateContext:
    """Deployment facts the gates need besides the job."""

    tls: bool
    in_process: bool
    audit_retention_days: int


def job_facts(job: JobSpec, gate: GateContext) -> Any:
    """The policy facts of the job."""
    from fedinfra.policy._facts import JobFacts

    return JobFacts(
        spec=job,
        tls=gate.tls,
        in_process=gate.in_process,
        audit_enabled=True,
        audit_retention_days=gate.audit_retention_days,
    )


def packs_list(evaluation: Evaluation) -> list[dict[str, str]]:
    """Pack names and hashes as a list (audit details keys must be codes)."""
    return [{"name": n, "sha256": h} for n, h in sorted(evaluation.pack_hashes.items())]


def record_evaluation(
    trail: AuditTrail, evaluation: Evaluation, *, gate: str, round: int, site: str | None = None
) -> None:
    """Append ``policy.evaluated`` for one gate (outcome ``denied`` when it blocks)."""
    findings = []
    for f in evaluation.findings:
        d = f.to_dict()
        d["evidence"] = [{"name": k, "value": v} for k, v in (f.evidence or {}).items()]
        findings.append(d)
    trail.event(
        "policy.evaluated",
        round=round,
        outcome="denied" if evaluation.blocking else "success",
        details={
            "gate": gate,
            "site": site,
            "packs": packs_list(evaluation),
            "passed": evaluation.passed,
            "counts": evaluation.counts(),
            "findings": findings,
            "not_applicable": list(evaluation.not_applicable),
        },
    )


def evaluate_job(job: JobSpec, packs: list[Pack], gate: GateContext) -> Evaluation:
    """Run the job gate."""
    from fedinfra.policy import Facts, evaluate

    return evaluate(packs, "job", Facts(job=job_facts(job, gate)))


def evaluate_site(
    job: JobSpec, packs: list[Pack], gate: GateContext, hello: SiteHello
) -> tuple[Evaluation, SiteManifest]:
    """Run the site gate on a site's hello (its manifest, scan summary and budget).

    The lifetime spend is the site's own ledger total as it reports it. A site that reports
    none under a DP job is not taken to have spent nothing: the ``site-lifetime-budget``
    rule then fails closed on missing evidence (GDPR Art. 25 data protection by default),
    and the audit log records the spend as unknown, not as 0.
    """
    from fedinfra.policy import Facts, evaluate
    from fedinfra.policy.scan import ScanSummary

    manifest = SiteManifest.model_validate(hello.manifest)
    scan = ScanSummary.model_validate(hello.scan) if hello.scan else None
    facts = Facts(
        job=job_facts(job, gate),
        site=manifest,
        scan=scan,
        site_epsilon_spent=hello.epsilon_spent_lifetime,
    )
    return evaluate(packs, "site", facts), manifest


def site_details(hello: SiteHello, manifest: SiteManifest) -> dict[str, Any]:
    """The non-personal facts about a site that the audit log keeps at admission."""
    m = manifest
    return {
        "site": hello.site,
        "organisation": m.organisation,
        "role": getattr(m, "role", None),
        "jurisdiction": m.jurisdiction,
        "sector": m.sector,
        "lawful_basis": getattr(m, "lawful_basis", None),
        "art9_condition": getattr(m, "art9_condition", None),
        "transfer_safeguard": getattr(m, "transfer_safeguard", None),
        "consent_status": getattr(getattr(m, "consent", None), "status", None),
        "consent_reference": getattr(getattr(m, "consent", None), "reference", None),
        "purposes": list(m.purposes),
        "data_categories": list(getattr(m, "data_categories", []) or []),
        "data_subjects": list(getattr(m, "data_subjects", []) or []),
        "retention_days": getattr(m, "retention_days", None),
        "dataset_fingerprint": hello.dataset_fingerprint,
        "num_examples": hello.num_examples,
        "budget": {"epsilon_per_run": m.budget.epsilon_per_run, "epsilon_lifetime": m.budget.epsilon_lifetime},
        "epsilon_spent_lifetime": hello.epsilon_spent_lifetime,
        "scan": hello.scan
        and {
            "rows": hello.scan.get("rows_scanned"),
            "k_anonymity": hello.scan.get("k_anonymity"),
        },
        "dpia": m.dpia.model_dump(mode="json") if m.dpia is not None else None,
        "agreements": [a.model_dump(mode="json") for a in getattr(m, "agreements", []) or []],
    }
