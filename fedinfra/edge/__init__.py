"""The edge profile (layer L4): conditions, limits, backoff and durable state for devices.

An edge device trains only when its conditions hold (:mod:`~fedinfra.edge.probe`), within
per-round CPU and memory limits (:mod:`~fedinfra.edge.limits`), reconnects with jittered
exponential backoff (:mod:`~fedinfra.edge.backoff`) and keeps its ledger and receipts in a
local state directory (:mod:`~fedinfra.edge.state`). :mod:`~fedinfra.edge.runner` ties them
into the supervisor loop ``fedinfra edge start`` runs.
"""

from fedinfra.edge.backoff import Backoff, jittered, nominal_delay
from fedinfra.edge.kit import EdgeKit, load_edge_kit
from fedinfra.edge.limits import ProcessWatchdog, RoundGuard, run_limited
from fedinfra.edge.probe import (
    PROBES,
    ConditionProbe,
    ConditionReport,
    LinuxProbe,
    Readings,
    StaticProbe,
    evaluate,
    make_probe,
)
from fedinfra.edge.runner import EdgeRunner, RunnerHooks, check_server, supernode_argv
from fedinfra.edge.state import EdgeState

__all__ = [
    "PROBES",
    "Backoff",
    "ConditionProbe",
    "ConditionReport",
    "EdgeKit",
    "EdgeRunner",
    "EdgeState",
    "LinuxProbe",
    "ProcessWatchdog",
    "Readings",
    "RoundGuard",
    "RunnerHooks",
    "StaticProbe",
    "check_server",
    "evaluate",
    "jittered",
    "load_edge_kit",
    "make_probe",
    "nominal_delay",
    "run_limited",
    "supernode_argv",
]
