"""``fedinfra compliance check`` and ``fedinfra compliance scan``: output and exit codes 0/1/2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedinfra.cli import compliance as compliance_cli
from fedinfra.policy.scan.synth import patient_table

ROOT = Path(__file__).resolve().parents[2]
JOB = """
name = "j"
scenario = "hospital"
purpose = "medical-research"
[sites]
count = 3
min_sites = 2
[privacy]
mechanism = "dp-sgd"
epsilon = 5.0
"""


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """Root."""

    compliance_cli.register(root)
    return root


@pytest.fixture
def hospital(tmp_path: Path) -> Path:
    """A hospital client folder: site.toml plus a small CSV where the manifest says."""
    shutil.copy(ROOT / "clients" / "hospital" / "site.toml", tmp_path / "site.toml")
    from fedinfra.config import load_site

    site = load_site(tmp_path / "site.toml")
    assert site.dataset is not None
    cols = ["mrn", *site.dataset.feature_columns, "diagnosis"]
    rows = [
        ",".join([f"MRN{1000 + i:08d}", *(f"{(i * 7 + j) % 13}.5" for j in range(30)), str(i % 2)]) for i in range(40)
    ]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hospital-a.csv").write_text(",".join(cols) + "\n" + "\n".join(rows) + "\n")
    (tmp_path / "job.toml").write_text(JOB)
    return tmp_path


def _invoke(app: typer.Typer, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["compliance", *args])


def test_check_passes_a_compliant_site_as_json(app: typer.Typer, hospital: Path) -> None:
    result = _invoke(
        app,
        "check",
        "--site",
        str(hospital / "site.toml"),
        "--job",
        str(hospital / "job.toml"),
        "--tls",
        "--audit",
        "--audit-retention-days",
        "2200",
        "--epsilon-spent",
        "0",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["passed"] is True
    assert set(payload["packs"]) == {"gdpr", "hipaa"}
    assert payload["counts"]["fail"] == 0


def test_check_exits_1_on_a_blocking_finding(app: typer.Typer, hospital: Path) -> None:
    (hospital / "job.toml").write_text(JOB.replace("medical-research", "advertising"))
    args = ("check", "--site", str(hospital / "site.toml"), "--job", str(hospital / "job.toml"))
    text = _invoke(app, *args)
    as_json = _invoke(app, *args, "--format", "json")
    assert (text.exit_code, as_json.exit_code) == (1, 1)
    assert "blocked by 1 rule(s)" in text.stdout
    assert [f["rule_id"] for f in json.loads(as_json.stdout)["findings"] if f["blocking"]] == [
        "gdpr.purpose-limitation"
    ]


def test_check_without_deployment_facts_reports_manual_not_pass(app: typer.Typer, hospital: Path) -> None:
    result = _invoke(
        app, "check", "--site", str(hospital / "site.toml"), "--job", str(hospital / "job.toml"), "--format", "json"
    )
    statuses = {f["rule_id"]: f["status"] for f in json.loads(result.stdout)["findings"]}
    assert statuses["hipaa.transmission-security"] == "manual"


def test_check_exits_2_on_a_malformed_manifest(app: typer.Typer, hospital: Path) -> None:
    (hospital / "site.toml").write_text('name = "x"\norganisation = "o"\njurisdiction = "ZZ"\n')
    result = _invoke(app, "check", "--site", str(hospital / "site.toml"), "--job", str(hospital / "job.toml"))
    assert result.exit_code == 2
    assert "jurisdiction" in result.output


def test_check_exits_2_on_an_unknown_pack(app: typer.Typer, hospital: Path) -> None:
    result = _invoke(
        app, "check", "--site", str(hospital / "site.toml"), "--job", str(hospital / "job.toml"), "--pack", "sox"
    )
    assert result.exit_code == 2


def test_scan_exits_1_and_lists_flagged_columns_as_json(app: typer.Typer, tmp_path: Path) -> None:
    table, truth = patient_table(rows=120, seed=2)
    path = tmp_path / "p.csv"
    rows = zip(*table.values(), strict=True)
    path.write_text(
        ",".join(table) + "\n" + "\n".join(",".join("" if v is None else f'"{v}"' for v in r) for r in rows)
    )
    result = _invoke(app, "scan", str(path), "--format", "json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["clean"] is False
    assert {f["column"] for f in payload["flagged"]} == {c for c, k in truth.items() if k is not None}
    assert all(0 < f["share"] <= 1 for f in payload["flagged"])


def test_scan_exits_0_on_clean_data_with_a_table(app: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "clean.csv"
    path.write_text("glucose,hba1c,outcome\n" + "".join(f"{90 + i}.0,{5 + i % 3}.1,{i % 2}\n" for i in range(30)))
    result = _invoke(app, "scan", str(path))
    assert result.exit_code == 0, result.output
    assert "no blocking identifier column" in result.stdout


def test_scan_with_manifest_blocks_only_training_columns(app: typer.Typer, hospital: Path) -> None:
    result = _invoke(app, "scan", "--manifest", str(hospital / "site.toml"), "--format", "json")
    assert result.exit_code == 0, result.output
    flagged = json.loads(result.stdout)["flagged"]
    assert [(f["column"], f["identifier"], f["blocking"]) for f in flagged] == [("mrn", "medical_record_number", False)]


def test_scan_exits_2_on_a_missing_file(app: typer.Typer, tmp_path: Path) -> None:
    assert _invoke(app, "scan", str(tmp_path / "none.csv")).exit_code == 2


def test_scan_exits_2_without_data_or_manifest(app: typer.Typer) -> None:
    assert _invoke(app, "scan").exit_code == 2
