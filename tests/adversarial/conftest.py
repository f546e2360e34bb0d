"""Fixtures of the malicious-site harness."""

from __future__ import annotations

import pytest

from fedinfra.config import JobSpec


@pytest.fixture
def plain_job() -> JobSpec:
    """Four hospitals, two rounds, plaintext FedAvg, no DP: deterministic end to end."""
    return JobSpec.model_validate(
        {
            "name": "adversarial",
            "scenario": "edge",
            "purpose": "on-device-model-improvement",
            "rounds": 2,
            "sites": {"count": 4, "min_sites": 2},
            "training": {"local_epochs": 1},
            "timeout_s": 2.0,
        }
    )
