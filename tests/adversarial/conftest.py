"""Fixtures of the malicious-site harness."""

from __future__ import annotations

import pytest

from fedinfra.config import JobSpec
from tests.adversarial.harness import adversarial_job


@pytest.fixture
def plain_job() -> JobSpec:
    """Four hospitals, two rounds, plaintext FedAvg, no DP: deterministic end to end."""
    return adversarial_job()
