"""Shared test fixtures: every test runs with fedinfra's hardened environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fedinfra.runtime.env import HARDENED_ENV

os.environ.update(HARDENED_ENV)

BIN = Path(sys.executable).parent


@pytest.fixture
def fedinfra_bin() -> str:
    """Path of the installed ``fedinfra`` console script."""
    return str(BIN / "fedinfra")


# Hypothesis profiles. "reach" spends more examples and, with --hypothesis-show-statistics,
# reports the share of examples that reached each property's assertion: property tests call
# hypothesis.event("reached ...") just before asserting, so a strategy that wastes its
# examples on an error branch shows up as a low percentage (CONTRIBUTING.md).
#   pytest tests/property --hypothesis-profile=reach --hypothesis-show-statistics
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("reach", max_examples=300, deadline=None)
