"""Site manifests, site-gate checks and a site's own preflight on the example clients."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedinfra.config import JobSpec, SiteManifest, load_site
from fedinfra.errors import ConfigError
from fedinfra.policy import Facts, JobFacts, evaluate, load_packs, preflight, scan_table

ROOT = Path(__file__).resolve().parents[2]
TODAY = dt.date(2025, 9, 1)


def _job(**kw: object) -> JobSpec:
    base: dict[str, object] = {
        "scenario": "hospital",
        "purpose": "medical-research",
        "sites": {"count": 3, "min_sites": 2},
        "privacy": {"mechanism": "dp-sgd", "epsilon": 5.0},
    }
    base.update(kw)
    return JobSpec.model_validate(base)


def _site(**kw: object) -> SiteManifest:
    base: dict[str, object] = {
        "name": "h1",
        "organisation": "Hospital",
        "jurisdiction": "DE",
        "sector": "health",
        "lawful_basis": "public-task",
        "art9_condition": "research-statistics",
        "purposes": ["medical-research"],
        "retention_days": 3650,
    }
    base.update(kw)
    return SiteManifest.model_validate(base)


def _site_findings(
    site: SiteManifest, job: JobSpec | None = None, packs: tuple[str, ...] = ("gdpr",)
) -> dict[str, str]:
    scan = scan_table({"x": ["1.5", "2.5"], "label": ["0", "1"]})
    facts = Facts(job=JobFacts(spec=job or _job()), site=site, scan=scan, site_epsilon_spent=0.0, today=TODAY)
    return {f.rule_id: f.status for f in evaluate(load_packs(packs), "site", facts).findings}


@pytest.mark.parametrize(
    "path", ["clients/hospital/site.toml", "clients/bank/site.toml", "clients/bank/site-with-iban.toml"]
)
def test_example_manifests_load(path: str) -> None:
    assert load_site(ROOT / path).name


def test_nonexistent_jurisdiction_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('name = "a"\norganisation = "b"\njurisdiction = "XK"\n')
    with pytest.raises(ConfigError, match=r"site\.toml: field 'jurisdiction'.*not an ISO 3166-1 alpha-2"):
        load_site(path)


def test_malformed_manifest_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('name = "a"\norganisation = "b"\njurisdiction = "DE"\nlawful_basis = "because"\n')
    with pytest.raises(ConfigError, match=r"field 'lawful_basis'"):
        load_site(path)


def test_lowercase_jurisdiction_is_normalised() -> None:
    assert _site(jurisdiction="fr").jurisdiction == "FR"


def test_compliant_site_passes_the_gdpr_site_gate() -> None:
    statuses = _site_findings(
        _site(
            dpo={"name": "DPO", "email": "dpo@h.example"},
            dpia={"reference": "D1", "sha256": "a" * 64, "date": dt.date(2025, 1, 1)},
        )
    )
    assert set(statuses.values()) == {"pass"}


def test_missing_lawful_basis_and_art9_condition_fail() -> None:
    statuses = _site_findings(_site(lawful_basis=None, art9_condition=None))
    assert statuses["gdpr.lawful-basis"] == "fail"
    assert statuses["gdpr.special-category"] == "fail"


def test_purpose_outside_the_site_purposes_fails() -> None:
    assert _site_findings(_site(), _job(purpose="marketing"))["gdpr.purpose-limitation"] == "fail"


def test_withdrawn_consent_fails() -> None:
    site = _site(lawful_basis="consent", consent={"reference": "C-7", "status": "withdrawn"})
    assert _site_findings(site)["gdpr.consent"] == "fail"


def test_given_consent_passes() -> None:
    site = _site(lawful_basis="consent", consent={"reference": "C-7", "status": "given"})
    assert _site_findings(site)["gdpr.consent"] == "pass"


@pytest.mark.parametrize(
    ("jurisdiction", "safeguard", "expected"),
    [
        ("NO", "none", "pass"),  # EEA, outside the EU
        ("CH", "none", "pass"),  # full adequacy
        ("US", "none", "manual"),  # partial adequacy (DPF-certified only)
        ("BR", "none", "fail"),  # no decision in the list
        ("BR", "standard-contractual-clauses", "pass"),  # Art. 46(2)(c)
    ],
)
def test_cross_border_transfer(jurisdiction: str, safeguard: str, expected: str) -> None:
    site = _site(jurisdiction=jurisdiction, transfer_safeguard=safeguard)
    assert _site_findings(site)["gdpr.international-transfer"] == expected


def test_lapsed_adequacy_decision_is_not_relied_on() -> None:
    site = _site(jurisdiction="GB")
    scan = scan_table({"x": ["1"]})
    facts = Facts(job=JobFacts(spec=_job()), site=site, scan=scan, today=dt.date(2026, 6, 1))
    [f] = [
        f for f in evaluate(load_packs(["gdpr"]), "site", facts).findings if f.rule_id == "gdpr.international-transfer"
    ]
    assert f.status == "fail"
    assert "lapsed" in f.message
    assert f.evidence["adequacy_list_as_of"] == "2025-06-30"


def test_dpia_dated_in_the_future_fails() -> None:
    site = _site(dpia={"reference": "D1", "sha256": "a" * 64, "date": dt.date(2030, 1, 1)})
    assert _site_findings(site)["gdpr.dpia"] == "fail"


def test_processor_needs_a_baa_under_hipaa() -> None:
    assert _site_findings(_site(role="processor"), packs=("hipaa",))["hipaa.business-associate"] == "fail"


def test_glba_retention_over_two_years_fails() -> None:
    site = _site(sector="finance", retention_days=1000)
    assert _site_findings(site, _job(scenario="bank"), packs=("glba",))["glba.314.4.c.6"] == "fail"


def test_job_epsilon_above_the_site_cap_fails() -> None:
    site = _site(budget={"epsilon_per_run": 2.0, "epsilon_lifetime": 10.0})
    assert _site_findings(site)["gdpr.site-budget"] == "fail"


def test_lifetime_budget_counts_past_spend() -> None:
    site = _site(budget={"epsilon_per_run": 8.0, "epsilon_lifetime": 10.0})
    scan = scan_table({"x": ["1"]})
    facts = Facts(job=JobFacts(spec=_job()), site=site, scan=scan, site_epsilon_spent=6.0, today=TODAY)
    statuses = {f.rule_id: f.status for f in evaluate(load_packs(["gdpr"]), "site", facts).findings}
    assert statuses["gdpr.site-lifetime-budget"] == "fail"


def _client(tmp_path: Path, kind: str, *extra: str) -> Path:
    shutil.copy(ROOT / "clients" / kind / "site.toml", tmp_path / "site.toml")
    shutil.copy(ROOT / "clients" / kind / "site.toml", tmp_path / "site.toml")
    if kind == "bank":
        shutil.copy(ROOT / "clients" / "bank" / "site-with-iban.toml", tmp_path / "site-with-iban.toml")
    script = ROOT / "clients" / kind / "prepare_data.py"
    subprocess.run([sys.executable, str(script), *extra], check=True, capture_output=True, cwd=tmp_path)
    return tmp_path


def test_hospital_example_preflight_passes_and_reports_the_excluded_mrn(tmp_path: Path) -> None:
    _client(tmp_path, "hospital", "--out", str(tmp_path / "data"))
    site = load_site(tmp_path / "site.toml")
    ev = preflight(
        site,
        _job(),
        tmp_path / "data" / "hospital-a.csv",
        tls=True,
        audit_enabled=True,
        audit_retention_days=2200,
        site_epsilon_spent=0.0,
        today=TODAY,
    )
    assert ev.passed, ev.reason()
    [safe_harbor] = [f for f in ev.findings if f.rule_id == "hipaa.safe-harbor"]
    assert safe_harbor.evidence["excluded_identifier_columns"] == ["mrn"]


def test_bank_site_with_an_iban_column_is_refused_by_its_own_preflight(tmp_path: Path) -> None:
    _client(tmp_path, "bank", "--plant-iban", "--sites", "2", "--out", str(tmp_path / "data-with-iban"))
    site = load_site(tmp_path / "site-with-iban.toml")
    job = _job(scenario="bank", purpose="insurance-propensity-modelling")
    ev = preflight(site, job, tmp_path / "data-with-iban" / "bank-1.csv", today=TODAY)
    assert not ev.passed
    assert {f.rule_id for f in ev.blocking} == {"gdpr.data-minimisation", "pci.3.5.1", "glba.314.4.c.1"}
    assert "iban" in ev.reason()
