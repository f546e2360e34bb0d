"""A deployed bank site whose data holds an identifier column refuses the job itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedinfra.config import JobSpec
from fedinfra.errors import PolicyViolation
from fedinfra.site.context import site_context
from fedinfra.site.round import check_job

ROOT = Path(__file__).resolve().parents[2]


def _bank_job() -> JobSpec:
    return JobSpec.model_validate(
        {
            "scenario": "bank",
            "purpose": "insurance-propensity-modelling",
            "data": {"dataset": "caravan"},
            "sites": {"count": 2, "min_sites": 2},
            "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-6},
            "secure_aggregation": {"mode": "bfv"},
            "policy_packs": ["gdpr", "pci-dss", "glba"],
        }
    )


def _prepare(tmp_path: Path, *extra: str) -> None:
    for name in ("site.toml", "site-with-iban.toml"):
        shutil.copy(ROOT / "clients" / "bank" / name, tmp_path / name)
    script = ROOT / "clients" / "bank" / "prepare_data.py"
    subprocess.run([sys.executable, str(script), *extra], check=True, capture_output=True, cwd=tmp_path)


def test_site_with_an_iban_column_refuses_the_job_in_its_own_preflight(tmp_path: Path) -> None:
    _prepare(tmp_path, "--plant-iban", "--sites", "2", "--out", str(tmp_path / "data-with-iban"))
    node_config: dict[str, object] = {
        "site-manifest": str(tmp_path / "site-with-iban.toml"),
        "state-dir": str(tmp_path / "home"),
    }
    with pytest.raises(PolicyViolation) as info:
        site_context(node_config, _bank_job())

    assert "iban" in str(info.value).lower()
    assert "pci.3.5.1" in str(info.value)


def test_clean_bank_site_accepts_the_same_job(tmp_path: Path) -> None:
    _prepare(tmp_path, "--sites", "2", "--out", str(tmp_path / "data"))
    node_config: dict[str, object] = {"site-manifest": str(tmp_path / "site.toml"), "state-dir": str(tmp_path / "h")}
    ctx = site_context(node_config, _bank_job())

    check_job(ctx, tls=True)
