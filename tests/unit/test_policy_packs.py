"""Policy packs: the shipped packs load; bad packs fail with the file and field named."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import pytest

import fedinfra.policy as policy
from fedinfra.errors import ConfigError
from fedinfra.policy import BUILTIN_PACKS, load_pack_file, load_packs, parse_pack

GOOD_RULE = """
[[rules]]
id = "x.tls"
title = "TLS"
citation = "45 CFR 164.312(e)(1)"
gate = "job"
check = "tls-enabled"
"""
HEADER = """
name = "x"
title = "X"
version = "1"
regulation = "test"
source = "https://example.org"
"""


def test_public_surface_is_pinned() -> None:
    assert set(policy.__all__) == {
        "BUILTIN_PACKS",
        "GATES",
        "SECTOR_PACKS",
        "CloseFacts",
        "ColumnReport",
        "Evaluation",
        "EvidenceUnavailable",
        "Facts",
        "Finding",
        "Gate",
        "JobFacts",
        "Outcome",
        "Pack",
        "RoundFacts",
        "Rule",
        "ScanSummary",
        "Status",
        "evaluate",
        "load_pack_file",
        "load_packs",
        "parse_pack",
        "preflight",
        "register_check",
        "registered_checks",
        "scan_file",
        "scan_site_data",
        "scan_table",
        "site_packs",
    }


@pytest.mark.parametrize("name", BUILTIN_PACKS)
def test_every_shipped_pack_loads_with_the_hash_of_its_bytes(name: str) -> None:
    [pack] = load_packs([name])
    raw = (resources.files("fedinfra._compliance") / "packs" / f"{name}.toml").read_bytes()
    assert pack.name == name
    assert pack.sha256 == hashlib.sha256(raw).hexdigest()
    assert all(r.spec.citation for r in pack.rules)


@pytest.mark.parametrize(
    ("pack", "citation", "check"),
    [
        ("hipaa", "45 CFR 164.312(e)(1)", "tls-enabled"),
        ("gdpr", "GDPR Art. 25(1), Art. 32(1)(a)", "update-protection"),
        ("gdpr", "GDPR Art. 25(1), Art. 32(1)", "epsilon-cap"),
        ("gdpr", "GDPR Art. 6(1)", "lawful-basis"),
        ("gdpr", "GDPR Art. 9(1)-(2)", "art9-condition"),
        ("gdpr", "GDPR Art. 5(1)(b)", "purpose-limitation"),
        ("gdpr", "GDPR Art. 44-46", "transfer-allowed"),
        ("hipaa", "45 CFR 164.514(b)(2)(i)", "no-identifiers-in-training"),
        ("hipaa", "45 CFR 164.312(b)", "audit-enabled"),
        ("pci-dss", "PCI DSS v4.0.1 Req. 10.2.1", "audit-enabled"),
        ("hipaa", "45 CFR 164.316(b)(2)(i)", "audit-retention"),
        ("pci-dss", "PCI DSS v4.0.1 Req. 10.5.1", "audit-retention"),
        ("glba", "16 CFR 314.4(c)(3)", "tls-enabled"),
        ("eu-ai-act", "AI Act Art. 19(1)", "audit-retention"),
    ],
)
def test_required_rules_are_present(pack: str, citation: str, check: str) -> None:
    [loaded] = load_packs([pack])
    assert any(r.spec.citation == citation and r.spec.check == check for r in loaded.rules)


def test_retention_minimums_match_the_regulations() -> None:
    def min_days(pack: str) -> int:
        [p] = load_packs([pack])
        [rule] = [r for r in p.rules if r.spec.check == "audit-retention"]
        return int(rule.params.min_days)  # type: ignore[attr-defined]

    assert min_days("hipaa") >= 6 * 365
    assert min_days("pci-dss") >= 365
    assert min_days("eu-ai-act") >= 182


def test_unknown_check_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(HEADER + GOOD_RULE.replace("tls-enabled", "tls-maybe"))
    with pytest.raises(ConfigError, match=r"bad\.toml: field 'rules\.0\.check'.*unknown check 'tls-maybe'"):
        load_pack_file(path)


def test_missing_citation_names_the_field() -> None:
    text = HEADER + GOOD_RULE.replace('citation = "45 CFR 164.312(e)(1)"\n', "")
    with pytest.raises(ConfigError, match=r"p\.toml: field 'rules\.0\.citation'"):
        parse_pack(text.encode(), "p.toml")


def test_bad_check_parameters_name_the_rule() -> None:
    rule = GOOD_RULE.replace('check = "tls-enabled"', 'check = "epsilon-cap"\nparams = { max_epsilon = -1 }')
    with pytest.raises(ConfigError, match=r"rules\.0\.params \(x\.tls\).*max_epsilon"):
        parse_pack((HEADER + rule).encode(), "p.toml")


def test_unknown_parameter_is_rejected() -> None:
    rule = GOOD_RULE.replace('check = "tls-enabled"', 'check = "tls-enabled"\nparams = { strict = true }')
    with pytest.raises(ConfigError, match="strict"):
        parse_pack((HEADER + rule).encode(), "p.toml")


def test_unknown_evidence_is_rejected() -> None:
    rule = GOOD_RULE + 'evidence = ["job.colour"]\n'
    with pytest.raises(ConfigError, match="unknown evidence"):
        parse_pack((HEADER + rule).encode(), "p.toml")


def test_duplicate_rule_ids_are_rejected() -> None:
    with pytest.raises(ConfigError, match="duplicate rule id"):
        parse_pack((HEADER + GOOD_RULE + GOOD_RULE).encode(), "p.toml")


def test_invalid_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_pack(b"name = ", "p.toml")


def test_unknown_pack_name_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="'sox' does not exist; choose from gdpr"):
        load_packs(["sox"])


def test_duplicate_names_load_once() -> None:
    assert [p.name for p in load_packs(["gdpr", "gdpr", "hipaa"])] == ["gdpr", "hipaa"]
