"""One verdict, the page-1 summary and the rule x site grid of a compliance report.

A report must never contradict itself (issue 18): its status is computed from every
requirement table (HIPAA 45 CFR 164.312, PCI DSS 10), every policy finding, every site's
privacy budget, the retention rule and the manual-evidence register. Anything "not met"
turns a completed run into "completed with findings" (amber) and is listed on page 1. A
policy finding that passed while the evidence table says the requirement is not met - the
in-process simulation's TLS rule is the case that prompted this - is shown as
"contradicted", never as a pass.

Pure functions over :mod:`fedinfra.report.model` objects: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fedinfra.report.model import (
    Controls,
    Finding,
    GridRow,
    Header,
    ManualEvidence,
    OpenFinding,
    Participant,
    Retention,
    SiteEpsilon,
    Summary,
    TableRow,
    Verdict,
)
from fedinfra.report.records import AuditRecord, Checkpoint, RunConfig
from fedinfra.report.regulation import transport_text

#: Worst first when one rule is evaluated several times for the same column (per round).
_SEVERITY = {"contradicted": 6, "fail": 5, "warn": 4, "manual": 3, "waived": 2, "pass": 1}
JOB_COLUMN = "job"

#: What each secure-aggregation mode hides, as DESIGN.md's security model states it.
_SECAGG_MEANING = {
    "none": "none: the coordinator sees every update",
    "bfv": "BFV homomorphic encryption: the coordinator sees neither updates nor their sum; "
    "a key-holding site colluding with it reads everything",
    "ckks": "CKKS homomorphic encryption: the coordinator sees neither updates nor their sum; "
    "a key-holding site colluding with it reads everything",
    "he": "homomorphic encryption: the coordinator sees neither updates nor their sum",
    "secagg": "pairwise masking (SecAgg+): the coordinator sees only the sum",
    "secagg+he": "pairwise masking and homomorphic encryption: the coordinator sees neither updates nor the sum",
}


def _cell(f: Finding) -> str:
    return "waived" if f.status == "fail" and f.waiver else f.status


def finding_grid(findings: list[Finding], sites: Iterable[str]) -> list[GridRow]:
    """Each rule once: one cell per column (``job`` gate, then each site), worst status over rounds."""
    order = [JOB_COLUMN, *sorted(sites)]
    rows: dict[str, tuple[Finding, dict[str, str], int]] = {}
    for f in findings:
        column = f.site or JOB_COLUMN
        first, cells, count = rows.get(f.rule_id, (f, {}, 0))
        prev = cells.get(column)
        cells[column] = _cell(f) if prev is None else max(prev, _cell(f), key=_SEVERITY.__getitem__)
        rows[f.rule_id] = (first, cells, count + 1)
    out = []
    for rule_id, (f, cells, count) in sorted(rows.items(), key=lambda kv: (kv[1][0].pack or "", kv[0])):
        ordered = {c: cells[c] for c in order if c in cells}
        ordered.update({c: s for c, s in sorted(cells.items()) if c not in ordered})
        out.append(
            GridRow(rule_id=rule_id, title=f.title, citation=f.citation, pack=f.pack, cells=ordered, evaluations=count)
        )
    return out


def _cites(citation: str | None, ref: str) -> bool:
    """Whether ``citation`` names requirement ``ref`` itself (164.312(e)(1), not 164.312(e)(2))."""
    if not citation:
        return False
    return re.search(re.escape(ref) + r"(?![\d.(])", citation) is not None


def reconcile(grid: list[GridRow], tables: list[TableRow]) -> list[GridRow]:
    """Mark a passing rule "contradicted" where the evidence table says its requirement is not met."""
    unmet = [t.ref for t in tables if t.status == "not met"]
    out = []
    for row in grid:
        if any(_cites(row.citation, ref) for ref in unmet):
            cells = {c: ("contradicted" if s == "pass" else s) for c, s in row.cells.items()}
            row = row.model_copy(update={"cells": cells})
        out.append(row)
    return out


def _table_source(ref: str) -> str:
    return f"HIPAA {ref}" if ref.startswith("164.") else f"PCI DSS {ref}"


def verdict(
    header: Header,
    controls: Controls,
    findings: list[Finding],
    tables: list[TableRow],
    evidence: list[ManualEvidence],
    retention: Retention,
) -> Verdict:
    """The one status of the run, with every open finding and every waiver listed."""
    open_: list[OpenFinding] = [
        OpenFinding(source=_table_source(t.ref), site=None, text=f"{t.requirement} not met: {t.evidence}")
        for t in tables
        if t.status == "not met"
    ]
    seen: set[tuple[str, str | None]] = set()
    waived: list[OpenFinding] = []
    for f in reversed(findings):  # the latest evaluation of a rule at a site speaks for it
        key = (f.rule_id, f.site)
        if key in seen or f.status != "fail":
            seen.add(key)
            continue
        seen.add(key)
        text = f.message or f.title or "failed"
        if f.waiver:
            waived.append(
                OpenFinding(source=f"policy rule {f.rule_id}", site=f.site, text=f"{text}; waiver: {f.waiver}")
            )
        else:
            open_.append(OpenFinding(source=f"policy rule {f.rule_id}", site=f.site, text=text))
    for b in controls.budgets:
        if b.within_cap is False:
            open_.append(
                OpenFinding(
                    source="privacy budget",
                    site=b.site,
                    text=f"epsilon {b.total:.3g} exceeds the run cap {b.cap_run:g}",
                )
            )
    if (
        retention.required_days is not None
        and retention.audit_retention_days is not None
        and retention.audit_retention_days < retention.required_days
    ):
        open_.append(
            OpenFinding(
                source="retention",
                site=None,
                text=f"audit records kept {retention.audit_retention_days} days; {retention.required_by} requires "
                f"{retention.required_days}",
            )
        )
    for m in evidence:
        if m.placeholder:
            open_.append(
                OpenFinding(
                    source=m.kind,
                    site=m.site,
                    text=f"{m.reference}: the document hash is a placeholder (all zeros); attest the real document",
                )
            )
    notes = []
    if controls.transport == "in-process":
        notes.append(
            "Simulation: every site ran in one process on this host, so transport security (TLS) and site "
            "authentication by node keys were not exercised; this run is no evidence of either."
        )
    if controls.dp_guarantee.startswith("no DP guarantee"):
        notes.append(controls.dp_guarantee[0].upper() + controls.dp_guarantee[1:] + ".")
    status = header.status
    if status == "completed" and open_:
        return Verdict(
            status="completed with findings", tone="amber", open_findings=open_, waived=waived, notes=notes
        )
    tone = "green" if status == "completed" else "red"
    return Verdict(status=status, tone=tone, open_findings=open_, waived=waived, notes=notes)


def _cosigners(cp: Checkpoint, stored: dict[int, list[str]], first_index: int) -> tuple[list[str], int | None]:
    """Sites that cosigned this run's checkpoints up to the cited one, and the newest such tree size.

    Names come from the note's own extra signature lines and from the cosignatures stored
    beside the checkpoints (#15); their signatures are checked by ``audit verify --witnesses``.
    """
    names = {
        line[2:].split(" ", 1)[0]
        for line in cp.note.splitlines()
        if line.startswith("\u2014 ") and line[2:].split(" ", 1)[0] != cp.key_name
    }
    newest = cp.tree_size if names else None
    for size, signers in stored.items():
        if first_index < size <= cp.tree_size and signers:
            names.update(signers)
            newest = max(newest or 0, size)
    return sorted(names), newest


def _protections(controls: Controls) -> list[str]:
    c = controls
    if c.dp_mechanism in ("none", "not recorded"):
        dp = "Differential privacy: none - no DP guarantee"
    else:
        if c.noise_multiplier is None:
            figures = ["noise multiplier not recorded"]
        else:
            planned = " (planned by the sites)" if c.noise_multiplier_source == "budget.spent" else ""
            figures = [f"noise multiplier {c.noise_multiplier:g}{planned}"]
        for label, value in (("clip", c.max_grad_norm), ("delta", c.delta), ("target epsilon", c.epsilon_target)):
            if value is not None:
                figures.append(f"{label} {value:g}")
        if c.accountant:
            figures.append(f"accountant {c.accountant}")
        dp = f"Differential privacy: {c.dp_mechanism} ({', '.join(figures)})"
    mode = c.secure_aggregation
    return [dp, f"Secure aggregation: {_SECAGG_MEANING.get(mode, mode)}", f"Transport: {transport_text(c)}"]


def summary(
    records: list[AuditRecord],
    header: Header,
    config: RunConfig,
    participants: list[Participant],
    controls: Controls,
    grid: list[GridRow],
    cp: Checkpoint,
    cosigned: dict[int, list[str]] | None = None,
) -> Summary:
    """Page 1: task and data, sites, protections, epsilon against caps, policy totals, audit."""
    job = config.job
    created = next((r for r in records if r.type == "run.created"), None)
    details = created.details if created else {}
    dataset = job.data.dataset if job is not None else (str(details["dataset"]) if details.get("dataset") else None)
    model: str | None = job.model.kind if job is not None else None
    if job is not None and job.task is not None:  # a user's task: its own model, each site's declared data
        dataset, model = "each site's declared data set (site manifests, Data section)", job.task.ref
    totals: dict[str, int] = {}
    for row in grid:
        for status in row.cells.values():
            totals[status] = totals.get(status, 0) + 1
    completed = next((r for r in reversed(records) if r.type == "run.completed"), None)
    accuracy = completed.details.get("final_accuracy") if completed else None
    scenario = f"{header.scenario} scenario" if header.scenario else "job"
    cosigners, newest = _cosigners(cp, cosigned or {}, records[0].index if records else 0)
    witnessed = (
        f"; sites cosigned this run's checkpoints up to tree size {newest} (check their signatures with "
        "'fedinfra audit verify --witnesses')"
        if newest is not None
        else ""
    )
    purpose = f" for {header.purpose}" if header.purpose else ""
    return Summary(
        task=f"{scenario} '{header.job_name or 'unnamed'}'{purpose}",
        dataset=dataset,
        model=model,
        rounds=sum(1 for r in records if r.type == "aggregation.completed"),
        sites_admitted=sum(1 for p in participants if p.admission == "admitted"),
        sites_rejected=sum(1 for p in participants if p.admission == "rejected"),
        protections=_protections(controls),
        epsilon=[
            SiteEpsilon(site=b.site, spent=b.total, cap_run=b.cap_run, cap_lifetime=b.cap_lifetime,
                        within_cap=b.within_cap)
            for b in controls.budgets
        ],
        policy_totals=dict(sorted(totals.items())),
        audit=(
            f"verified when this report was generated: {header.entries} entries of this run, final signed "
            f"checkpoint at tree size {header.final_checkpoint.tree_size} (key {header.final_checkpoint.key_name})"
            f"{witnessed}"
        ),
        cosigners=cosigners,
        final_accuracy=(
            float(accuracy) if isinstance(accuracy, int | float) and not isinstance(accuracy, bool) else None
        ),
    )
