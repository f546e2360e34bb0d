"""Shared test fixtures: every test runs with fedinfra's hardened environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
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


@pytest.fixture
def flower_run() -> Iterator[None]:
    """What Flower's runtime sets before an app's ``main`` runs: the run its messages belong to.

    In-process tests build real Flower ``Message`` objects outside any app; Flower refuses to
    make one without a run id. Restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("flower_run")``.
    """
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 4242
    TaskIdentity.node_id = 0  # the SuperLink's own node id, the source of server messages
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
