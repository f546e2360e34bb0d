"""The evaluation engine: gates, statuses, fail-closed behaviour, audit payload."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from fedinfra.config import JobSpec, SiteManifest
from fedinfra.errors import PolicyViolation
from fedinfra.policy import (
    CloseFacts,
    Facts,
    JobFacts,
    Outcome,
    RoundFacts,
    evaluate,
    load_packs,
    parse_pack,
    register_check,
    registered_checks,
)
from fedinfra.policy._registry import NoParams

TODAY = dt.date(2026, 1, 15)

if "test-raises" not in registered_checks():

    @register_check("test-raises", NoParams)
    def _raises(_: NoParams, f: Facts) -> Outcome:
        raise ZeroDivisionError("division by zero in the check")


def _job(**kw: object) -> JobSpec:
    base: dict[str, object] = {
        "scenario": "hospital",
        "sites": {"count": 4, "min_sites": 2},
        "privacy": {"mechanism": "user-dp", "epsilon": 4.0},
        "secure_aggregation": {"mode": "bfv", "example_cap": 1},
    }
    base.update(kw)
    return JobSpec.model_validate(base)


def _facts(job: JobSpec | None = None, **kw: object) -> Facts:
    jf = JobFacts(spec=job or _job(), tls=True, audit_enabled=True, audit_retention_days=2200)
    return Facts(job=jf, today=TODAY, **kw)  # type: ignore[arg-type]


def _pack(rule: str, severity: str = "block") -> list:  # type: ignore[type-arg]
    text = f"""
name = "t"
title = "T"
version = "1"
regulation = "r"
source = "s"
[[rules]]
id = "t.rule"
title = "rule"
citation = "Art. 1"
gate = "job"
severity = "{severity}"
{rule}
"""
    return [parse_pack(text.encode(), "t.toml")]


def test_a_compliant_job_passes_every_job_rule() -> None:
    ev = evaluate(load_packs(["gdpr", "hipaa", "pci-dss", "glba", "eu-ai-act"]), "job", _facts())
    assert ev.passed, ev.reason()
    assert {f.status for f in ev.findings} == {"pass"}


def test_tls_off_blocks_with_the_hipaa_citation() -> None:
    facts = Facts(job=JobFacts(spec=_job(), tls=False, audit_enabled=True, audit_retention_days=2200), today=TODAY)
    ev = evaluate(load_packs(["hipaa"]), "job", facts)
    [bad] = ev.blocking
    assert (bad.rule_id, bad.citation, bad.status) == ("hipaa.transmission-security", "45 CFR 164.312(e)(1)", "fail")
    assert bad.evidence == {"job.tls": False}


def test_health_job_without_dp_or_secure_aggregation_is_blocked() -> None:
    job = _job(privacy={"mechanism": "none"}, secure_aggregation={"mode": "none"})
    ev = evaluate(load_packs(["gdpr"]), "job", _facts(job))
    assert "gdpr.protection-by-design" in {f.rule_id for f in ev.blocking}


def test_finance_job_is_not_bound_by_the_health_only_rule() -> None:
    job = _job(scenario="bank", privacy={"mechanism": "none"}, secure_aggregation={"mode": "none"})
    ev = evaluate(load_packs(["gdpr"]), "job", _facts(job))
    assert "gdpr.protection-by-design" in ev.not_applicable
    assert ev.passed


def test_epsilon_above_the_cap_blocks() -> None:
    ev = evaluate(load_packs(["gdpr"]), "job", _facts(_job(privacy={"mechanism": "user-dp", "epsilon": 12.0})))
    [bad] = ev.blocking
    assert bad.rule_id == "gdpr.epsilon-cap"
    assert "12 > cap 10" in bad.message


def test_a_single_site_aggregate_is_blocked() -> None:
    ev = evaluate(load_packs(["hipaa"]), "job", _facts(_job(sites={"count": 4, "min_sites": 1})))
    assert [f.rule_id for f in ev.blocking] == ["hipaa.min-sites"]


def test_short_audit_retention_blocks_hipaa_but_not_pci() -> None:
    facts = Facts(job=JobFacts(spec=_job(), tls=True, audit_enabled=True, audit_retention_days=400), today=TODAY)
    ev = evaluate(load_packs(["hipaa", "pci-dss"]), "job", facts)
    assert [f.rule_id for f in ev.blocking] == ["hipaa.documentation-retention"]


def test_an_exception_inside_a_check_fails_closed_with_its_message() -> None:
    ev = evaluate(_pack('check = "test-raises"', severity="warn"), "job", _facts())
    [f] = ev.findings
    assert f.status == "fail"
    assert f.blocking
    assert "ZeroDivisionError: division by zero in the check" in f.message


def test_unknown_fact_fails_closed_at_an_online_gate() -> None:
    facts = Facts(job=JobFacts(spec=_job()), today=TODAY)
    ev = evaluate(_pack('check = "tls-enabled"'), "job", facts)
    [f] = ev.findings
    assert (f.status, f.blocking) == ("fail", True)
    assert "evidence missing" in f.message


def test_unknown_fact_is_manual_in_an_offline_preflight() -> None:
    facts = Facts(job=JobFacts(spec=_job()), today=TODAY, offline=True)
    ev = evaluate(_pack('check = "tls-enabled"'), "job", facts)
    [f] = ev.findings
    assert (f.status, f.blocking) == ("manual", False)


def test_a_failed_warn_rule_warns_without_blocking() -> None:
    facts = Facts(job=JobFacts(spec=_job(), tls=False), today=TODAY)
    ev = evaluate(_pack('check = "tls-enabled"', severity="warn"), "job", facts)
    assert [f.status for f in ev.findings] == ["warn"]
    assert ev.passed


def test_a_manual_rule_never_passes_silently() -> None:
    ev = evaluate(load_packs(["pci-dss"]), "close", _facts(close=CloseFacts(rounds_completed=3, audit_verified=True)))
    assert {f.rule_id: f.status for f in ev.findings} == {"pci.10.3.2-close": "pass", "pci.10.4.1": "manual"}


def test_round_gate_blocks_an_aggregate_of_one_site() -> None:
    facts = _facts(round=RoundFacts(round=3, participants=1, epsilon_spent=1.0, audit_verified=True))
    ev = evaluate(load_packs(["gdpr", "hipaa"]), "round", facts)
    assert {f.rule_id for f in ev.blocking} == {"gdpr.round-participants", "hipaa.round-participants"}


def test_round_gate_blocks_overspent_epsilon() -> None:
    facts = _facts(round=RoundFacts(round=3, participants=4, epsilon_spent=4.5, audit_verified=True))
    ev = evaluate(load_packs(["gdpr"]), "round", facts)
    assert [f.rule_id for f in ev.blocking] == ["gdpr.round-budget"]


def test_close_gate_blocks_when_the_audit_log_does_not_verify() -> None:
    facts = _facts(close=CloseFacts(rounds_completed=5, epsilon_spent=3.9, audit_verified=False))
    ev = evaluate(load_packs(["gdpr", "hipaa", "eu-ai-act"]), "close", facts)
    assert len(ev.blocking) == 3
    with pytest.raises(PolicyViolation, match="audit log does NOT verify"):
        ev.raise_if_blocked()


def test_audit_payload_is_json_with_every_pack_hash() -> None:
    packs = load_packs(["gdpr", "hipaa"])
    site = SiteManifest(name="s", organisation="o", jurisdiction="DE", lawful_basis="public-task")
    ev = evaluate(packs, "job", _facts()).merge(evaluate(packs, "site", _facts(site=site)))
    payload = json.loads(json.dumps(ev.to_dict()))
    assert payload["packs"] == {p.name: p.sha256 for p in packs}
    assert payload["gates"] == ["job", "site"]
    assert payload["passed"] is False  # no scan summary at an online site gate: fail closed
    assert set(payload["findings"][0]) == {
        "rule_id",
        "pack",
        "title",
        "citation",
        "gate",
        "severity",
        "status",
        "blocking",
        "message",
        "evidence",
    }


def test_unknown_gate_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown gate"):
        evaluate([], "lunch", _facts())  # type: ignore[arg-type]
