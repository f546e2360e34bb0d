"""Quasi-identifiers found by their values gate training through the packs' k-anonymity rules.

45 CFR 164.514(b)(2)(ii) and GDPR Recital 26: data whose rows single out small groups over
age, sex, place and dates is not anonymous. The columns here have neutral names, so only
their values make them quasi-identifiers (Sweeney 2002: ZIP, birth date and sex single out
87% of the US population).
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from faker import Faker

from fedinfra.config import JobSpec, SiteManifest
from fedinfra.policy import Facts, JobFacts, evaluate, load_packs, scan_table

ROWS = 400
RULES = {"hipaa": "hipaa.re-identification-risk", "gdpr": "gdpr.k-anonymity"}


def _facts(table: dict[str, list[str | None]]) -> Facts:
    job = JobSpec.model_validate(
        {
            "scenario": "hospital",
            "purpose": "medical-research",
            "sites": {"count": 3, "min_sites": 2},
            "privacy": {"mechanism": "dp-sgd", "epsilon": 5.0},
        }
    )
    site = SiteManifest.model_validate(
        {
            "name": "h1",
            "organisation": "Hospital",
            "jurisdiction": "US",
            "sector": "health",
            "purposes": ["medical-research"],
        }
    )
    return Facts(job=JobFacts(spec=job), site=site, scan=scan_table(table), today=dt.date(2025, 9, 1))


def _finding(pack: str, table: dict[str, list[str | None]]) -> tuple[str, bool]:
    result = evaluate(load_packs((pack,)), "site", _facts(table))
    found = next(f for f in result.findings if f.rule_id == RULES[pack])
    return found.status, found.blocking


def _fine_grained() -> dict[str, list[str | None]]:
    r = random.Random(31)
    f = Faker("de_DE")
    f.seed_instance(31)
    return {
        "c1": [r.choice("MF") for _ in range(ROWS)],
        "c2": [str(r.randint(20, 85)) for _ in range(ROWS)],
        "c3": [f.city() for _ in range(ROWS)],
        "c4": [f"{r.gauss(5, 1):.2f}" for _ in range(ROWS)],
    }


@pytest.mark.parametrize("pack", sorted(RULES))
def test_small_groups_over_value_found_quasi_identifiers_block_training(pack: str) -> None:
    table = _fine_grained()
    summary = scan_table(table)
    assert summary.quasi_identifiers == ["c1", "c2", "c3"]  # sex, age, town: by values alone
    assert summary.k_anonymity is not None
    assert summary.k_anonymity < 5
    assert _finding(pack, table) == ("fail", True)


@pytest.mark.parametrize("pack", sorted(RULES))
def test_coarse_quasi_identifiers_with_large_groups_pass(pack: str) -> None:
    r = random.Random(32)
    table: dict[str, list[str | None]] = {
        "c1": [r.choice("MF") for _ in range(ROWS)],
        "c4": [f"{r.gauss(5, 1):.2f}" for _ in range(ROWS)],
    }
    assert scan_table(table).k_anonymity is not None
    assert _finding(pack, table) == ("pass", False)


@pytest.mark.parametrize("pack", sorted(RULES))
def test_a_town_column_found_by_its_values_is_what_makes_the_groups_small(pack: str) -> None:
    # Sex alone leaves ~200 rows per group; sex and town of residence single people out.
    # Without value-first place detection the town column would not count and this passes.
    table = _fine_grained()
    sex_and_town = {"c1": table["c1"], "c3": table["c3"]}
    assert scan_table(sex_and_town).quasi_identifiers == ["c1", "c3"]
    assert _finding(pack, {"c1": table["c1"]}) == ("pass", False)
    assert _finding(pack, sex_and_town) == ("fail", True)
