"""One verdict: the report's status, its HIPAA table and its findings never contradict each other.

Runs are written through the real audit API into a real SQLite store, as the coordinator
writes them, then reported with :func:`fedinfra.report.load_report` (issue 18).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fedinfra.audit.cosign import Cosigner
from fedinfra.audit.entry import Actor, Subject
from fedinfra.audit.log import AuditLog
from fedinfra.audit.note import Signer
from fedinfra.report import ReportData, load_report, to_html, to_pdf
from fedinfra.report.charts import accuracy_range, epsilon_chart

ORIGIN = "fedinfra.test"
RUN = "20260101T000000Z-verdict"
SITES = ["hospital-a", "hospital-b"]
T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _site(name: str, dpia_sha: str) -> dict[str, Any]:
    return {
        "site": name,
        "organisation": f"{name} org",
        "role": "controller",
        "jurisdiction": "DE",
        "sector": "health",
        "lawful_basis": "public-task",
        "art9_condition": "research-statistics",
        "purposes": ["medical-research"],
        "data_categories": ["health"],
        "data_subjects": ["patients"],
        "retention_days": 3650,
        "dataset_fingerprint": _sha(name),
        "scan": {"rows": 140, "flagged": [], "k_anonymity": 12, "verdict": "clean"},
        "budget": {"epsilon_per_run": 8.0, "epsilon_lifetime": 40.0},
        "dpia": {"reference": f"DPIA-{name}", "sha256": dpia_sha, "date": "2025-11-01"},
    }


def _finding(rule: str, citation: str, status: str, *, waiver: str | None = None, site: str | None = None) -> dict[
    str, Any
]:
    return {
        "rule_id": rule,
        "title": rule,
        "citation": citation,
        "pack": rule.split(".")[0],
        "status": status,
        "severity": "block",
        "message": f"{rule} {status}",
        "evidence": {},
        "waiver": waiver,
        "site": site,
    }


def write_run(
    path: Path,
    *,
    transport: str,
    keyed: bool,
    findings: list[dict[str, Any]],
    mechanism: str = "dp-sgd",
    dpia_sha: str | None = None,
    identical: bool = True,
    cosigned: bool = False,
) -> Path:
    """A two-site, three-round hospital run as the coordinator records it."""
    signer = Signer.from_private_bytes(ORIGIN, hashlib.sha256(b"verdict-test").digest())
    coord = Actor(kind="coordinator", id="coordinator", key_id=signer.key_id)
    tick = iter(T0 + timedelta(seconds=i) for i in range(10_000))
    dp = mechanism != "none"
    cosigners = [Cosigner.from_skey(Cosigner.generate(f"fedinfra-site.{n}").skey) for n in SITES]
    with AuditLog.open(path, origin=ORIGIN, signer=signer) as log:

        def add(type_: str, rnd: int | None, actor: Actor = coord, **kw: Any) -> None:
            log.append(run_id=RUN, round=rnd, type=type_, actor=actor, outcome="success", now=next(tick), **kw)

        add(
            "run.created",
            None,
            details={
                "fedinfra_version": "0.1.0",
                "job_name": "verdict",
                "scenario": "hospital",
                "purpose": "medical-research",
                "tls": transport == "tls",
                "transport": transport,
                "audit_retention_days": 2192,
                "policy_packs": [{"name": "gdpr", "sha256": _sha("g")}, {"name": "hipaa", "sha256": _sha("h")}],
                "privacy": {
                    "mechanism": mechanism,
                    "noise_multiplier": None,
                    "max_grad_norm": 1.0,
                    "delta": 1e-5,
                    "epsilon": 3.0 if dp else None,
                    "accountant": "rdp",
                },
                "secure_aggregation": {"mode": "bfv", "quant_bits": 20, "plain_modulus_bits": None},
            },
        )
        add("policy.evaluated", None, details={"gate": "job", "findings": findings})
        for name in SITES:
            add("site.admitted", None, Actor(kind="site", id=name, key_id="k" + name[-1] if keyed else None),
                details=_site(name, dpia_sha or _sha("dpia" + name)))
            add("policy.evaluated", None, details={"gate": "site", "site": name, "findings": [
                _finding("gdpr.lawful-basis", "GDPR Art. 6(1)", "pass", site=name)]})
        totals = dict.fromkeys(SITES, 0.0)
        for rnd in range(1, 4):
            add("round.started", rnd, details={"sites": SITES})
            for i, name in enumerate(SITES):
                site = Actor(kind="site", id=name, key_id="k" + name[-1] if keyed else None)
                add("update.received", rnd, site, subject=Subject(artifact="update", sha256=_sha(f"{name}{rnd}"),
                                                                  size=10), details={"site": name,
                                                                                     "receipt_verified": rnd > 1})
                if dp:
                    eps = 0.9 if identical or i == 0 else 0.6
                    totals[name] += eps
                    add("budget.spent", rnd, site, details={"site": name, "epsilon": eps,
                                                           "epsilon_total": totals[name], "noise_multiplier": 3.375,
                                                           "delta": 1e-5, "accountant": "rdp"})
            add("aggregation.completed", rnd, details={"test_loss": 0.3 - rnd / 100, "test_accuracy": 0.9 + rnd / 100,
                                                       "replies": 2})
            head = log.publish_checkpoint(run_id=RUN, now=next(tick))
            if cosigned:
                for site in cosigners:
                    log.add_cosignature(head.size, site.cosign(head, timestamp=rnd), site.witness)
        add("run.completed", None, details={"final_accuracy": 0.93})
        log.publish_checkpoint(run_id=RUN, now=next(tick))
    return path


TLS_RULE = ("hipaa.transmission-security", "45 CFR 164.312(e)(1)")


def _hipaa(report: ReportData) -> dict[str, str]:
    return {row.ref: row.status for row in report.hipaa}


def _rule(report: ReportData, rule_id: str) -> dict[str, str]:
    return next(g.cells for g in report.finding_grid if g.rule_id == rule_id)


def test_tls_off_in_a_simulation_is_a_finding_everywhere_not_a_pass(tmp_path: Path) -> None:
    # The policy engine passes the TLS rule for an in-process simulation ("no network link").
    store = write_run(tmp_path / "a.db", transport="in-process", keyed=False, findings=[_finding(*TLS_RULE, "pass")])

    report = load_report(store, RUN)

    assert report.header.status == "completed"  # what the log recorded
    assert report.verdict.status == "completed with findings"
    assert report.verdict.tone == "amber"
    assert _hipaa(report)["164.312(e)(1)"] == "not met"
    assert _hipaa(report)["164.312(d)"] == "not met"
    assert _rule(report, "hipaa.transmission-security") == {"job": "contradicted"}
    sources = {o.source for o in report.verdict.open_findings}
    assert {"HIPAA 164.312(e)(1)", "HIPAA 164.312(d)"} <= sources
    assert any("Simulation" in n for n in report.verdict.notes)
    html = to_html(report)
    assert "Run completed with findings" in html
    assert 'class="banner amber"' in html


def test_tls_on_with_keyed_updates_is_completed_and_every_table_agrees(tmp_path: Path) -> None:
    store = write_run(tmp_path / "b.db", transport="tls", keyed=True, findings=[_finding(*TLS_RULE, "pass")])

    report = load_report(store, RUN)

    assert report.verdict.status == "completed"
    assert report.verdict.tone == "green"
    assert report.verdict.open_findings == []
    assert set(_hipaa(report).values()) == {"met"}
    assert all(s == "pass" for g in report.finding_grid for s in g.cells.values())
    assert 'class="banner green"' in to_html(report)


def test_a_waived_finding_is_listed_and_does_not_turn_the_run_amber(tmp_path: Path) -> None:
    waived = _finding("gdpr.dpia", "GDPR Art. 35", "fail", waiver="DPO approved 2025-12-01, ref W-7")
    store = write_run(tmp_path / "c.db", transport="tls", keyed=True, findings=[_finding(*TLS_RULE, "pass"), waived])

    report = load_report(store, RUN)

    assert report.verdict.status == "completed"
    assert [o.source for o in report.verdict.waived] == ["policy rule gdpr.dpia"]
    assert "W-7" in report.verdict.waived[0].text
    assert _rule(report, "gdpr.dpia") == {"job": "waived"}
    assert set(_hipaa(report).values()) == {"met"}


def test_a_failing_finding_on_a_hipaa_requirement_fails_the_table_and_the_verdict(tmp_path: Path) -> None:
    store = write_run(tmp_path / "d.db", transport="tls", keyed=True, findings=[_finding(*TLS_RULE, "fail")])

    report = load_report(store, RUN)

    assert _hipaa(report)["164.312(e)(1)"] == "not met"
    assert report.verdict.status == "completed with findings"
    assert _rule(report, "hipaa.transmission-security") == {"job": "fail"}
    assert "policy rule hipaa.transmission-security" in {o.source for o in report.verdict.open_findings}


def test_findings_are_one_row_per_rule_with_a_column_per_site(tmp_path: Path) -> None:
    store = write_run(tmp_path / "e.db", transport="tls", keyed=True, findings=[_finding(*TLS_RULE, "pass")])

    report = load_report(store, RUN)

    assert [g.rule_id for g in report.finding_grid].count("gdpr.lawful-basis") == 1
    assert _rule(report, "gdpr.lawful-basis") == dict.fromkeys(SITES, "pass")
    assert report.summary.policy_totals == {"pass": 3}


def test_an_he_only_run_says_there_is_no_dp_guarantee_not_epsilon_zero(tmp_path: Path) -> None:
    store = write_run(tmp_path / "f.db", transport="tls", keyed=True, findings=[], mechanism="none")

    report = load_report(store, RUN)

    assert report.controls.budgets == []
    assert report.summary.epsilon == []
    assert report.controls.dp_guarantee.startswith("no DP guarantee")
    html = to_html(report)
    assert "no DP guarantee" in html
    assert "Total ε" not in html
    assert "within cap" not in html.lower()


def test_controls_show_the_sites_noise_multiplier_and_no_unset_parameters(tmp_path: Path) -> None:
    store = write_run(tmp_path / "g.db", transport="tls", keyed=True, findings=[])

    c = load_report(store, RUN).controls

    assert (c.noise_multiplier, c.noise_multiplier_source) == (3.375, "budget.spent")
    assert "plain_modulus_bits" not in c.secure_aggregation_params
    assert c.secure_aggregation_params == {"quant_bits": 20}


def test_retention_requires_2192_days_and_a_zero_dpia_hash_is_flagged(tmp_path: Path) -> None:
    store = write_run(tmp_path / "h.db", transport="tls", keyed=True, findings=[], dpia_sha="0" * 64)

    report = load_report(store, RUN)

    assert report.retention.required_days == 2192
    assert all(m.placeholder for m in report.manual_evidence if m.kind.startswith("DPIA"))
    assert report.verdict.status == "completed with findings"
    assert {o.site for o in report.verdict.open_findings if o.source.startswith("DPIA")} == set(SITES)


def test_a_hospital_report_has_no_pci_section_and_names_its_data(tmp_path: Path) -> None:
    store = write_run(tmp_path / "i.db", transport="tls", keyed=True, findings=[])
    job = {"run_id": RUN, "job": {"scenario": "hospital", "data": {"dataset": "breast_cancer"}}}
    (tmp_path / "job.json").write_text(json.dumps(job))

    report = load_report(store, RUN, run_dir=tmp_path)
    html = to_html(report)

    assert report.pci is None
    assert "PCI DSS" not in html
    assert report.summary.dataset == "breast_cancer"


def test_identical_epsilon_series_are_one_line_and_caps_and_target_are_drawn(tmp_path: Path) -> None:
    same = load_report(write_run(tmp_path / "j.db", transport="tls", keyed=True, findings=[]), RUN)
    apart = load_report(
        write_run(tmp_path / "k.db", transport="tls", keyed=True, findings=[], identical=False), RUN
    )

    one, two = epsilon_chart(same), epsilon_chart(apart)

    assert one is not None
    assert two is not None
    assert one.count('id="epsilon-series-') == 1
    assert two.count('id="epsilon-series-') == 2
    for svg in (one, two):
        assert 'id="run-cap-8"' in svg
        assert 'id="target-3"' in svg
        assert "lifetime-cap" in svg


def test_page_one_names_the_sites_that_cosigned_the_runs_checkpoints(tmp_path: Path) -> None:
    plain = load_report(write_run(tmp_path / "m.db", transport="tls", keyed=True, findings=[]), RUN)
    witnessed = load_report(write_run(tmp_path / "n.db", transport="tls", keyed=True, findings=[], cosigned=True), RUN)

    assert plain.summary.cosigners == []
    assert witnessed.summary.cosigners == [f"fedinfra-site.{n}" for n in SITES]
    assert "audit verify --witnesses" in witnessed.summary.audit
    assert "fedinfra-site.hospital-a" in to_html(witnessed)


def test_accuracy_has_its_own_axis_range() -> None:
    low, high = accuracy_range([0.91, 0.93, 0.95])

    assert 0.85 < low < 0.91
    assert 0.95 < high < 0.97


def test_every_pdf_page_carries_page_n_of_m_and_the_run_id(tmp_path: Path) -> None:
    if shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None:
        pytest.fail("poppler-utils (pdftotext, pdftoppm) is required; .ci/run installs it")
    store = write_run(tmp_path / "l.db", transport="in-process", keyed=False, findings=[_finding(*TLS_RULE, "pass")])
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(to_pdf(to_html(load_report(store, RUN))))

    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    pages = [p for p in text.split("\f") if p.strip()]

    assert len(pages) >= 3
    for n, page in enumerate(pages, start=1):
        assert f"page {n} of {len(pages)}" in page
        assert f"run {RUN}" in page
    assert "Run completed with findings" in pages[0]
    assert "HIPAA 164.312(e)(1)" in pages[0]
    # Pages 1-3 as PNG for a reader of the test output (FEDINFRA_TEST_OUTPUT keeps them).
    out = Path(os.environ.get("FEDINFRA_TEST_OUTPUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdftoppm", "-r", "60", "-f", "1", "-l", "3", "-png", str(pdf), str(out / "report-page")],
                   check=True)
    pngs = sorted(out.glob("report-page-*.png"))
    assert len(pngs) == 3
    print(f"report pages 1-3: {', '.join(str(p) for p in pngs)}")
