"""Build :class:`~fedinfra.report.model.ReportData` from a verified log and the run's configuration.

Pure: no I/O, no clock. The report covers the run's entries up to its last one (``log.read``
and earlier ``report.generated`` entries excluded, so regenerating a report does not change
it) and cites the first signed checkpoint whose tree covers them (RFC 9162 §2.1: a tree of
size ``n`` commits to leaves ``0 .. n-1``). A run whose last entry no checkpoint covers is
refused: an unsigned tail is not evidence.

``details`` keys read, per event type (a missing key shows as "not recorded"):

* ``run.created``: ``fedinfra_version``, ``job_name``, ``scenario``, ``purpose``,
  ``job_sha256``, ``policy_packs`` [{``name``, ``sha256``}], ``tls`` (bool),
  ``audit_retention_days``, ``privacy`` {``mechanism``, ``noise_multiplier``,
  ``max_grad_norm``, ``delta``, ``epsilon``, ``accountant``}, ``secure_aggregation``
  {``mode``, ...parameters}; the job in ``job.json`` fills what is absent.
* ``policy.evaluated``: ``gate``, ``site``, ``pack``, ``packs`` [{``name``, ``sha256``}],
  ``findings`` [{``rule_id``, ``title``, ``citation``, ``pack``, ``status``
  (pass/fail/warn/manual), ``severity``, ``message``, ``evidence`` {...}, ``waiver``}].
* ``site.admitted`` / ``site.rejected``: ``site`` (else actor id), ``organisation``,
  ``role``, ``jurisdiction``, ``sector``, ``lawful_basis``, ``art9_condition``,
  ``transfer_safeguard``, ``transfer_basis``, ``consent_status``, ``consent_reference``,
  ``purposes``, ``data_categories``, ``data_subjects``, ``retention_days``,
  ``dataset_fingerprint``, ``schema`` [{``name``, ``type``}] (a list: details keys
  must be lower-case codes, column names are not), ``scan`` {``rows``, ``flagged``
  [{``column``, ``identifier``, ``share``}], ``k_anonymity``, ``verdict``}, ``budget``
  {``epsilon_per_run``, ``epsilon_lifetime``}, ``dpia`` {``reference``, ``sha256``,
  ``date``}, ``agreements`` [{``kind``, ``reference``, ``signed``, ``sha256``}],
  ``attestations`` [{``kind``, ``reference``, ``sha256``, ``date``, ``attested_by``}],
  ``reason`` (rejected). The site's manifest in the run directory fills what is absent.
* ``round.started``: ``sites`` [names sampled].
* ``update.received``: ``site`` (else actor id), ``receipt_verified`` (bool: the site
  verified its previous inclusion receipt before training).
* ``update.rejected``: ``site``, ``reason``.
* ``budget.spent``: ``site``, ``epsilon`` (this round), ``epsilon_total`` (the
  accountant's total for the run so far; else the sum, an upper bound by basic
  composition, Dwork & Roth 2014, Thm. 3.16), ``delta``, ``accountant``.
* ``aggregation.completed``: ``test_loss``, ``test_accuracy``, ``replies``.
* ``evaluation.completed`` (HE: sites evaluate round ``evaluated_round``'s model in the
  next wave or the close wave): ``evaluated_round``, ``test_loss``, ``test_accuracy``;
  the last such entry for a round gives its figures when its aggregation has none.
* ``run.completed`` / ``run.failed``: ``reason``; a secure-aggregation round abandoned below
  its threshold adds ``abandoned_round`` and ``released = false`` to ``run.failed`` (its
  ``budget.spent`` charges, made write-ahead, are reported with ``released = false``).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterable
from typing import Any

from fedinfra.errors import VerificationError
from fedinfra.privacy.release import releases, user_level_statement
from fedinfra.report import regulation, verdict
from fedinfra.report.model import (
    CheckpointRef,
    Controls,
    DataRow,
    EpsilonPoint,
    EventRow,
    Finding,
    FlaggedColumn,
    Header,
    MetricPoint,
    PackRef,
    Participant,
    ReportData,
    RoleRow,
    RoundRow,
    SecureAggRound,
    SiteBudget,
    TaskQuality,
    VerifyInfo,
)
from fedinfra.report.records import AuditRecord, Checkpoint, RunConfig, VerifiedLog
from fedinfra.report.regulation import SiteView

#: Entries that record reading the log; excluded so a report does not depend on earlier reads.
_READ_TYPES = frozenset({"log.read", "report.generated"})
_ROUND_TYPES = frozenset(
    {
        "round.started",
        "update.received",
        "update.rejected",
        "aggregation.completed",
        "budget.spent",
        "evaluation.completed",
    }
)
_FINDING_STATUS = frozenset({"pass", "fail", "warn", "manual"})


def run_records(log: VerifiedLog, run_id: str) -> list[AuditRecord]:
    """Return the entries of ``run_id`` the report covers, in log order."""
    return [r for r in log.records if r.run_id == run_id and r.type not in _READ_TYPES]


def covering_checkpoint(log: VerifiedLog, last_index: int) -> Checkpoint:
    """Return the first checkpoint whose tree includes leaf ``last_index`` (RFC 9162 §2.1)."""
    for cp in sorted(log.checkpoints, key=lambda c: c.tree_size):
        if cp.tree_size > last_index:
            return cp
    raise VerificationError(
        f"audit entries up to index {last_index} are not covered by a signed checkpoint; "
        "publish a checkpoint (the run may still be in progress) and retry"
    )


def _ref(cp: Checkpoint) -> CheckpointRef:
    return CheckpointRef(
        tree_size=cp.tree_size, root_hash=cp.root_hash, key_name=cp.key_name, key_id=cp.key_id, note=cp.note
    )


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _first(records: Iterable[AuditRecord], kind: str) -> AuditRecord | None:
    return next((r for r in records if r.type == kind), None)


def _packs(records: list[AuditRecord], config: RunConfig) -> list[PackRef]:
    found: dict[str, str | None] = {}
    for r in records:
        if r.type not in ("run.created", "policy.evaluated"):
            continue
        for p in r.details.get("policy_packs", []) + r.details.get("packs", []):
            if isinstance(p, dict) and "name" in p:
                found[str(p["name"])] = _str(p.get("sha256")) or found.get(str(p["name"]))
    if not found and config.job is not None:
        found = dict.fromkeys(config.job.policy_packs)
    return [PackRef(name=n, sha256=found[n]) for n in sorted(found)]


def _status(records: list[AuditRecord]) -> tuple[str, str | None]:
    for r in reversed(records):
        if r.type == "run.completed":
            return "completed", None
        if r.type == "run.failed":
            return "failed", _str(r.details.get("reason")) or "not recorded"
    return "incomplete", "the log holds no run.completed or run.failed entry for this run"


def _header(log: VerifiedLog, run_id: str, records: list[AuditRecord], cp: Checkpoint, config: RunConfig) -> Header:
    created = _first(records, "run.created")
    d = created.details if created else {}
    job = config.job
    status, reason = _status(records)
    return Header(
        run_id=run_id,
        job_name=_str(d.get("job_name")) or (job.name if job else None),
        scenario=_str(d.get("scenario")) or (job.scenario if job else None),
        purpose=_str(d.get("purpose")) or (job.purpose if job else None),
        fedinfra_version=_str(d.get("fedinfra_version")),
        status=status,
        status_reason=reason,
        generated_at=records[-1].ts,
        started_at=records[0].ts,
        policy_packs=_packs(records, config),
        log_origin=log.origin,
        first_seq=records[0].seq,
        last_seq=records[-1].seq,
        entries=len(records),
        final_checkpoint=_ref(cp),
        job_sha256=_str(d.get("job_sha256")) or config.job_sha256,
    )


def _site_views(records: list[AuditRecord], config: RunConfig) -> list[SiteView]:
    views: dict[str, SiteView] = {}
    for r in records:
        if r.type in ("site.admitted", "site.rejected"):
            views[r.site] = SiteView(
                name=r.site, record=r, manifest=config.manifests.get(r.site), admitted=r.type == "site.admitted"
            )
    return [views[k] for k in sorted(views)]


def _round_numbers(records: list[AuditRecord]) -> list[int]:
    return sorted({r.round for r in records if r.round is not None and r.type in _ROUND_TYPES})


def _participation(records: list[AuditRecord], sites: list[SiteView], rounds: list[int]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for view in sites:
        row = []
        for n in rounds:
            in_round = [r for r in records if r.round == n and r.site == view.name]
            sampled = any(
                view.name in (r.details.get("sites") or [])
                for r in records
                if r.round == n and r.type == "round.started"
            )
            if not view.admitted or any(r.type == "update.rejected" for r in in_round):
                row.append("rejected")
            elif any(r.type == "update.received" for r in in_round):
                row.append("admitted")
            elif sampled:
                row.append("dropped")
            else:
                row.append("not-sampled")
        grid[view.name] = row
    return grid


def _participants(
    records: list[AuditRecord], sites: list[SiteView], grid: dict[str, list[str]], rounds: list[int]
) -> list[Participant]:
    out = []
    for view in sites:
        received = [r for r in records if r.type == "update.received" and r.site == view.name]
        out.append(
            Participant(
                site=view.name,
                organisation=view.get("organisation"),
                admission="admitted" if view.admitted else "rejected",
                admission_seq=view.record.seq,
                rejection_reason=None if view.admitted else (_str(view.record.details.get("reason")) or "not recorded"),
                jurisdiction=view.get("jurisdiction"),
                transfer_basis=regulation.transfer_basis(view),
                lawful_basis=regulation.lawful_basis_text(view),
                art9_condition=regulation.art9_text(view),
                consent_status=view.consent_status(),
                consent_reference=view.consent_reference(),
                rounds_joined=[n for n, s in zip(rounds, grid[view.name], strict=True) if s == "admitted"],
                receipts_verified=sum(1 for r in received if r.details.get("receipt_verified") is True),
            )
        )
    return out


def _schema(value: Any) -> dict[str, str]:
    """A schema as ``[{"name": ..., "type": ...}]`` (log details keys must be codes) or a mapping."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(c.get("name")): str(c.get("type")) for c in value if isinstance(c, dict) and "name" in c}
    return {}


def _data_rows(sites: list[SiteView]) -> list[DataRow]:
    rows = []
    for view in sites:
        d = view.record.details
        raw_scan = d.get("scan")
        scan: dict[str, Any] = raw_scan if isinstance(raw_scan, dict) else {}
        flagged = [
            FlaggedColumn(column=str(f.get("column")), identifier=str(f.get("identifier")), share=_num(f.get("share")))
            for f in scan.get("flagged", [])
            if isinstance(f, dict)
        ]
        columns = _schema(d.get("schema"))
        if not columns and view.manifest and view.manifest.dataset:
            columns = dict(view.manifest.dataset.columns)
        rows_n = scan.get("rows")
        k = scan.get("k_anonymity")
        verdict = _str(scan.get("verdict")) or (
            "not recorded" if not scan else ("identifiers flagged" if flagged else "clean")
        )
        rows.append(
            DataRow(
                site=view.name,
                dataset_fingerprint=_str(d.get("dataset_fingerprint")),
                columns=dict(sorted(columns.items())),
                rows=rows_n if isinstance(rows_n, int) else None,
                flagged=flagged,
                k_anonymity=k if isinstance(k, int) else None,
                scan_verdict=verdict,
            )
        )
    return rows


def _unreleased_rounds(records: list[AuditRecord]) -> set[int]:
    """Rounds abandoned below the secure-aggregation threshold and never completed (on resume)."""
    abandoned = {
        r.details["abandoned_round"]
        for r in records
        if r.type == "run.failed" and isinstance(r.details.get("abandoned_round"), int)
    }
    return abandoned - {r.round for r in records if r.type == "aggregation.completed"}


def _budgets(records: list[AuditRecord], sites: list[SiteView]) -> list[SiteBudget]:
    """Each site's spends; a write-ahead charge of an abandoned round is kept, marked unreleased."""
    unreleased = _unreleased_rounds(records)
    out = []
    for view in sites:
        spends = [r for r in records if r.type == "budget.spent" and r.site == view.name and r.round is not None]
        if not spends and not view.admitted:
            continue
        points: list[EpsilonPoint] = []
        running = 0.0
        for r in spends:
            eps = _num(r.details.get("epsilon")) or 0.0
            running += eps
            total = _num(r.details.get("epsilon_total"))
            points.append(
                EpsilonPoint(
                    round=r.round or 0,
                    epsilon=eps,
                    cumulative=total if total is not None else running,
                    seq=r.seq,
                    released=r.round not in unreleased,
                )
            )
        cap_run, cap_life = view.caps()
        spent = points[-1].cumulative if points else 0.0
        within = None if cap_run is None else spent <= cap_run
        out.append(
            SiteBudget(
                site=view.name, points=points, total=spent, cap_run=cap_run, cap_lifetime=cap_life, within_cap=within
            )
        )
    return out


def _dp_on(records: list[AuditRecord], config: RunConfig) -> bool:
    """Whether the run applied DP: without it a zero epsilon would read as a perfect guarantee."""
    created = _first(records, "run.created")
    priv = created.details.get("privacy") if created else None
    if isinstance(priv, dict) and "mechanism" in priv:
        return str(priv["mechanism"]) != "none"
    if config.job is not None:
        return config.job.privacy.mechanism != "none"
    return any(r.type == "budget.spent" for r in records)


def _controls(records: list[AuditRecord], config: RunConfig, budgets: list[SiteBudget], log: VerifiedLog) -> Controls:
    created = _first(records, "run.created")
    d = created.details if created else {}
    priv = d.get("privacy") if isinstance(d.get("privacy"), dict) else None
    if priv is None and config.job is not None:
        priv = config.job.privacy.model_dump(mode="json")
    priv = priv or {}
    sa = d.get("secure_aggregation") if isinstance(d.get("secure_aggregation"), dict) else None
    if sa is None and config.job is not None:
        sa = config.job.secure_aggregation.model_dump(mode="json")
    sa = dict(sa or {})
    mode = str(sa.pop("mode", "not recorded"))
    # An unset parameter (None: chosen automatically) is not a figure to print.
    params = {str(k): v for k, v in sorted(sa.items()) if isinstance(v, str | int | float | bool)}
    tls = d.get("tls")
    transport = _str(d.get("transport")) or ("tls" if tls is True else "insecure" if tls is False else "not recorded")
    cps = [c for c in log.checkpoints if c.tree_size > records[0].index]
    mechanism = str(priv.get("mechanism", "not recorded"))
    sigma, source = _num(priv.get("noise_multiplier")), "job"
    if sigma is None:  # planned by each site from its target epsilon: the ledger's figure
        spent = [_num(r.details.get("noise_multiplier")) for r in records if r.type == "budget.spent"]
        planned = sorted({v for v in spent if v is not None})
        sigma, source = (planned[0], "budget.spent") if planned else (None, "")
    return Controls(
        dp_mechanism=mechanism,
        dp_guarantee=_guarantee(
            mechanism, mode, budgets, [r.details for r in records if r.type == "budget.spent"]
        ),
        site_releases=[list(row) for row in releases(mode)] if mechanism not in ("none", "not recorded") else [],
        noise_multiplier=sigma,
        noise_multiplier_source=source or None,
        max_grad_norm=_num(priv.get("max_grad_norm")),
        delta=_num(priv.get("delta")),
        epsilon_target=_num(priv.get("epsilon")),
        accountant=_str(priv.get("accountant")),
        budgets=budgets,
        secure_aggregation=mode,
        secure_aggregation_params=params if mode not in ("none", "not recorded") else {},
        secure_aggregation_rounds=_secagg_rounds(records),
        tls=tls if isinstance(tls, bool) else None,
        transport=transport,
        audit_log=(
            f"RFC 9162 Merkle log '{log.origin}': {len(log.records)} entries, {len(log.checkpoints)} signed "
            f"checkpoints up to the cited one, all verified when this report was generated "
            f"({len(cps)} since this run began)"
        ),
    )


def _secagg_rounds(records: list[AuditRecord]) -> list[SecureAggRound]:
    """Per-round SecAgg figures from ``aggregation.completed`` (issue 13: name n, t, k, survivors)."""
    out: list[SecureAggRound] = []
    for r in records:
        d = r.details
        if r.type != "aggregation.completed" or d.get("mode") not in ("secagg", "secagg+he") or r.round is None:
            continue
        try:
            out.append(
                SecureAggRound(
                    round=r.round,
                    n=int(d.get("sampled", d.get("n", 0))),
                    t=int(d["t"]),
                    k=int(d["k"]),
                    max_dropouts=int(d["max_dropouts"]),
                    max_colluders=int(d["max_colluders"]),
                    min_contributors=int(d["min_contributors"]),
                    survivors=[str(s) for s in d.get("survivors", [])],
                    dropped=[str(s) for s in d.get("dropped", [])],
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _guarantee(
    mechanism: str, secure_aggregation: str, budgets: list[SiteBudget], spends: list[dict[str, Any]]
) -> str:
    """What the run's privacy figures mean - or that there are none.

    Encryption (HE, secure aggregation) hides updates from the coordinator but bounds
    nothing about what the released model reveals; only DP does (Dwork & Roth 2014, §2.3).
    """
    if mechanism in ("none", "not recorded"):
        hidden = f"; updates are protected by {secure_aggregation} only" if secure_aggregation not in (
            "none", "not recorded") else ""
        return f"no DP guarantee: no differential privacy was applied{hidden}"
    if not budgets or not any(b.points for b in budgets):
        return f"{mechanism} declared but no privacy spend was recorded"
    if mechanism == "user-dp":  # both figures, and the sampling assumption if the job made it
        return user_level_statement(spends)
    return f"{mechanism}: (epsilon, delta)-DP per site, the accountant's upper bound"


def _evaluations(records: list[AuditRecord]) -> dict[int, dict[str, Any]]:
    """``evaluated_round`` -> details of its last ``evaluation.completed`` entry."""
    out: dict[int, dict[str, Any]] = {}
    for r in records:
        n = r.details.get("evaluated_round") if r.type == "evaluation.completed" else None
        if isinstance(n, int) and not isinstance(n, bool):
            out[n] = r.details
    return out


def _rounds(records: list[AuditRecord], numbers: list[int]) -> list[RoundRow]:
    rows = []
    evaluations = _evaluations(records)
    for n in numbers:
        rs = [r for r in records if r.round == n]
        started = _first(rs, "round.started")
        agg = _first(rs, "aggregation.completed")
        cp = _first(rs, "checkpoint.published")
        sampled = started.details.get("sites") if started else None
        figures = agg.details if agg and "test_accuracy" in agg.details else evaluations.get(n, {})
        rows.append(
            RoundRow(
                round=n,
                first_seq=rs[0].seq,
                last_seq=rs[-1].seq,
                started_seq=started.seq if started else None,
                sites_sampled=len(sampled) if isinstance(sampled, list) else None,
                updates_received=[r.seq for r in rs if r.type == "update.received"],
                updates_rejected=[r.seq for r in rs if r.type == "update.rejected"],
                aggregation_seq=agg.seq if agg else None,
                checkpoint_seq=cp.seq if cp else None,
                test_loss=_num(figures.get("test_loss")),
                test_accuracy=_num(figures.get("test_accuracy")),
            )
        )
    return rows


def _metric_dict(value: Any) -> dict[str, float | None]:
    """A ``metrics`` detail as name -> number (None where the log holds no finite number)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): _num(v) for k, v in value.items()}


def _round_metrics(records: list[AuditRecord], numbers: list[int]) -> dict[int, dict[str, float | None]]:
    """Round -> the task's metrics after it: the coordinator's evaluation, else the sites' sums."""
    evaluations = _evaluations(records)
    out: dict[int, dict[str, float | None]] = {}
    for n in numbers:
        agg = _first([r for r in records if r.round == n], "aggregation.completed")
        metrics = _metric_dict(agg.details.get("metrics")) if agg else {}
        out[n] = metrics or _metric_dict(evaluations.get(n, {}).get("metrics"))
    return out


def _task_quality(
    records: list[AuditRecord], config: RunConfig, per_round: dict[int, dict[str, float | None]]
) -> TaskQuality | None:
    """The task and its final metrics (``run.completed``'s task block; else the last evaluated round)."""
    completed = next((r for r in reversed(records) if r.type == "run.completed"), None)
    block = completed.details.get("task") if completed else None
    block = block if isinstance(block, dict) else {}
    final = _metric_dict(block.get("metrics")) or next(
        (m for _, m in sorted(per_round.items(), reverse=True) if m), {}
    )
    job = config.job
    ref = _str(block.get("ref")) or (job.task.ref if job is not None and job.task is not None else None)
    if not final and ref is None:
        return None
    kind = _str(block.get("kind")) or ("regression" if "mse" in final else None)
    headline = _str(block.get("headline")) or ("mse" if kind == "regression" else None)
    seen = [k for m in [*per_round.values(), final] for k in m]
    names = sorted(set(seen), key=lambda k: (k != headline, seen.index(k)))
    return TaskQuality(
        ref=ref or "fedinfra.task.builtin:TabularTask", kind=kind, headline=headline, names=names, final=final
    )


def _summary(r: AuditRecord) -> str:
    d = r.details
    if r.type == "policy.evaluated":
        findings = [f for f in d.get("findings", []) if isinstance(f, dict)]
        counts = {s: sum(1 for f in findings if f.get("status") == s) for s in ("pass", "fail", "warn", "manual")}
        where = f" for {d['site']}" if d.get("site") else ""
        return f"{d.get('gate', '?')} gate{where}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    if r.type in ("site.admitted", "site.rejected"):
        extra = f": {d['reason']}" if d.get("reason") else ""
        return f"site {r.site}{extra}"
    if r.type == "checkpoint.published":
        size = d.get("tree_size")
        return f"tree size {size}" if size is not None else "checkpoint"
    if r.type in ("run.failed", "run.completed") and d.get("reason"):
        return str(d["reason"])
    if r.subject and r.subject.get("sha256"):
        return f"{r.subject.get('artifact', 'artifact')} sha256 {str(r.subject['sha256'])[:16]}…"
    return r.type


def _events(records: list[AuditRecord]) -> list[EventRow]:
    return [
        EventRow(
            seq=r.seq,
            ts=r.ts,
            type=r.type,
            actor=f"{r.actor_kind}:{r.actor_id}",
            outcome=r.outcome,
            summary=_summary(r),
        )
        for r in records
        if r.round is None or r.type not in _ROUND_TYPES | {"checkpoint.published", "policy.evaluated"}
    ]


def _evidence(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in sorted(value.items())} if isinstance(value, dict) else {}


def _findings(records: list[AuditRecord]) -> list[Finding]:
    out = []
    for r in records:
        if r.type != "policy.evaluated":
            continue
        d = r.details
        for f in d.get("findings", []):
            if not isinstance(f, dict):
                continue
            status = str(f.get("status", "fail"))
            out.append(
                Finding(
                    rule_id=str(f.get("rule_id") or f.get("rule") or "unknown"),
                    title=_str(f.get("title")),
                    citation=_str(f.get("citation")),
                    pack=_str(f.get("pack") or d.get("pack")),
                    gate=_str(f.get("gate") or d.get("gate")),
                    site=_str(f.get("site") or d.get("site")),
                    status=status if status in _FINDING_STATUS else "fail",
                    severity=_str(f.get("severity")),
                    message=_str(f.get("message")),
                    evidence=_evidence(f.get("evidence")),
                    waiver=_str(f.get("waiver")),
                    seq=r.seq,
                )
            )
    return out


def _roles(header: Header, sites: list[SiteView], config: RunConfig) -> list[RoleRow]:
    coordinator_purposes = [header.purpose] if header.purpose else []
    rows = [
        RoleRow(
            party="coordinator",
            organisation=None,
            role="processor (aggregation on behalf of the sites)",
            purposes=coordinator_purposes,
        )
    ]
    for view in sites:
        rows.append(
            RoleRow(
                party=view.name, organisation=view.get("organisation"), role=view.get("role"), purposes=view.purposes()
            )
        )
    return rows


SIM_KIT = "kits/coordinator"
"""Where a simulated run (``fedinfra demo``) keeps the coordinator kit, relative to its run directory."""


def receipts_dir(origin: str) -> str:
    """The directory under a site's ``receipts/`` holding what it kept of the log ``origin``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", origin)
    return name if name.strip(".") else "_"


def verify_command(store: str, origin: str, sites: list[str], *, simulated: bool, root: str = "") -> str:
    """The ``audit verify`` command the report prints (and ``fedinfra demo`` runs last).

    The coordinator kit pins the log's key (``[audit] vkey``) and the sites' cosigner keys
    (``[audit.cosigners]``, key ceremony); each site's receipts directory holds the newest
    checkpoint that site cosigned, without which a store cut back to an earlier cosigned
    checkpoint cannot be told from the whole log (RFC 9162 §8.1.4: only a newer checkpoint
    held by someone else shows a truncation). For a simulated run the paths are those of
    its run directory (``root`` prefixes them); for a deployed one they are placeholders:
    ``COORDINATOR_KIT`` and each site's home (``SITE_HOME_<site>``).
    """
    kit = f"{root}{SIM_KIT}" if simulated else "COORDINATOR_KIT"
    parts = ["fedinfra audit verify", f"{root}{store}" if simulated else store, "--public-key", f"{kit}/kit.toml"]
    if sites:
        parts += ["--witnesses", kit]
    for site in sites:  # a simulated site's home holds this log only; a deployed one may hold several
        if simulated:
            parts += ["--checkpoint", f"{root}site-homes/{site}/receipts"]
        else:
            home = "SITE_HOME_" + re.sub(r"[^A-Za-z0-9]", "_", site).upper()
            parts += ["--checkpoint", f"{home}/receipts/{receipts_dir(origin)}"]
    return " ".join(shlex.quote(p) if p != parts[0] else p for p in parts)


def build_report(log: VerifiedLog, run_id: str, config: RunConfig) -> ReportData:
    """Assemble the report of ``run_id`` from a verified ``log`` and the run's configuration."""
    records = run_records(log, run_id)
    if not records:
        raise LookupError(run_id)
    cp = covering_checkpoint(log, records[-1].index)
    # Everything below sees the log only as the cited checkpoint signs it, so entries
    # appended later (reads, this report's own record) cannot change the report.
    log = dataclasses.replace(
        log,
        records=[r for r in log.records if r.index < cp.tree_size],
        checkpoints=[c for c in log.checkpoints if c.tree_size <= cp.tree_size],
    )
    header = _header(log, run_id, records, cp, config)
    sites = _site_views(records, config)
    numbers = _round_numbers(records)
    grid = _participation(records, sites, numbers)
    budgets = _budgets(records, sites) if _dp_on(records, config) else []
    controls = _controls(records, config, budgets, log)
    rounds = _rounds(records, numbers)
    per_round = _round_metrics(records, numbers)
    findings = _findings(records)
    participants = _participants(records, sites, grid, numbers)
    chain = [
        c for c in sorted(log.checkpoints, key=lambda c: c.tree_size) if records[0].index < c.tree_size <= cp.tree_size
    ]
    packs = [p.name for p in header.policy_packs]
    admitted = {
        r.site: f"{r.details['cosigner']}+{r.details.get('cosigner_key_id', '?')}"
        for r in records
        if r.type == "site.admitted" and isinstance(r.details.get("cosigner"), str)
    }
    cosigners = sorted(set(admitted.values()))
    sim = log.origin == f"fedinfra-audit.sim-{run_id}"
    cosigned = {name for names in log.cosigners.values() for name in names}
    held = {site for site, key in admitted.items() if key.rsplit("+", 1)[0] in cosigned}  # it keeps a checkpoint
    verify = VerifyInfo(
        public_key=log.public_key,
        key_name=cp.key_name,
        key_id=cp.key_id,
        command=verify_command(log.store_name, log.origin, sorted(s for s in admitted if s in held), simulated=sim),
        checkpoints=[_ref(c) for c in chain],
        cosigners=cosigners,
    )
    findings_grid = verdict.finding_grid(findings, [v.name for v in sites])
    hipaa = (
        regulation.hipaa_table(records, sites, controls, findings, len(chain))
        if regulation.is_health_run(header.scenario, packs)
        else []
    )
    pci = (
        regulation.pci_table(records, controls, findings, log)
        if regulation.is_payment_run(header.scenario, packs)
        else None
    )
    evidence = regulation.manual_evidence(sites)
    kept = regulation.retention(records, sites, packs)
    rule_grid = verdict.reconcile(findings_grid, [*hipaa, *(pci or [])])
    return ReportData(
        header=header,
        verdict=verdict.verdict(header, controls, findings, [*hipaa, *(pci or [])], evidence, kept),
        summary=verdict.summary(records, header, config, participants, controls, rule_grid, cp, log.cosigners),
        roles=_roles(header, sites, config),
        participants=participants,
        data=_data_rows(sites),
        controls=controls,
        rounds=rounds,
        events=_events(records),
        metrics=[
            MetricPoint(round=r.round, test_loss=r.test_loss, test_accuracy=r.test_accuracy, metrics=per_round[r.round])
            for r in rounds
        ],
        task=_task_quality(records, config, per_round),
        findings=findings,
        finding_grid=rule_grid,
        art30=regulation.art30(header, sites, controls),
        hipaa=hipaa,
        pci=pci,
        manual_evidence=evidence,
        retention=kept,
        verify=verify,
        limitations=regulation.LIMITATIONS,
        round_numbers=numbers,
        participation=grid,
    )
