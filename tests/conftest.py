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
