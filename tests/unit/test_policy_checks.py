"""Every registered check, called directly: its verdict, its one-line message and its evidence.

The message is what a site operator or an auditor reads in a finding (and what the audit log
keeps), so each check's exact outcome is pinned on both sides of its boundary; issue 20's
mutation run found most site-gate checks without a unit test.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from pydantic import BaseModel

from fedinfra.config import JobSpec, SiteManifest
from fedinfra.policy import CloseFacts, Facts, JobFacts, Outcome, RoundFacts
from fedinfra.policy import _checks as c
from fedinfra.policy._facts import EvidenceUnavailable
from fedinfra.policy._registry import NoParams, get_check
from fedinfra.policy.scan import ScanSummary
from fedinfra.policy.scan._summary import ColumnReport

TODAY = dt.date(2026, 1, 15)
NONE = NoParams()
SHA = "0" * 64


def _job(**kw: Any) -> JobSpec:
    base: dict[str, Any] = {
        "scenario": "hospital",
        "sites": {"count": 4, "min_sites": 2},
        "privacy": {"mechanism": "user-dp", "epsilon": 4.0},
        "secure_aggregation": {"mode": "bfv", "example_cap": 1},
    }
    base.update(kw)
    return JobSpec.model_validate(base)


def _site(**kw: Any) -> SiteManifest:
    base: dict[str, Any] = {"name": "s", "organisation": "o", "jurisdiction": "DE"}
    base.update(kw)
    return SiteManifest.model_validate(base)


def _facts(job: JobSpec | None = None, *, tls: bool | None = True, in_process: bool = False, **kw: Any) -> Facts:
    jf = JobFacts(spec=job or _job(), tls=tls, in_process=in_process, audit_enabled=True, audit_retention_days=2200)
    return Facts(job=jf, today=TODAY, **kw)


def _site_facts(**kw: Any) -> Facts:
    return _facts(site=_site(**kw))


# -- job gate --------------------------------------------------------------------------------------------


def test_tls_on_passes_and_off_fails_with_the_fix() -> None:
    assert c.tls_enabled(NONE, _facts(tls=True)) == Outcome(True, "TLS is on for every link")
    assert c.tls_enabled(NONE, _facts(tls=False)) == Outcome(False, "TLS is off; start without --insecure")


def test_an_in_process_simulation_has_no_link_to_protect_but_tls_on_is_still_reported_as_on() -> None:
    assert c.tls_enabled(NONE, _facts(tls=False, in_process=True)) == Outcome(
        True, "no network link: in-process simulation on loopback (deployments must use TLS)"
    )
    assert c.tls_enabled(NONE, _facts(tls=True, in_process=True)) == Outcome(True, "TLS is on for every link")


def test_unknown_tls_is_unavailable_evidence_naming_the_fact() -> None:
    with pytest.raises(EvidenceUnavailable, match=r"^whether TLS is on is not known$"):
        c.tls_enabled(NONE, _facts(tls=None))


@pytest.mark.parametrize(
    ("privacy", "mode", "require", "ok"),
    [
        ("user-dp", "bfv", "both", True),
        ("user-dp", "bfv", "any", True),
        ("dp-sgd", "none", "dp", True),
        ("dp-sgd", "none", "secure-aggregation", False),
        ("dp-sgd", "none", "both", False),
        ("none", "bfv", "secure-aggregation", True),
        ("none", "bfv", "dp", False),
        ("none", "bfv", "any", True),
        ("none", "none", "any", False),
    ],
)
def test_update_protection_follows_each_requirement(privacy: str, mode: str, require: str, ok: bool) -> None:
    sec: dict[str, Any] = {"mode": mode, "example_cap": 1} if mode != "none" else {"mode": "none"}
    job = _job(privacy={"mechanism": privacy, "epsilon": 4.0}, secure_aggregation=sec)
    dp, sa = privacy != "none", mode != "none"

    got = c.update_protection(c.ProtectionParams(require=require), _facts(job))

    ev = {"dp": dp, "secure_aggregation": sa, "required": require}
    if ok:
        assert got == Outcome(True, f"updates protected (dp={dp}, secure aggregation={sa})", ev)
    else:
        message = (
            f"updates unprotected for requirement '{require}'; set privacy.mechanism and/or secure_aggregation.mode"
        )
        assert got == Outcome(False, message, ev)


def test_update_protection_requires_any_by_default() -> None:
    assert c.ProtectionParams().require == "any"


def test_epsilon_cap_at_above_and_without_a_target() -> None:
    cap = c.EpsilonCapParams(max_epsilon=4.0)
    ev = {"max_epsilon": 4.0}
    assert c.epsilon_cap(cap, _facts()) == Outcome(True, "epsilon 4 <= cap 4", ev)
    job = _job(privacy={"mechanism": "user-dp", "epsilon": 4.5})
    assert c.epsilon_cap(cap, _facts(job)) == Outcome(False, "epsilon 4.5 > cap 4", ev)
    job = _job(privacy={"mechanism": "user-dp", "noise_multiplier": 1.0})
    assert c.epsilon_cap(cap, _facts(job)) == Outcome(
        False, "privacy.epsilon is not set, so the cap cannot be checked; set a target epsilon", ev
    )


def test_epsilon_cap_without_dp_fails_unless_the_pack_allows_no_dp() -> None:
    job = _job(privacy={"mechanism": "none"})
    assert c.EpsilonCapParams(max_epsilon=1.0).require_dp is True
    assert c.epsilon_cap(c.EpsilonCapParams(max_epsilon=1.0), _facts(job)) == Outcome(
        False, "differential privacy is off; set privacy.mechanism", {"max_epsilon": 1.0}
    )
    assert c.epsilon_cap(c.EpsilonCapParams(max_epsilon=1.0, require_dp=False), _facts(job)) == Outcome(
        True, "no DP in this job; no epsilon to cap", {"max_epsilon": 1.0}
    )


def test_min_sites_at_and_below_the_minimum() -> None:
    assert c.min_sites(c.MinSitesParams(min=2), _facts()) == Outcome(True, "sites.min_sites = 2 >= 2", {"required": 2})
    assert c.min_sites(c.MinSitesParams(min=3), _facts()) == Outcome(False, "sites.min_sites = 2 < 3", {"required": 3})


def test_audit_enabled_and_disabled_and_unknown() -> None:
    on = Facts(job=JobFacts(spec=_job(), audit_enabled=True), today=TODAY)
    off = Facts(job=JobFacts(spec=_job(), audit_enabled=False), today=TODAY)
    assert c.audit_enabled(NONE, on) == Outcome(True, "audit log enabled")
    assert c.audit_enabled(NONE, off) == Outcome(False, "audit log disabled; enable it in the server config")
    with pytest.raises(EvidenceUnavailable, match=r"^whether the audit log is on is not known$"):
        c.audit_enabled(NONE, Facts(job=JobFacts(spec=_job()), today=TODAY))


def test_audit_retention_at_and_below_the_minimum() -> None:
    facts = Facts(job=JobFacts(spec=_job(), audit_retention_days=365), today=TODAY)
    assert c.audit_retention(c.RetentionParams(min_days=365), facts) == Outcome(
        True, "audit retention 365 days >= required 365", {"required_days": 365}
    )
    assert c.audit_retention(c.RetentionParams(min_days=366), facts) == Outcome(
        False, "audit retention 365 days < required 366", {"required_days": 366}
    )
    with pytest.raises(EvidenceUnavailable, match=r"^the audit retention period is not known$"):
        c.audit_retention(c.RetentionParams(min_days=1), Facts(job=JobFacts(spec=_job()), today=TODAY))


# -- site gate -------------------------------------------------------------------------------------------


def test_lawful_basis_missing_not_allowed_and_declared() -> None:
    anything = c.LawfulBasisParams()
    assert c.lawful_basis(anything, _site_facts()) == Outcome(
        False, "no lawful basis declared; set lawful_basis in site.toml (GDPR Art. 6(1))"
    )
    assert c.lawful_basis(anything, _site_facts(lawful_basis="public-task")) == Outcome(
        True, "lawful basis Art. 6(1)(e) (public-task)", {"point": "Art. 6(1)(e)"}
    )
    only_consent = c.LawfulBasisParams(allowed=["consent"])
    assert c.lawful_basis(only_consent, _site_facts(lawful_basis="public-task")) == Outcome(
        False, "lawful basis Art. 6(1)(e) not accepted here", {"point": "Art. 6(1)(e)"}
    )
    assert c.lawful_basis(only_consent, _site_facts(lawful_basis="consent")) == Outcome(
        True, "lawful basis Art. 6(1)(a) (consent)", {"point": "Art. 6(1)(a)"}
    )


def test_a_site_gate_check_without_a_manifest_is_unavailable_evidence() -> None:
    with pytest.raises(EvidenceUnavailable, match="no site manifest"):
        c.lawful_basis(c.LawfulBasisParams(), _facts())


def test_art9_condition_for_health_data_by_sector_or_category() -> None:
    assert c.art9_condition(NONE, _site_facts(sector="finance")) == Outcome(True, "no special-category data declared")
    missing = Outcome(False, "health data without an Art. 9(2) condition; set art9_condition in site.toml")
    assert c.art9_condition(NONE, _site_facts(sector="health")) == missing
    assert c.art9_condition(NONE, _site_facts(sector="finance", data_categories=["health"])) == missing
    assert c.art9_condition(NONE, _site_facts(sector="health", art9_condition="research-statistics")) == Outcome(
        True, "Art. 9(2)(j) (research-statistics)", {"point": "Art. 9(2)(j)"}
    )


@pytest.mark.parametrize(
    ("declared", "named"),
    [
        (["Health"], "health"),
        (["medical"], "health"),
        (["genetic"], "genetic"),
        (["Biometric"], "biometric"),
        (["ethnic origin"], "racial or ethnic origin"),
        (["political_opinions"], "political opinions"),
        (["religious-beliefs"], "religious or philosophical beliefs"),
        (["trade union membership"], "trade union membership"),
        (["sexual-orientation"], "sex life or sexual orientation"),
        (["financial", " GENETIC ", "health", "medical"], "genetic, health"),
    ],
)
def test_every_art9_special_category_needs_a_condition_whatever_its_spelling(declared: list[str], named: str) -> None:
    """GDPR Art. 9(1) lists more than health data: genetic, biometric, racial or ethnic origin, political
    opinions, beliefs, trade union membership, sex life. A site declaring any of them, in any case or
    separator, needs an Art. 9(2) condition (it used to pass as "no special-category data")."""
    facts = _site_facts(sector="finance", data_categories=declared)
    assert c.art9_condition(NONE, facts) == Outcome(
        False, f"{named} data without an Art. 9(2) condition; set art9_condition in site.toml"
    )
    with_condition = _site_facts(sector="finance", data_categories=declared, art9_condition="explicit-consent")
    assert c.art9_condition(NONE, with_condition).ok is True


def test_categories_outside_art9_need_no_condition() -> None:
    facts = _site_facts(sector="finance", data_categories=["financial", "demographic", "usage", "healthy-eating"])
    assert c.art9_condition(NONE, facts) == Outcome(True, "no special-category data declared")


def test_purpose_limitation_is_and_is_not_among_the_declared_purposes() -> None:
    job = _job(purpose="medical-research")
    assert c.purpose_limitation(NONE, _facts(job, site=_site(purposes=["medical-research"]))) == Outcome(
        True, "purpose 'medical-research' is among the site's purposes"
    )
    assert c.purpose_limitation(NONE, _facts(job, site=_site(purposes=["marketing"]))) == Outcome(
        False, "purpose 'medical-research' is not among the site's purposes"
    )


def test_consent_withdrawn_blocks_even_when_consent_is_not_the_basis() -> None:
    withdrawn = {"reference": "form-3", "status": "withdrawn"}
    assert c.consent_valid(NONE, _site_facts(lawful_basis="public-task", consent=withdrawn)) == Outcome(
        False, "consent form-3 withdrawn; stop processing for this purpose"
    )


def test_consent_as_the_basis_needs_a_given_record() -> None:
    assert c.consent_valid(NONE, _site_facts(lawful_basis="public-task")) == Outcome(
        True, "consent is not the basis of processing"
    )
    assert c.consent_valid(NONE, _site_facts(lawful_basis="consent")) == Outcome(
        False, "consent is the basis but no consent record is declared; add [consent]"
    )
    assert c.consent_valid(NONE, _site_facts(art9_condition="explicit-consent")) == Outcome(
        False, "consent is the basis but no consent record is declared; add [consent]"
    )
    given = {"reference": "form-3", "status": "given"}
    assert c.consent_valid(NONE, _site_facts(lawful_basis="consent", consent=given)) == Outcome(
        True, "consent form-3 is given"
    )
    pending = {"reference": "form-3", "status": "pending"}
    assert c.consent_valid(NONE, _site_facts(lawful_basis="consent", consent=pending)) == Outcome(
        False, "consent form-3 is pending"
    )


def _transfer_ev() -> dict[str, object]:
    return {"eea_list_as_of": "2025-06-30", "adequacy_list_as_of": "2025-06-30"}


def test_transfer_inside_the_eea_or_under_a_safeguard_is_allowed() -> None:
    assert c.transfer_allowed(NONE, _site_facts(jurisdiction="DE")) == Outcome(
        True, "DE is in the EEA (no Chapter V transfer)", _transfer_ev()
    )
    assert c.transfer_allowed(
        NONE, _site_facts(jurisdiction="BR", transfer_safeguard="standard-contractual-clauses")
    ) == Outcome(True, "BR: Art. 46 safeguard declared (standard-contractual-clauses)", _transfer_ev())


def test_transfer_without_adequacy_or_safeguard_is_refused() -> None:
    assert c.transfer_allowed(NONE, _site_facts(jurisdiction="BR")) == Outcome(
        False, "BR is outside the EEA, has no adequacy decision and no Art. 46 safeguard is declared", _transfer_ev()
    )


def test_transfer_under_a_full_partial_or_lapsed_adequacy_decision() -> None:
    uy = c.transfer_allowed(NONE, _site_facts(jurisdiction="UY"))
    assert uy == Outcome(
        True, "UY has an adequacy decision (Art. 45)", {**_transfer_ev(), "decision": uy.evidence["decision"]}
    )
    assert uy.evidence["decision"] == "Commission Implementing Decision 2012/484/EU"
    ca = c.transfer_allowed(NONE, _site_facts(jurisdiction="CA"))
    assert (ca.ok, ca.message) == (
        None,
        "CA: adequacy covers only commercial organisations subject to PIPEDA; confirm the recipient is covered",
    )
    assert ca.evidence == {**_transfer_ev(), "decision": "Commission Decision 2002/2/EC"}
    gb = _facts(site=_site(jurisdiction="GB"))  # valid until 2025-12-27; TODAY is 2026-01-15
    assert c.transfer_allowed(NONE, gb) == Outcome(
        False,
        "GB: adequacy decision lapsed on 2025-12-27 per the reference list; "
        "declare an Art. 46 safeguard or refresh the list",
        {**_transfer_ev(), "decision": gb_decision()},
    )
    on_the_last_day = Facts(job=gb.job, site=gb.site, today=dt.date(2025, 12, 27))
    assert c.transfer_allowed(NONE, on_the_last_day) == Outcome(
        True, "GB has an adequacy decision (Art. 45)", {**_transfer_ev(), "decision": gb_decision()}
    )


def gb_decision() -> str:
    from fedinfra.policy._reference import adequacy_list

    return adequacy_list().countries["GB"].decision


def _column(name: str, *, identifier: str | None = None, in_training: bool = True) -> ColumnReport:
    blocking = identifier is not None and in_training
    return ColumnReport(
        column=name, dtype="string", non_null=10, identifier=identifier, in_training=in_training, blocking=blocking
    )


def _scan(*columns: ColumnReport, qi: list[str] | None = None, k: int | None = None, small: int = 0) -> ScanSummary:
    return ScanSummary(
        source="t",
        format="table",
        rows_scanned=10,
        columns=list(columns),
        quasi_identifiers=qi or [],
        k_anonymity=k,
        rows_in_small_groups=small,
    )


def test_identifiers_in_training_columns_block_and_name_column_and_kind() -> None:
    scan = _scan(
        _column("mail", identifier="email"),
        _column("ssn", identifier="ssn"),
        _column("phone", identifier="phone", in_training=False),
        _column("age"),
    )
    got = c.no_identifiers(c.IdentifierParams(), _facts(scan=scan))
    assert got == Outcome(
        False,
        "2 training column(s) hold identifiers: mail (email), ssn (ssn); "
        "drop them from feature_columns or de-identify the data",
        {"identifier_columns": ["mail:email", "ssn:ssn"], "excluded_identifier_columns": ["phone"]},
    )
    only_ssn = c.no_identifiers(c.IdentifierParams(kinds=["ssn"]), _facts(scan=scan))
    assert only_ssn.ok is False
    assert only_ssn.evidence["identifier_columns"] == ["ssn:ssn"]


def test_no_identifier_among_training_columns_passes() -> None:
    scan = _scan(_column("phone", identifier="phone", in_training=False), _column("age"))
    assert c.no_identifiers(c.IdentifierParams(), _facts(scan=scan)) == Outcome(
        True,
        "no identifier among the training columns",
        {"identifier_columns": [], "excluded_identifier_columns": ["phone"]},
    )
    only_ssn = _scan(_column("mail", identifier="email"))
    assert c.no_identifiers(c.IdentifierParams(kinds=["ssn"]), _facts(scan=only_ssn)).ok is True


def test_k_anonymity_at_below_and_without_quasi_identifiers() -> None:
    assert c.k_anonymity(c.KAnonParams(min_k=5), _facts(scan=_scan())) == Outcome(
        True, "no quasi-identifier columns found"
    )
    scan = _scan(qi=["zip", "age"], k=5, small=0)
    assert c.k_anonymity(c.KAnonParams(min_k=5), _facts(scan=scan)) == Outcome(
        True, "k = 5 over 2 quasi-identifier(s) >= 5", {"rows_in_small_groups": 0}
    )
    scan = _scan(qi=["zip", "age"], k=4, small=7)
    assert c.k_anonymity(c.KAnonParams(min_k=5), _facts(scan=scan)) == Outcome(
        False, "k = 4 over 2 quasi-identifier(s) < 5", {"rows_in_small_groups": 7}
    )


def test_k_anonymity_is_unavailable_evidence_when_quasi_identifiers_are_named_without_k() -> None:
    """Protects fail-closed k-anonymity: a scan summary (e.g. the one a site sends at admission, where
    k_anonymity defaults to None) that names quasi-identifiers but carries no k is an unknown fact, not
    the vacuous 'no quasi-identifier columns found' pass it used to be."""
    scan = _scan(qi=["zip", "age"], k=None)
    with pytest.raises(EvidenceUnavailable, match=r"^k-anonymity over zip, age is not known$"):
        c.k_anonymity(c.KAnonParams(min_k=5), _facts(scan=scan))


def test_a_k_without_named_quasi_identifiers_is_still_held_to_the_minimum() -> None:
    """Protects the other half of that rule: only a summary with neither quasi-identifiers nor k passes as
    having none; a k below the minimum fails even when the summary names no quasi-identifier."""
    assert c.k_anonymity(c.KAnonParams(min_k=5), _facts(scan=_scan(k=4, small=4))) == Outcome(
        False, "k = 4 over 0 quasi-identifier(s) < 5", {"rows_in_small_groups": 4}
    )


def test_a_scan_check_without_a_scan_is_unavailable_evidence() -> None:
    with pytest.raises(EvidenceUnavailable, match="no PHI/PII scan summary"):
        c.k_anonymity(c.KAnonParams(min_k=2), _facts())


def _dpia(date: dt.date) -> dict[str, object]:
    return {"reference": "DPIA-7", "sha256": SHA, "date": date}


def test_dpia_missing_future_too_old_and_current() -> None:
    any_age = c.DpiaParams()
    assert c.dpia(any_age, _site_facts()) == Outcome(
        False, "no DPIA declared; add [dpia] with reference, sha256 and date"
    )
    tomorrow = TODAY + dt.timedelta(days=1)
    assert c.dpia(any_age, _site_facts(dpia=_dpia(tomorrow))) == Outcome(
        False, "DPIA DPIA-7 is dated in the future (2026-01-16)"
    )
    assert c.dpia(any_age, _site_facts(dpia=_dpia(TODAY))) == Outcome(True, "DPIA DPIA-7 dated 2026-01-15")
    old = TODAY - dt.timedelta(days=366)
    assert c.dpia(any_age, _site_facts(dpia=_dpia(old))) == Outcome(True, "DPIA DPIA-7 dated 2025-01-14")
    assert c.dpia(c.DpiaParams(max_age_days=365), _site_facts(dpia=_dpia(old))) == Outcome(
        False, "DPIA DPIA-7 is 366 days old (> 365); review it (Art. 35(11))"
    )
    assert c.dpia(c.DpiaParams(max_age_days=366), _site_facts(dpia=_dpia(old))) == Outcome(
        True, "DPIA DPIA-7 dated 2025-01-14"
    )


def test_agreement_by_kind_and_role() -> None:
    baa = c.AgreementParams(kinds=["baa"], roles=["processor"])
    assert c.agreement(baa, _site_facts(role="controller")) == Outcome(True, "not required for role controller")
    assert c.agreement(baa, _site_facts(role="processor")) == Outcome(
        False, "no baa on record; add it under [[agreements]]"
    )
    either = c.AgreementParams(kinds=["baa", "dpa"])
    signed = [
        {"kind": "dpa", "reference": "D-1", "signed": dt.date(2025, 3, 1)},
        {"kind": "service-provider-contract", "reference": "S-1", "signed": dt.date(2025, 3, 2)},
        {"kind": "baa", "reference": "B-1", "signed": dt.date(2025, 3, 3)},
    ]
    assert c.agreement(either, _site_facts(agreements=signed[1:2])) == Outcome(
        False, "no baa or dpa on record; add it under [[agreements]]"
    )
    assert c.agreement(either, _site_facts(agreements=signed)) == Outcome(
        True, "dpa D-1 signed 2025-03-01, baa B-1 signed 2025-03-03"
    )


def test_site_run_budget_against_the_per_run_cap() -> None:
    site = _site(budget={"epsilon_per_run": 4.0})
    assert c.site_run_budget(NONE, _facts(site=site)) == Outcome(True, "job epsilon 4 <= site per-run cap 4")
    job = _job(privacy={"mechanism": "user-dp", "epsilon": 4.5})
    assert c.site_run_budget(NONE, _facts(job, site=site)) == Outcome(False, "job epsilon 4.5 > site per-run cap 4")
    no_dp = _job(privacy={"mechanism": "none"})
    assert c.site_run_budget(NONE, _facts(no_dp, site=site)) == Outcome(True, "no differential privacy spend")
    planned = _job(privacy={"mechanism": "user-dp", "noise_multiplier": 1.0})
    with pytest.raises(EvidenceUnavailable, match=r"^the job's target epsilon is not known$"):
        c.site_run_budget(NONE, _facts(planned, site=site))


def test_site_lifetime_budget_adds_the_spend_to_the_job() -> None:
    site = _site(budget={"epsilon_per_run": 4.0, "epsilon_lifetime": 10.0})
    assert c.site_lifetime_budget(NONE, _facts(site=site, site_epsilon_spent=6.0)) == Outcome(
        True, "spent 6 + job 4 <= lifetime cap 10"
    )
    assert c.site_lifetime_budget(NONE, _facts(site=site, site_epsilon_spent=6.5)) == Outcome(
        False, "spent 6.5 + job 4 > lifetime cap 10"
    )
    no_dp = _job(privacy={"mechanism": "none"})
    assert c.site_lifetime_budget(NONE, _facts(no_dp, site=site)) == Outcome(True, "no differential privacy spend")
    with pytest.raises(EvidenceUnavailable, match=r"^the site's lifetime epsilon spent is not known$"):
        c.site_lifetime_budget(NONE, _facts(site=site))
    planned = _job(privacy={"mechanism": "user-dp", "noise_multiplier": 1.0})
    with pytest.raises(EvidenceUnavailable, match=r"^the job's target epsilon is not known$"):
        c.site_lifetime_budget(NONE, _facts(planned, site=site, site_epsilon_spent=0.0))


def test_data_retention_missing_too_long_and_declared() -> None:
    assert c.data_retention(c.SiteRetentionParams(), _site_facts()) == Outcome(
        False, "no retention period declared; set retention_days in site.toml"
    )
    assert c.data_retention(c.SiteRetentionParams(), _site_facts(retention_days=4000)) == Outcome(
        True, "retention 4000 days"
    )
    assert c.data_retention(c.SiteRetentionParams(max_days=3650), _site_facts(retention_days=3651)) == Outcome(
        False, "retention 3651 days exceeds 3650"
    )
    assert c.data_retention(c.SiteRetentionParams(max_days=3650), _site_facts(retention_days=3650)) == Outcome(
        True, "retention 3650 days"
    )


def test_dpo_contact_declared_or_not() -> None:
    assert c.dpo_contact(NONE, _site_facts()) == Outcome(False, "no DPO contact; add [dpo]")
    dpo = {"name": "D. P. O.", "email": "dpo@example.org"}
    assert c.dpo_contact(NONE, _site_facts(dpo=dpo)) == Outcome(True, "DPO contact declared")


def test_dataset_declared_with_features_and_schema() -> None:
    assert c.dataset_declared(NONE, _site_facts()) == Outcome(False, "no [dataset] declared")
    bare = {"path": "d.csv", "label_column": "y"}
    assert c.dataset_declared(NONE, _site_facts(dataset=bare)) == Outcome(
        False, "dataset declaration lacks feature_columns, columns"
    )
    schema_only = {**bare, "columns": {"y": "int", "a": "float"}}
    assert c.dataset_declared(NONE, _site_facts(dataset=schema_only)) == Outcome(
        False, "dataset declaration lacks feature_columns"
    )
    full = {**schema_only, "feature_columns": ["a"]}
    assert c.dataset_declared(NONE, _site_facts(dataset=full)) == Outcome(
        True, "1 feature column(s) with schema declared"
    )


def test_a_manual_control_is_left_to_a_human() -> None:
    assert c.manual(c.ManualParams(question="Is the BAA filed?"), _facts()) == Outcome(None, "Is the BAA filed?")


# -- round and close gates -------------------------------------------------------------------------------


def test_round_participants_take_the_larger_of_the_pack_and_the_job_minimum() -> None:
    four = _facts(round=RoundFacts(round=3, participants=4))
    assert c.round_participants(c.ParticipantsParams(min=4), four) == Outcome(True, "round 3: 4 site(s) >= 4")
    assert c.round_participants(c.ParticipantsParams(min=5), four) == Outcome(False, "round 3: 4 site(s) < 5")
    one = _facts(round=RoundFacts(round=2, participants=1))
    assert c.round_participants(c.ParticipantsParams(min=1), one) == Outcome(False, "round 2: 1 site(s) < 2")


def test_epsilon_spent_within_the_target_at_round_and_close() -> None:
    at = _facts(round=RoundFacts(round=1, participants=4, epsilon_spent=4.0))
    assert c.epsilon_spent(NONE, at) == Outcome(True, "epsilon spent 4 <= target 4")
    over = _facts(round=RoundFacts(round=1, participants=4, epsilon_spent=4.0001))
    assert c.epsilon_spent(NONE, over) == Outcome(False, "epsilon spent 4 > target 4")
    closing = _facts(
        round=RoundFacts(round=1, participants=4, epsilon_spent=9.0),
        close=CloseFacts(rounds_completed=3, epsilon_spent=3.5),
    )
    assert c.epsilon_spent(NONE, closing) == Outcome(True, "epsilon spent 3.5 <= target 4")
    no_dp = _job(privacy={"mechanism": "none"})
    assert c.epsilon_spent(NONE, _facts(no_dp)) == Outcome(True, "no differential privacy spend")
    with pytest.raises(EvidenceUnavailable, match=r"^the epsilon spent is not known$"):
        c.epsilon_spent(NONE, _facts(close=CloseFacts(rounds_completed=3)))
    with pytest.raises(EvidenceUnavailable, match="no round facts"):
        c.epsilon_spent(NONE, _facts())


def test_epsilon_spent_allows_only_float_rounding_over_the_target() -> None:
    within = _facts(round=RoundFacts(round=1, participants=4, epsilon_spent=4.0 * (1 + 1e-10)))
    assert c.epsilon_spent(NONE, within).ok is True
    beyond = _facts(round=RoundFacts(round=1, participants=4, epsilon_spent=4.0 * (1 + 1e-8)))
    assert c.epsilon_spent(NONE, beyond).ok is False
    planned = _job(privacy={"mechanism": "user-dp", "noise_multiplier": 1.0})
    with pytest.raises(EvidenceUnavailable, match=r"^the job's target epsilon is not known$"):
        c.epsilon_spent(NONE, _facts(planned, round=RoundFacts(round=1, participants=4, epsilon_spent=1.0)))


def test_epsilon_spent_exactly_at_the_rounding_allowance_still_passes() -> None:
    """Protects the edge of the float allowance: a spend equal to target * (1 + 1e-9) (computed the same
    way) is within the target, at the round and at the close; the next float above it is not."""
    edge = 4.0 * (1 + 1e-9)
    assert c.epsilon_spent(NONE, _facts(round=RoundFacts(round=1, participants=4, epsilon_spent=edge))) == Outcome(
        True, "epsilon spent 4 <= target 4"
    )
    assert c.epsilon_spent(NONE, _facts(close=CloseFacts(rounds_completed=2, epsilon_spent=edge))).ok is True
    above = math.nextafter(edge, math.inf)
    assert c.epsilon_spent(NONE, _facts(close=CloseFacts(rounds_completed=2, epsilon_spent=above))) == Outcome(
        False, "epsilon spent 4 > target 4"
    )


def test_audit_verified_at_round_and_close() -> None:
    ok = _facts(round=RoundFacts(round=1, participants=4, audit_verified=True))
    assert c.audit_verified(NONE, ok) == Outcome(True, "audit log verifies")
    bad = _facts(close=CloseFacts(rounds_completed=3, audit_verified=False), round=ok.round)
    assert c.audit_verified(NONE, bad) == Outcome(False, "audit log does NOT verify; stop and investigate")
    with pytest.raises(EvidenceUnavailable, match=r"^whether the audit log verifies is not known$"):
        c.audit_verified(NONE, _facts(round=RoundFacts(round=1, participants=4)))


# -- the registry names and summaries --------------------------------------------------------------------


#: Every built-in check in its definition order: (pack name, function, parameter model).
CHECKS: list[tuple[str, Any, type]] = [
    ("tls-enabled", c.tls_enabled, NoParams),
    ("update-protection", c.update_protection, c.ProtectionParams),
    ("epsilon-cap", c.epsilon_cap, c.EpsilonCapParams),
    ("min-sites", c.min_sites, c.MinSitesParams),
    ("audit-enabled", c.audit_enabled, NoParams),
    ("audit-retention", c.audit_retention, c.RetentionParams),
    ("lawful-basis", c.lawful_basis, c.LawfulBasisParams),
    ("art9-condition", c.art9_condition, NoParams),
    ("purpose-limitation", c.purpose_limitation, NoParams),
    ("consent-valid", c.consent_valid, NoParams),
    ("transfer-allowed", c.transfer_allowed, NoParams),
    ("no-identifiers-in-training", c.no_identifiers, c.IdentifierParams),
    ("k-anonymity", c.k_anonymity, c.KAnonParams),
    ("dpia", c.dpia, c.DpiaParams),
    ("agreement", c.agreement, c.AgreementParams),
    ("site-run-budget", c.site_run_budget, NoParams),
    ("site-lifetime-budget", c.site_lifetime_budget, NoParams),
    ("data-retention", c.data_retention, c.SiteRetentionParams),
    ("dpo-contact", c.dpo_contact, NoParams),
    ("dataset-declared", c.dataset_declared, NoParams),
    ("manual", c.manual, c.ManualParams),
    ("round-participants", c.round_participants, c.ParticipantsParams),
    ("epsilon-spent", c.epsilon_spent, NoParams),
    ("audit-verified", c.audit_verified, NoParams),
]


@pytest.mark.parametrize(("name", "fn", "params"), CHECKS)
def test_each_check_is_registered_under_its_pack_name_with_its_parameters(name: str, fn: Any, params: type) -> None:
    """Protects the pack names and parameter models, and the summary (the docstring's first line)."""
    check = get_check(name)
    assert check.params is params
    assert check.fn is fn
    assert check.summary == fn.__doc__.strip().splitlines()[0]


def test_the_built_in_checks_are_registered_in_their_definition_order() -> None:
    """Protects the registry's insertion order: the checks are registered by explicit calls at the end of
    _checks.py (mutmut does not mutate decorated functions), in the order they were once decorated."""
    from fedinfra.policy._registry import _REGISTRY

    assert list(_REGISTRY)[: len(CHECKS)] == [name for name, _, _ in CHECKS]


@pytest.mark.parametrize(
    ("model", "bad"),
    [
        (c.EpsilonCapParams, {"max_epsilon": 0}),
        (c.MinSitesParams, {"min": 0}),
        (c.RetentionParams, {"min_days": 0}),
        (c.KAnonParams, {"min_k": 1}),
        (c.DpiaParams, {"max_age_days": 0}),
        (c.AgreementParams, {"kinds": []}),
        (c.SiteRetentionParams, {"max_days": 0}),
        (c.ManualParams, {"question": ""}),
        (c.ParticipantsParams, {"min": 0}),
    ],
)
def test_parameters_out_of_range_are_refused_at_load(model: type[BaseModel], bad: dict[str, object]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        model.model_validate(bad)


@pytest.mark.parametrize(
    ("model", "edge"),
    [
        (c.EpsilonCapParams, {"max_epsilon": 1e-9}),
        (c.MinSitesParams, {"min": 1}),
        (c.RetentionParams, {"min_days": 1}),
        (c.KAnonParams, {"min_k": 2}),
        (c.DpiaParams, {"max_age_days": 1}),
        (c.AgreementParams, {"kinds": ["dpa"]}),
        (c.SiteRetentionParams, {"max_days": 1}),
        (c.ManualParams, {"question": "?"}),
        (c.ParticipantsParams, {"min": 1}),
    ],
)
def test_parameters_on_the_edge_of_their_range_are_accepted(model: type[BaseModel], edge: dict[str, object]) -> None:
    model.model_validate(edge)
