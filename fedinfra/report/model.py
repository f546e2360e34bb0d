"""The content of a compliance report (:class:`ReportData`), independent of any format.

Every renderer (JSON, HTML, PDF, charts) reads only this model, and only
:mod:`fedinfra.report.collect` fills it, from audit records and configuration. That keeps
the report reproducible: the same store and configuration give the same ``ReportData``,
hence the same JSON byte for byte.

The model is published as ``compliance/report.schema.json`` (JSON Schema 2020-12) so that
other tools can consume the JSON form; a unit test checks the two stay in step.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Bumped whenever the JSON form changes incompatibly.
SCHEMA_VERSION = "1.1"

RunStatus = Literal["completed", "failed", "incomplete"]
#: The report's one verdict: the run's recorded outcome, downgraded to "completed with
#: findings" when any requirement table or finding is not met (issue 18: one verdict).
VerdictStatus = Literal["completed", "completed with findings", "failed", "incomplete"]
FindingStatus = Literal["pass", "fail", "warn", "manual"]
Scalar = str | int | float | bool | None
Evidence = Scalar | list[Scalar] | dict[str, Any]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_serialization_defaults_required=True)


class PackRef(_Model):
    """A policy pack the run was evaluated against, by name and SHA-256."""

    name: str
    sha256: str | None = None


class CheckpointRef(_Model):
    """A signed C2SP checkpoint (RFC 9162 tree head) in the log."""

    tree_size: int
    root_hash: str = Field(description="base64 Merkle tree hash, as in the checkpoint body")
    key_name: str
    key_id: str = Field(description="4-byte signed-note key hash, hex")
    note: str = Field(description="the full signed note, verifiable with the public key")


class Header(_Model):
    """Who, what and which log: the first section of the report."""

    run_id: str
    job_name: str | None
    scenario: str | None
    purpose: str | None
    fedinfra_version: str | None
    status: RunStatus
    status_reason: str | None
    generated_at: str = Field(description="timestamp of the last audit entry covered (never the wall clock)")
    started_at: str
    policy_packs: list[PackRef]
    log_origin: str
    first_seq: int
    last_seq: int
    entries: int
    final_checkpoint: CheckpointRef
    job_sha256: str | None


class RoleRow(_Model):
    """A party's GDPR role (Art. 4(7)-(8), Art. 26) and its declared purposes (Art. 5(1)(b))."""

    party: str
    organisation: str | None
    role: str | None
    purposes: list[str]


class Participant(_Model):
    """A site that asked to join: its legal position and how far it took part."""

    site: str
    organisation: str | None
    admission: Literal["admitted", "rejected"]
    admission_seq: int
    rejection_reason: str | None
    jurisdiction: str | None
    transfer_basis: str
    lawful_basis: str | None
    art9_condition: str | None
    consent_status: str | None
    consent_reference: str | None
    rounds_joined: list[int]
    receipts_verified: int


class FlaggedColumn(_Model):
    """One column the site's PHI/PII scan flagged."""

    column: str
    identifier: str
    share: float | None


class DataRow(_Model):
    """A site's data set as declared and scanned (only the summary leaves the site)."""

    site: str
    dataset_fingerprint: str | None
    columns: dict[str, str] = Field(description="declared schema: column -> type")
    rows: int | None
    flagged: list[FlaggedColumn]
    k_anonymity: int | None
    scan_verdict: str


class EpsilonPoint(_Model):
    """Epsilon a site spent in one round, and its running total, citing the log entry.

    ``released`` is false for a round abandoned below its secure-aggregation threshold:
    the site charged it write-ahead (before its masked input left) and the charge stands,
    but no sum of that round was released.
    """

    round: int
    epsilon: float
    cumulative: float
    seq: int
    released: bool = True


class SiteBudget(_Model):
    """A site's privacy spend in this run against the caps it declared."""

    site: str
    points: list[EpsilonPoint]
    total: float
    cap_run: float | None
    cap_lifetime: float | None
    within_cap: bool | None


class SecureAggRound(_Model):
    """One round's secure-aggregation figures (secagg): who was asked, the threshold, who is in the sum."""

    round: int
    n: int
    t: int
    k: int
    max_dropouts: int
    max_colluders: int
    min_contributors: int
    survivors: list[str]
    dropped: list[str]


class Controls(_Model):
    """Technical controls in force (GDPR Art. 25, 32; HIPAA 164.312)."""

    dp_mechanism: str
    dp_guarantee: str = Field(description="what the DP figures mean, or that there is no DP guarantee")
    site_releases: list[list[str]] = Field(
        default_factory=list, description="[value, when, mechanism] for everything a site releases under DP"
    )
    noise_multiplier: float | None
    noise_multiplier_source: str | None = Field(description="job (declared) or budget.spent (planned by the sites)")
    max_grad_norm: float | None
    delta: float | None
    epsilon_target: float | None
    accountant: str | None
    budgets: list[SiteBudget]
    secure_aggregation: str
    secure_aggregation_params: dict[str, Scalar]
    secure_aggregation_rounds: list[SecureAggRound] = Field(
        default_factory=list, description="secagg: n, t, k, bounds, survivors and dropouts of every round"
    )
    tls: bool | None
    transport: str = Field(description="tls, insecure, in-process (simulation: no network link) or not recorded")
    audit_log: str


class RoundRow(_Model):
    """One round in the timeline, with the sequence numbers of its audit entries."""

    round: int
    first_seq: int
    last_seq: int
    started_seq: int | None
    sites_sampled: int | None
    updates_received: list[int] = Field(description="seq of each update.received")
    updates_rejected: list[int] = Field(description="seq of each update.rejected")
    aggregation_seq: int | None
    checkpoint_seq: int | None
    test_loss: float | None
    test_accuracy: float | None


class EventRow(_Model):
    """An audit entry outside the rounds (admission, policy, close)."""

    seq: int
    ts: str
    type: str
    actor: str
    outcome: str
    summary: str


class Finding(_Model):
    """One policy finding: rule, citation, status, the evidence used and any waiver."""

    rule_id: str
    title: str | None
    citation: str | None
    pack: str | None
    gate: str | None
    site: str | None
    status: FindingStatus
    severity: str | None
    message: str | None
    evidence: dict[str, Evidence]
    waiver: str | None
    seq: int


class TableRow(_Model):
    """A row of a regulation table: the requirement, the control, the evidence, a status."""

    ref: str
    requirement: str
    control: str
    evidence: str
    status: Literal["met", "not met", "partly met", "manual"]


class Art30Field(_Model):
    """One field of the GDPR Art. 30(1) record of processing activities."""

    point: str
    field: str
    value: str


class ManualEvidence(_Model):
    """Evidence a person must supply and attest (DPIA, BAA/DPA, IRB approval)."""

    kind: str
    site: str
    reference: str
    sha256: str | None
    date: str | None
    attested_by: str
    placeholder: bool = Field(description="the hash is all zeros or the document is a simulation's stand-in")


class OpenFinding(_Model):
    """One reason the run is "completed with findings": where it was found and what it says."""

    source: str = Field(description="e.g. HIPAA 164.312(e)(1), policy rule gdpr.dpia, privacy budget, DPIA")
    site: str | None
    text: str


class Verdict(_Model):
    """The report's single status, computed from every table, finding, budget and placeholder."""

    status: VerdictStatus
    tone: Literal["green", "amber", "red"]
    open_findings: list[OpenFinding]
    waived: list[OpenFinding]
    notes: list[str] = Field(description="what the run does not show (a simulation's transport, keys)")


class GridRow(_Model):
    """A policy rule across the job gate and the sites: one cell per column, worst status over rounds."""

    rule_id: str
    title: str | None
    citation: str | None
    pack: str | None
    cells: dict[str, str] = Field(description="column (job or site) -> pass/fail/warn/manual/waived/contradicted")
    evaluations: int


class SiteEpsilon(_Model):
    """Page 1: a site's epsilon against its caps."""

    site: str
    spent: float
    cap_run: float | None
    cap_lifetime: float | None
    within_cap: bool | None


class Summary(_Model):
    """Page 1: what a DPO looks for first."""

    task: str
    dataset: str | None
    model: str | None
    rounds: int
    sites_admitted: int
    sites_rejected: int
    protections: list[str]
    epsilon: list[SiteEpsilon]
    policy_totals: dict[str, int] = Field(description="distinct (rule, column) outcomes by status")
    audit: str
    cosigners: list[str]
    final_accuracy: float | None


class Retention(_Model):
    """How long records and data are kept, against what the packs require."""

    audit_retention_days: int | None
    required_days: int | None
    required_by: str | None
    site_data_days: dict[str, int | None]


class VerifyInfo(_Model):
    """What an auditor needs to check the log independently."""

    public_key: str = Field(description="signed-note verifier key: name+hash+base64(0x01||key)")
    key_name: str
    key_id: str
    command: str
    checkpoints: list[CheckpointRef]
    cosigners: list[str] = Field(
        default_factory=list,
        description="the sites' cosigner keys (name+key id) announced at admission; they cosign the final checkpoint",
    )


class MetricPoint(_Model):
    """Model quality after a round (drawn as the loss/accuracy chart)."""

    round: int
    test_loss: float | None
    test_accuracy: float | None
    metrics: dict[str, float | None] = Field(
        default_factory=dict, description="the task's metrics after this round (fedinfra.task.metrics), from the log"
    )


class TaskQuality(_Model):
    """The task the run trained and its metrics: per round in ``metrics``, final here."""

    ref: str = Field(description="import path of the task ('module:Class'); the built-in tabular task otherwise")
    kind: str | None = Field(description="binary, multiclass or regression; None if the log does not say")
    headline: str | None = Field(description="the metric the task is judged by (ROC AUC for binary tasks)")
    names: list[str] = Field(description="the metric names, headline first")
    final: dict[str, float | None] = Field(description="metrics of the final model as the log records them")


class ReportData(_Model):
    """Everything a compliance report says, in the order the report says it."""

    schema_version: str = SCHEMA_VERSION
    header: Header
    verdict: Verdict
    summary: Summary
    roles: list[RoleRow]
    participants: list[Participant]
    data: list[DataRow]
    controls: Controls
    rounds: list[RoundRow]
    events: list[EventRow]
    metrics: list[MetricPoint]
    task: TaskQuality | None = Field(description="the task and its metrics; None when the log records none")
    findings: list[Finding]
    finding_grid: list[GridRow]
    art30: list[Art30Field]
    hipaa: list[TableRow]
    pci: list[TableRow] | None
    manual_evidence: list[ManualEvidence]
    retention: Retention
    verify: VerifyInfo
    limitations: list[str]
    round_numbers: list[int]
    participation: dict[str, list[str]] = Field(
        description="site -> status per round in round_numbers: admitted, dropped, rejected, not-sampled"
    )


SCHEMA_ID = "https://fedinfra.dev/schemas/compliance-report/1.1/report.schema.json"


def report_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of the JSON form, as published in ``compliance/report.schema.json``."""
    schema = ReportData.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "fedinfra compliance report",
    }
