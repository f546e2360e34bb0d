"""The evaluation engine: gates, statuses, fail-closed behaviour, audit payload."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

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
    preflight,
    register_check,
    registered_checks,
)
from fedinfra.policy._engine import GATES, SECTOR_PACKS, site_packs
from fedinfra.policy._packs import Pack
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


# -- findings, verdicts and messages exactly as the audit log keeps them (issue 20: mutation survivors) ----

_HEAD = """
name = "{name}"
title = "T"
version = "1"
regulation = "r"
source = "s"
"""


def _rule(rid: str, check: str, *, gate: str = "job", severity: str = "block", extra: str = "") -> str:
    return f"""
[[rules]]
id = "{rid}"
title = "title of {rid}"
citation = "Art. {rid}"
gate = "{gate}"
severity = "{severity}"
check = "{check}"
{extra}
"""


def _multi(name: str, *rules: str) -> Pack:
    return parse_pack((_HEAD.format(name=name) + "".join(rules)).encode(), f"{name}.toml")


def _manual(q: str = "Is it filed?") -> str:
    return f'params = {{ question = "{q}" }}'


def test_each_outcome_becomes_its_status_and_only_a_blocking_failure_blocks() -> None:
    pack = _multi(
        "p",
        _rule("p.pass", "min-sites", extra='params = { min = 2 }\nevidence = ["job.sites.count"]'),
        _rule("p.fail", "min-sites", extra="params = { min = 3 }"),
        _rule("p.warn", "min-sites", severity="warn", extra="params = { min = 3 }"),
        _rule("p.manual", "manual", extra=_manual()),
    )

    ev = evaluate([pack], "job", _facts())

    got = [(f.rule_id, f.status, f.blocking) for f in ev.findings]
    assert got == [
        ("p.pass", "pass", False),
        ("p.fail", "fail", True),
        ("p.warn", "warn", False),
        ("p.manual", "manual", False),
    ]
    assert [f.rule_id for f in ev.blocking] == ["p.fail"]
    assert ev.passed is False
    assert ev.counts() == {"pass": 1, "fail": 1, "warn": 1, "manual": 1}
    first = ev.findings[0]
    assert first.to_dict() == {
        "rule_id": "p.pass",
        "pack": "p",
        "title": "title of p.pass",
        "citation": "Art. p.pass",
        "gate": "job",
        "severity": "block",
        "status": "pass",
        "blocking": False,
        "message": "sites.min_sites = 2 >= 2",
        "evidence": {"job.sites.count": 4, "required": 2},  # the rule's named facts plus the check's own
    }
    assert ev.findings[2].severity == "warn"


def test_a_passing_evaluation_counts_every_status_from_zero() -> None:
    ev = evaluate([_multi("p", _rule("p.pass", "min-sites", extra="params = { min = 1 }"))], "job", _facts())

    assert ev.counts() == {"pass": 1, "fail": 0, "warn": 0, "manual": 0}
    assert ev.passed is True
    assert ev.blocking == []
    assert ev.reason() == ""
    ev.raise_if_blocked()  # nothing blocks: no exception


def test_the_reason_names_each_blocking_rule_with_its_citation_and_message() -> None:
    pack = _multi(
        "p",
        _rule("p.a", "min-sites", extra="params = { min = 3 }"),
        _rule("p.b", "min-sites", extra="params = { min = 4 }"),
        _rule("p.c", "min-sites", severity="warn", extra="params = { min = 5 }"),
    )
    ev = evaluate([pack], "job", _facts())

    assert ev.reason() == "p.a (Art. p.a): sites.min_sites = 2 < 3; p.b (Art. p.b): sites.min_sites = 2 < 4"
    with pytest.raises(PolicyViolation) as info:
        ev.merge(evaluate([pack], "round", _facts())).raise_if_blocked()
    assert str(info.value) == f"policy gate job/round denied: {ev.reason()}"


def test_the_failure_messages_say_why_the_check_did_not_run() -> None:
    pack = _multi("p", _rule("p.tls", "tls-enabled", extra='evidence = ["job.tls"]'))
    raising = _multi("q", _rule("q.raises", "test-raises", severity="warn"))
    unknown = Facts(job=JobFacts(spec=_job()), today=TODAY)

    [online] = evaluate([pack], "job", unknown).findings
    [offline] = evaluate([pack], "job", Facts(job=JobFacts(spec=_job()), today=TODAY, offline=True)).findings
    [raised] = evaluate([raising], "job", _facts()).findings

    assert (online.status, online.blocking, online.message) == (
        "fail",
        True,
        "evidence missing: whether TLS is on is not known",
    )
    assert online.evidence == {"job.tls": None}
    assert (offline.status, offline.blocking, offline.message) == (
        "manual",
        False,
        "not checkable offline (whether TLS is on is not known); checked again at admission",
    )
    assert (raised.status, raised.blocking, raised.severity) == ("fail", True, "warn")
    assert raised.message == "check 'test-raises' raised ZeroDivisionError: division by zero in the check"


def test_audit_payload_keeps_gates_sorted_pack_hashes_counts_and_not_applicable_rules() -> None:
    b = _multi("b", _rule("b.x", "min-sites", extra='params = { min = 1 }\nsectors = ["finance"]'))
    a = _multi("a", _rule("a.x", "min-sites", extra="params = { min = 3 }"))
    ev = evaluate([b, a], "job", _facts())

    payload = ev.to_dict()

    assert payload == {
        "gates": ["job"],
        "packs": {"a": a.sha256, "b": b.sha256},
        "passed": False,
        "counts": {"pass": 0, "fail": 1, "warn": 0, "manual": 0},
        "findings": [ev.findings[0].to_dict()],
        "not_applicable": ["b.x"],
    }
    assert list(payload["packs"]) == ["a", "b"]


def test_merge_keeps_each_gate_once_in_order_and_every_finding_hash_and_skip() -> None:
    a = _multi("a", _rule("a.x", "min-sites", extra='params = { min = 1 }\nsectors = ["finance"]'))
    b = _multi("b", _rule("b.x", "min-sites", extra="params = { min = 1 }"))
    first, second = evaluate([a], "job", _facts()), evaluate([b], "job", _facts())

    merged = first.merge(second).merge(evaluate([b], "close", _facts()))

    assert merged.gates == ("job", "close")
    assert [f.rule_id for f in merged.findings] == ["b.x"]
    assert merged.pack_hashes == {"a": a.sha256, "b": b.sha256}
    assert merged.not_applicable == ("a.x",)


def test_a_pack_is_hashed_even_when_none_of_its_rules_belong_to_the_gate() -> None:
    pack = _multi("p", _rule("p.site", "dpo-contact", gate="site"))

    ev = evaluate([pack], "job", _facts())

    assert ev.findings == ()
    assert ev.pack_hashes == {"p": pack.sha256}
    assert ev.gates == ("job",)


def test_the_site_gate_applies_the_sites_sector_and_the_other_gates_the_jobs() -> None:
    only_finance = _multi(
        "p", *(_rule(f"p.{g}", "manual", gate=g, extra=_manual() + '\nsectors = ["finance"]') for g in ("job", "site"))
    )
    bank_site = SiteManifest(name="s", organisation="o", jurisdiction="DE", sector="finance")
    health_job = _facts(site=bank_site)  # a hospital job: health

    assert [f.rule_id for f in evaluate([only_finance], "site", health_job).findings] == ["p.site"]
    assert evaluate([only_finance], "job", health_job).not_applicable == ("p.job",)
    no_site = _facts(_job(scenario="bank", privacy={"mechanism": "dp-sgd", "epsilon": 1.0}))
    assert [f.rule_id for f in evaluate([only_finance], "site", no_site).findings] == ["p.site"]


def test_an_unknown_gate_names_the_four_gates() -> None:
    with pytest.raises(ValueError, match=r"^unknown gate 'lunch'; one of \('job', 'site', 'round', 'close'\)$"):
        evaluate([], "lunch", _facts())  # type: ignore[arg-type]


def test_a_site_applies_its_own_packs_or_its_sectors_then_the_jobs_once_each() -> None:
    hospital = SiteManifest(name="s", organisation="o", jurisdiction="DE")
    bank = SiteManifest(name="s", organisation="o", jurisdiction="DE", sector="finance")
    device = SiteManifest(name="s", organisation="o", jurisdiction="DE", sector="device")
    own = SiteManifest(name="s", organisation="o", jurisdiction="DE", policy_packs=["eu-ai-act", "gdpr"])

    assert site_packs(hospital, _job()) == ["gdpr", "hipaa"]
    assert site_packs(bank, _job(policy_packs=["eu-ai-act", "gdpr"])) == ["gdpr", "pci-dss", "glba", "eu-ai-act"]
    assert site_packs(device, _job()) == ["gdpr"]
    assert site_packs(own, _job(policy_packs=["hipaa"])) == ["eu-ai-act", "gdpr", "hipaa"]


def test_a_preflight_checks_job_and_site_gates_offline_with_the_facts_it_is_given() -> None:
    site = SiteManifest(name="s", organisation="o", jurisdiction="DE", lawful_basis="public-task")
    pack = _multi(
        "p",
        _rule("p.tls", "tls-enabled"),
        _rule("p.audit", "audit-enabled"),
        _rule("p.retention", "audit-retention", extra="params = { min_days = 30 }"),
        _rule("p.spent", "site-lifetime-budget", gate="site"),
        _rule("p.basis", "lawful-basis", gate="site"),
        _rule("p.dpia", "dpia", gate="site"),
        _rule("p.scan", "k-anonymity", gate="site", extra="params = { min_k = 2 }"),
    )
    dpia = {"reference": "D", "sha256": "0" * 64, "date": dt.date(2026, 1, 16)}
    tomorrow = SiteManifest.model_validate({**site.model_dump(), "dpia": dpia})

    known = preflight(
        tomorrow,
        _job(),
        packs=[pack],
        tls=True,
        audit_enabled=True,
        audit_retention_days=30,
        site_epsilon_spent=1.0,
        today=TODAY,
    )
    unknown = preflight(site, _job(), packs=[pack])

    assert known.gates == ("job", "site")
    assert {f.rule_id: f.status for f in known.findings} == {
        "p.tls": "pass",
        "p.audit": "pass",
        "p.retention": "pass",
        "p.spent": "pass",
        "p.basis": "pass",
        "p.dpia": "fail",  # dated 2026-01-16, one day after the preflight's today
        "p.scan": "manual",  # no data path and no dataset: no scan, checked at admission
    }
    assert {f.rule_id: f.status for f in unknown.findings if f.gate == "job"} == dict.fromkeys(
        ["p.tls", "p.audit", "p.retention"], "manual"
    )
    assert [f.status for f in unknown.findings if f.rule_id == "p.spent"] == ["manual"]
    assert [f.status for f in unknown.findings if f.rule_id == "p.dpia"] == ["fail"]  # no DPIA at all


def test_a_preflight_dates_the_check_today_by_default() -> None:
    dpia = {"reference": "D", "sha256": "0" * 64, "date": dt.datetime.now(dt.UTC).date()}
    site = SiteManifest.model_validate({"name": "s", "organisation": "o", "jurisdiction": "DE", "dpia": dpia})
    pack = _multi("p", _rule("p.dpia", "dpia", gate="site", extra="params = { max_age_days = 1 }"))

    [finding] = preflight(site, _job(), packs=[pack]).findings

    assert finding.status == "pass"


def test_a_preflight_loads_the_sites_packs_when_none_are_given() -> None:
    site = SiteManifest(name="s", organisation="o", jurisdiction="DE", sector="device")

    ev = preflight(site, _job(scenario="edge", policy_packs=["eu-ai-act"]), tls=True)

    assert set(ev.pack_hashes) == {"gdpr", "eu-ai-act"}


def test_a_preflight_scans_the_manifests_dataset(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("email,a,y\n" + "".join(f"p{i}@example.org,{i},{i % 2}\n" for i in range(30)))
    dataset = {"path": str(data), "label_column": "y", "columns": {"email": "string", "a": "int", "y": "int"}}
    site = SiteManifest.model_validate({"name": "s", "organisation": "o", "jurisdiction": "DE", "dataset": dataset})
    pack = _multi("p", _rule("p.ids", "no-identifiers-in-training", gate="site"))

    by_manifest = preflight(site, _job(), packs=[pack])
    by_path = preflight(site.model_copy(update={"dataset": None}), _job(), data_path=data, packs=[pack])

    for ev in (by_manifest, by_path):
        [finding] = ev.findings
        assert finding.status == "fail"
        assert finding.evidence["identifier_columns"] == ["email:email"]


def test_sector_packs_and_gates_are_the_documented_ones() -> None:
    assert SECTOR_PACKS == {"health": ("gdpr", "hipaa"), "finance": ("gdpr", "pci-dss", "glba"), "device": ("gdpr",)}
    assert GATES == ("job", "site", "round", "close")


def test_counts_add_up_findings_of_the_same_status() -> None:
    pack = _multi(
        "p",
        _rule("p.a", "min-sites", extra="params = { min = 1 }"),
        _rule("p.b", "min-sites", extra="params = { min = 2 }"),
        _rule("p.c", "manual", extra=_manual()),
    )

    assert evaluate([pack], "job", _facts()).counts() == {"pass": 2, "fail": 0, "warn": 0, "manual": 1}


def test_a_rule_of_another_sector_skips_only_itself_not_the_rest_of_the_pack() -> None:
    pack = _multi(
        "p",
        _rule("p.finance", "min-sites", extra='params = { min = 1 }\nsectors = ["finance"]'),
        _rule("p.all", "min-sites", extra="params = { min = 1 }"),
    )

    ev = evaluate([pack], "job", _facts())  # a hospital job

    assert ev.not_applicable == ("p.finance",)
    assert [f.rule_id for f in ev.findings] == ["p.all"]


@pytest.mark.parametrize("zone", ["Etc/GMT-14", "Etc/GMT+12"])
def test_a_preflight_dates_its_checks_in_utc_whatever_the_local_time_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    # At any instant the local date in UTC+14 or in UTC-12 differs from the UTC date: a DPIA dated
    # today (UTC) or one day ago, with a one-day limit, passes only when the check dates itself in UTC.
    today = dt.datetime.now(dt.UTC).date()
    packs = [_multi("p", _rule("p.dpia", "dpia", gate="site", extra="params = { max_age_days = 1 }"))]
    sites = [
        SiteManifest.model_validate(
            {
                "name": "s",
                "organisation": "o",
                "jurisdiction": "DE",
                "dpia": {"reference": "D", "sha256": "0" * 64, "date": day},
            }
        )
        for day in (today, today - dt.timedelta(days=1))
    ]
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        statuses = [f.status for site in sites for f in preflight(site, _job(), packs=packs).findings]
    finally:
        monkeypatch.undo()
        time.tzset()

    assert statuses == ["pass", "pass"]
