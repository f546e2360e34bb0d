"""Compliance reports built from a real audit store written through the audit API."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from fedinfra.audit.entry import Actor, Event, Subject
from fedinfra.audit.log import AuditLog
from fedinfra.audit.note import Signer
from fedinfra.errors import ConfigError, VerificationError
from fedinfra.report import SECTIONS, generate_report, load_report, to_html, to_json

ORIGIN = "fedinfra.test"
RUN = "20260101T000000Z-abc123"
SITES = ["hospital-a", "hospital-b", "hospital-c"]
ROUNDS = 3
T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _site_details(name: str, jurisdiction: str) -> dict[str, object]:
    return {
        "site": name,
        "organisation": f"{name}-org",
        "role": "controller",
        "jurisdiction": jurisdiction,
        "sector": "health",
        "lawful_basis": "public-task",
        "art9_condition": "research-statistics",
        "transfer_safeguard": "none",
        "consent_status": None,
        "purposes": ["medical-research"],
        "data_categories": ["health"],
        "data_subjects": ["patients"],
        "retention_days": 3650,
        "dataset_fingerprint": _sha(name + "data"),
        "schema": [{"name": "mean radius", "type": "float"}, {"name": "diagnosis", "type": "int"}],
        "scan": {"rows": 140, "flagged": [], "k_anonymity": 12, "verdict": "clean"},
        "budget": {"epsilon_per_run": 3.0, "epsilon_lifetime": 10.0},
        "dpia": {"reference": f"DPIA-{name}-2025", "sha256": _sha("dpia" + name), "date": "2025-11-01"},
        "agreements": [{"kind": "dpa", "reference": f"DPA-{name}", "signed": "2025-10-01"}],
    }


def _finding(rule: str, citation: str, status: str, evidence: dict[str, object]) -> dict[str, object]:
    return {
        "rule_id": rule,
        "title": rule.replace("-", " "),
        "citation": citation,
        "pack": rule.split(".")[0],
        "status": status,
        "severity": "block",
        "message": f"{rule} {status}",
        "evidence": evidence,
        "waiver": None,
    }


def signer(n: int = 1) -> Signer:
    """A fixed test key. Seeds 1, 5, 7: their base64 public key has no '+', which
    ``Verifier.from_vkey`` (splitting on every '+') rejects today - reported to the audit owner."""
    return Signer.from_private_bytes(ORIGIN, hashlib.sha256(b"report-test-%d" % n).digest())


def build_store(path: Path, *, complete: bool = True) -> Path:
    """Write a three-site, three-round hospital run with DP and BFV through :class:`AuditLog`."""
    signer_ = signer()
    coord = Actor(kind="coordinator", id="coordinator", key_id=signer_.key_id)
    tick = iter(T0 + timedelta(seconds=i) for i in range(10_000))
    with AuditLog.open(path, origin=ORIGIN, signer=signer_) as log:
        log.publish_checkpoint(run_id=RUN, now=next(tick))
        log.append(
            run_id=RUN,
            round=None,
            type="run.created",
            actor=coord,
            outcome="success",
            now=next(tick),
            details={
                "fedinfra_version": "0.1.0",
                "job_name": "demo",
                "scenario": "hospital",
                "purpose": "medical-research",
                "job_sha256": _sha("job"),
                "tls": True,
                "audit_retention_days": 2555,
                "policy_packs": [{"name": "gdpr", "sha256": _sha("gdpr")}, {"name": "hipaa", "sha256": _sha("hipaa")}],
                "privacy": {
                    "mechanism": "dp-sgd",
                    "noise_multiplier": 1.1,
                    "max_grad_norm": 1.0,
                    "delta": 1e-5,
                    "epsilon": 3.0,
                    "accountant": "prv",
                },
                "secure_aggregation": {"mode": "bfv", "quant_bits": 20, "clip": 1.0, "max_sites": 16},
            },
        )
        log.append(
            run_id=RUN,
            round=None,
            type="policy.evaluated",
            actor=coord,
            outcome="success",
            now=next(tick),
            details={
                "gate": "job",
                "packs": [{"name": "gdpr", "sha256": _sha("gdpr")}],
                "findings": [
                    _finding("hipaa.tls", "45 CFR 164.312(e)(1)", "pass", {"job.tls": True}),
                    _finding(
                        "gdpr.dp-or-secagg", "GDPR Art. 25, 32", "pass", {"job.dp": "dp-sgd", "job.secagg": "bfv"}
                    ),
                    _finding("gdpr.dpia", "GDPR Art. 35", "manual", {}),
                ],
            },
        )
        for name, country in zip(SITES[:2], ["DE", "FR"], strict=True):
            log.append(
                run_id=RUN,
                round=None,
                type="site.admitted",
                actor=Actor(kind="site", id=name, key_id="k" + name[-1]),
                outcome="success",
                details=_site_details(name, country),
                now=next(tick),
            )
        rejected = _site_details(SITES[2], "US") | {"reason": "no Art. 46 safeguard for a transfer to US"}
        log.append(
            run_id=RUN,
            round=None,
            type="policy.evaluated",
            actor=coord,
            outcome="denied",
            now=next(tick),
            details={
                "gate": "site",
                "site": SITES[2],
                "findings": [_finding("gdpr.transfer", "GDPR Art. 44-49", "fail", {"site.jurisdiction": "US"})],
            },
        )
        log.append(
            run_id=RUN,
            round=None,
            type="site.rejected",
            actor=Actor(kind="site", id=SITES[2]),
            outcome="denied",
            details=rejected,
            now=next(tick),
        )
        log.publish_checkpoint(run_id=RUN, now=next(tick))
        totals = dict.fromkeys(SITES[:2], 0.0)
        for rnd in range(1, ROUNDS + 1):
            events = [
                Event(
                    run_id=RUN,
                    round=rnd,
                    type="round.started",
                    actor=coord,
                    outcome="success",
                    details={"sites": SITES[:2]},
                )
            ]
            for i, name in enumerate(SITES[:2]):
                if rnd == 2 and i == 1:
                    continue  # hospital-b drops out of round 2
                eps = 0.8 + 0.1 * i
                totals[name] += eps
                events.append(
                    Event(
                        run_id=RUN,
                        round=rnd,
                        type="budget.spent",
                        actor=Actor(kind="site", id=name),
                        outcome="success",
                        details={
                            "site": name,
                            "epsilon": eps,
                            "epsilon_total": round(totals[name] * 0.9, 6),
                            "delta": 1e-5,
                            "accountant": "prv",
                        },
                    )
                )
                events.append(
                    Event(
                        run_id=RUN,
                        round=rnd,
                        type="update.received",
                        actor=Actor(kind="site", id=name, key_id="k" + name[-1]),
                        outcome="success",
                        subject=Subject(artifact=f"update-{rnd}-{name}", sha256=_sha(f"{rnd}{name}"), size=4096),
                        details={"site": name, "receipt_verified": rnd > 1},
                    )
                )
            events.append(
                Event(
                    run_id=RUN,
                    round=rnd,
                    type="aggregation.completed",
                    actor=coord,
                    outcome="success",
                    subject=Subject(artifact=f"model-{rnd}", sha256=_sha(f"model{rnd}"), size=2048),
                    details={"test_loss": 0.6 / rnd, "test_accuracy": 0.8 + 0.05 * rnd, "replies": 2},
                )
            )
            log.append_many(events, now=next(tick), publish=True)
        if complete:
            log.append(
                run_id=RUN,
                round=None,
                type="policy.evaluated",
                actor=coord,
                outcome="success",
                now=next(tick),
                details={
                    "gate": "close",
                    "findings": [_finding("hipaa.audit-log", "45 CFR 164.312(b)", "pass", {"audit.verified": True})],
                },
            )
            log.append_many(
                [
                    Event(
                        run_id=RUN,
                        round=None,
                        type="run.completed",
                        actor=coord,
                        outcome="success",
                        details={"rounds_completed": ROUNDS},
                    )
                ],
                now=next(tick),
                publish=True,
            )
        log.append(
            run_id=None,
            round=None,
            type="log.read",
            actor=Actor(kind="operator", id="auditor"),
            outcome="success",
            now=next(tick),
        )
    return path


@pytest.fixture(scope="module")
def store_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("master") / "audit.db")


@pytest.fixture
def store(store_master: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / RUN
    run_dir.mkdir()
    target = run_dir / "audit.db"
    shutil.copy(store_master, target)
    return target


class _Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section" and values.get("id"):
            self.ids.append(str(values["id"]))
        if tag in ("link", "script", "img") or (values.get("src") or "").startswith("http"):
            self.external.append(tag)


def _schema() -> dict[str, object]:
    text = (resources.files("fedinfra._compliance") / "report.schema.json").read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


# -- JSON ---------------------------------------------------------------------------------


def test_regenerating_from_a_copied_store_gives_the_same_json_bytes(store: Path, tmp_path: Path) -> None:
    first = generate_report(store, RUN, out_dir=tmp_path / "one", formats=["json"])
    copy = tmp_path / "copy" / "audit.db"
    copy.parent.mkdir()
    shutil.copy(store, copy)
    second = generate_report(copy, RUN, out_dir=tmp_path / "two", formats=["json"])
    assert first.paths["json"].read_bytes() == second.paths["json"].read_bytes()


def test_json_conforms_to_the_published_schema(store: Path) -> None:
    doc = json.loads(to_json(load_report(store, RUN)))
    jsonschema.Draft202012Validator.check_schema(_schema())
    jsonschema.validate(doc, _schema(), cls=jsonschema.Draft202012Validator)


def test_schema_rejects_a_report_missing_a_section(store: Path) -> None:
    doc = json.loads(to_json(load_report(store, RUN)))
    del doc["findings"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema(), cls=jsonschema.Draft202012Validator)


def test_report_hash_is_appended_to_the_log_as_report_generated(store: Path, tmp_path: Path) -> None:
    files = generate_report(store, RUN, out_dir=tmp_path, formats=["json", "html"])
    with AuditLog.open(store) as log:
        entry = log.entries(type="report.generated")[-1]
    assert entry.seq == files.recorded_seq
    assert entry.subject is not None
    assert entry.subject.sha256 == hashlib.sha256(files.paths["json"].read_bytes()).hexdigest()
    assert entry.details["sha256"] == files.sha256


def test_report_cites_the_checkpoint_covering_the_runs_last_entry(store: Path) -> None:
    report = load_report(store, RUN)
    with AuditLog.open(store) as log:
        last = max(e.seq for e in log.entries(run_id=RUN) if e.type != "report.generated")
        head = log.latest_checkpoint
    assert head is not None
    assert report.header.final_checkpoint.tree_size == last + 1 == head.size
    assert report.header.final_checkpoint.root_hash == head.root_b64
    assert report.header.status == "completed"


def test_epsilon_per_site_follows_budget_spent_entries(store: Path) -> None:
    budgets = {b.site: b for b in load_report(store, RUN).controls.budgets}
    assert [p.round for p in budgets["hospital-b"].points] == [1, 3]
    assert budgets["hospital-a"].total == pytest.approx(0.8 * 3 * 0.9)
    assert budgets["hospital-a"].cap_run == 3.0
    assert budgets["hospital-a"].within_cap is True


def test_participation_grid_marks_admitted_dropped_and_rejected(store: Path) -> None:
    report = load_report(store, RUN)
    assert report.participation == {
        "hospital-a": ["admitted", "admitted", "admitted"],
        "hospital-b": ["admitted", "dropped", "admitted"],
        "hospital-c": ["rejected", "rejected", "rejected"],
    }
    by_site = {p.site: p for p in report.participants}
    assert by_site["hospital-b"].rounds_joined == [1, 3]
    assert by_site["hospital-a"].receipts_verified == 2
    assert by_site["hospital-c"].rejection_reason == "no Art. 46 safeguard for a transfer to US"
    assert by_site["hospital-a"].transfer_basis.startswith("within the EEA")


def test_findings_carry_rule_citation_status_and_log_position(store: Path) -> None:
    findings = load_report(store, RUN).findings
    transfer = next(f for f in findings if f.rule_id == "gdpr.transfer")
    assert (transfer.status, transfer.citation, transfer.site) == ("fail", "GDPR Art. 44-49", "hospital-c")
    assert transfer.evidence == {"site.jurisdiction": "US"}
    assert [f.status for f in findings].count("manual") == 1


def test_art30_record_has_every_point_of_art30_1(store: Path) -> None:
    points = [f.point for f in load_report(store, RUN).art30]
    assert points == [f"Art. 30(1)({c})" for c in "abcdefg"]


def test_pci_table_only_for_bank_runs(store: Path) -> None:
    report = load_report(store, RUN)
    assert report.pci is None
    assert [row.ref for row in report.hipaa] == [
        "164.312(a)(1)",
        "164.312(b)",
        "164.312(c)(1)",
        "164.312(d)",
        "164.312(e)(1)",
    ]


def test_site_manifest_in_the_run_directory_supplies_the_dpo_contact(store: Path) -> None:
    sites = store.parent / "sites"
    sites.mkdir()
    (sites / "hospital-a.toml").write_text(
        'name = "hospital-a"\norganisation = "Hospital A"\njurisdiction = "DE"\n'
        '[dpo]\nname = "Dana Privacy"\nemail = "dpo@hospital-a.example"\n'
    )
    art30 = load_report(store, RUN).art30[0]
    assert "Dana Privacy <dpo@hospital-a.example>" in art30.value


# -- HTML and PDF --------------------------------------------------------------------------


def test_html_parses_and_has_every_section_in_order(store: Path) -> None:
    html = to_html(load_report(store, RUN))
    parser = _Sections()
    parser.feed(html)
    parser.close()
    assert parser.ids == [sid for sid, _ in SECTIONS if sid != "pci"]  # a hospital run: no PCI DSS section
    assert parser.external == []
    assert html.count("<svg") == 3


def test_html_escapes_text_from_the_log(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "evil.db"
    with AuditLog.open(path, origin=ORIGIN, signer=signer()) as log:
        log.append(
            run_id="r1",
            round=None,
            type="run.created",
            actor=Actor(kind="coordinator", id="c"),
            outcome="success",
            details={"job_name": "<script>alert(1)</script>"},
        )
        log.publish_checkpoint(run_id="r1")
    html = to_html(load_report(path, "r1"))
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_pdf_opens_and_its_first_page_renders_to_png(store: Path, tmp_path: Path) -> None:
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        pytest.skip("pdftoppm (Debian poppler-utils) is not installed")
    files = generate_report(store, RUN, out_dir=tmp_path, formats=["pdf"])
    pdf = files.paths["pdf"]
    assert pdf.read_bytes().startswith(b"%PDF-")
    subprocess.run(
        [pdftoppm, "-png", "-r", "40", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    png = next(tmp_path.glob("page*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- refusals -------------------------------------------------------------------------------


def test_a_tampered_store_is_refused_and_nothing_is_written(store: Path, tmp_path: Path) -> None:
    with sqlite3.connect(store) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        data = conn.execute("SELECT data FROM audit_entries WHERE seq = 3").fetchone()[0]
        conn.execute("UPDATE audit_entries SET data = ? WHERE seq = 3", (bytes(data).replace(b"DE", b"XX"),))
    out = tmp_path / "out"
    with pytest.raises(VerificationError):
        generate_report(store, RUN, out_dir=out)
    assert not out.exists() or not any(out.iterdir())


def test_an_unknown_run_is_a_config_error(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run 'no-such-run' is not in audit store"):
        generate_report(store, "no-such-run", out_dir=tmp_path)


def test_a_run_whose_tail_is_unsigned_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open.db"
    with AuditLog.open(path, origin=ORIGIN, signer=signer()) as log:
        log.publish_checkpoint(run_id="r2")
        log.append(
            run_id="r2", round=None, type="run.created", actor=Actor(kind="coordinator", id="c"), outcome="success"
        )
    with pytest.raises(VerificationError, match="not covered by a signed checkpoint"):
        load_report(path, "r2")


def test_an_unknown_format_is_a_config_error(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="docx"):
        generate_report(store, RUN, out_dir=tmp_path, formats=["html", "docx"])


def test_a_store_signed_by_another_key_is_refused_when_the_key_is_pinned(store: Path) -> None:
    other = signer(5)
    with pytest.raises(VerificationError):
        load_report(store, RUN, public_key=other.vkey)
