"""Runs as first-class objects: the run directories under a runs directory, read-only.

A run has one id - fedinfra's, the name of ``runs/<run-id>/`` and the ``run_id`` of every
audit entry; Flower's run ids (one per submission or resume) are recorded inside it in
``flower-runs.json`` and ``metrics.json``. This module only reads what a run left:
``job.json`` (the resolved job), ``metrics.json`` (per-round figures, final figures,
privacy), ``error.json`` (why it failed) and its log files. Comparing two runs is a pure
function of two :class:`RunInfo`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedinfra.coordinator.artifacts import FLOWER_RUNS_FILE, STOP_FILE
from fedinfra.coordinator.trail import STOPPED_REASON
from fedinfra.errors import ConfigError

LOG_FILES = ("flower.log", "superlink.log", "coordinator.log")
#: ``runs ls`` status of a run ``fedinfra runs stop`` stopped.
STOPPED_STATUS = "stopped: by the operator"


@dataclass(frozen=True)
class RunInfo:
    """What one run directory says about its run."""

    run_id: str
    run_dir: str
    status: str
    flower_run_ids: list[str]
    created_at: str | None
    updated_at: str | None
    scenario: str | None
    privacy: str
    secure_aggregation: str
    rounds_planned: int | None
    rounds_done: int
    final_accuracy: float | None
    final_loss: float | None
    epsilon_max: float | None
    epsilon_per_site: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None
    reports: list[str] = field(default_factory=list)
    audit_status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (``--format json``)."""
        return asdict(self)

    @property
    def mode(self) -> str:
        """The protection mode as the demo names it: none, dp, he, dp+he (or the raw names)."""
        dp = self.privacy not in ("none", "not recorded")
        he = self.secure_aggregation not in ("none", "not recorded")
        name = {"bfv": "he", "ckks": "he"}.get(self.secure_aggregation, self.secure_aggregation)
        if dp:
            return f"dp+{name}" if he else "dp"
        return name if he else "none"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def is_run_dir(path: Path) -> bool:
    """A directory a run wrote: its job, its metrics, or (just submitted) Flower's run id."""
    return path.is_dir() and any((path / n).is_file() for n in ("job.json", "metrics.json", FLOWER_RUNS_FILE))


def read_run(run_dir: Path) -> RunInfo:
    """Summarise ``run_dir``; missing files leave their fields empty."""
    job_doc = _dict(_read(run_dir / "job.json"))
    job = _dict(job_doc.get("job"))
    metrics = _dict(_read(run_dir / "metrics.json"))
    error = _read(run_dir / "error.json")
    privacy = _dict(metrics.get("privacy"))
    per_site = {str(k): float(v) for k, v in _dict(privacy.get("epsilon_per_site")).items() if _num(v) is not None}
    mechanism = str(privacy.get("mechanism") or _dict(job.get("privacy")).get("mechanism") or "not recorded")
    secagg = metrics.get("secure_aggregation") or _dict(job.get("secure_aggregation")).get("mode")
    rounds = [r for r in metrics.get("rounds", []) if isinstance(r, dict)]
    if metrics.get("stop_reason") == "completed":
        status = "completed"  # it finished before a stop took
    elif (run_dir / STOP_FILE).is_file():
        status = STOPPED_STATUS
    elif isinstance(error, dict):
        status = "failed"
    elif metrics.get("stop_reason"):
        status = "completed" if metrics["stop_reason"] == "completed" else f"stopped: {metrics['stop_reason']}"
    elif metrics or job:
        status = "running or interrupted"
    elif (run_dir / FLOWER_RUNS_FILE).is_file():
        status = "submitted"  # the SuperLink has it; the coordinator has not started it yet
    else:
        status = "unknown"
    flower = metrics.get("flower_run_ids") or _read(run_dir / FLOWER_RUNS_FILE) or []
    timings = _dict(metrics.get("timings"))
    return RunInfo(
        run_id=str(metrics.get("run_id") or job_doc.get("run_id") or run_dir.name),
        run_dir=str(run_dir),
        status=status,
        flower_run_ids=[str(f) for f in flower] if isinstance(flower, list) else [],
        created_at=metrics.get("created_at"),
        updated_at=metrics.get("updated_at"),
        scenario=job.get("scenario"),
        privacy=mechanism,
        secure_aggregation=str(secagg or "not recorded"),
        rounds_planned=job.get("rounds") if isinstance(job.get("rounds"), int) else None,
        rounds_done=len(rounds),
        final_accuracy=_num(metrics.get("final_accuracy")),
        final_loss=_num(metrics.get("final_loss")),
        epsilon_max=max(per_site.values()) if per_site and mechanism != "none" else None,
        epsilon_per_site=per_site if mechanism != "none" else {},
        seconds=_num(timings.get("total_s")),
        error=str(error.get("message")) if isinstance(error, dict) and error.get("message") else None,
        reports=sorted(p.name for p in run_dir.glob("report-*")),
    )


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run under ``runs_dir``, oldest first (run ids begin with their UTC start time)."""
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: no runs directory; pass --runs-dir (demo: --out) or --config server.toml")
    return [read_run(p) for p in sorted(runs_dir.iterdir()) if is_run_dir(p)]


def find_run(runs_dir: Path, run_id: str) -> Path:
    """The directory of ``run_id``; a one-line error naming the ids to choose from."""
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: no runs directory; pass --runs-dir (demo: --out) or --config server.toml")
    candidate = runs_dir / run_id
    if "/" in run_id or run_id in ("", ".", "..") or not is_run_dir(candidate):
        known = [p.name for p in sorted(runs_dir.iterdir()) if is_run_dir(p)]
        hint = f"known: {', '.join(known[-5:])}" if known else "there are none"
        raise ConfigError(f"run {run_id!r}: no such run in {runs_dir} ({hint}); list them with 'fedinfra runs ls'")
    return candidate


_LOG_STATUS = {"run.created": "started", "run.completed": "completed", "run.failed": "failed"}


def mark_stopped(run_dir: Path) -> None:
    """Record the operator's stop (before Flower's run is stopped: the coordinator reads it as it ends)."""
    import datetime as dt

    from fedinfra.coordinator.artifacts import atomic_write

    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    atomic_write(run_dir / STOP_FILE, json.dumps({"stopped_at": when, "by": "fedinfra runs stop"}).encode())


def unmark_stopped(run_dir: Path) -> None:
    """Withdraw :func:`mark_stopped` (nothing was stopped)."""
    (run_dir / STOP_FILE).unlink(missing_ok=True)


def runs_in_log(target: str | Path) -> dict[str, tuple[str, str]]:
    """``run id -> (status, first timestamp)`` from the audit log's run.created/completed/failed entries.

    The consortium's log is the record of every run, including runs whose directory is gone
    or lives on another host. Opened read-only; the caller records the read (PCI DSS 10.2.1.3).
    """
    from fedinfra.audit import AuditLog

    found: dict[str, tuple[str, str]] = {}
    with AuditLog.open(target, readonly=True) as log:
        for kind in _LOG_STATUS:  # created first: a later completed/failed overrides its status
            for entry in log.entries(type=kind):
                if entry.run_id is None:
                    continue
                first = found.get(entry.run_id, ("", entry.ts))[1]
                status = _LOG_STATUS[kind]
                if kind == "run.failed" and entry.details.get("reason") == STOPPED_REASON:
                    status = "stopped"
                found[entry.run_id] = (status, str(first))
    return found


def merge_log(runs: list[RunInfo], logged: dict[str, tuple[str, str]]) -> list[RunInfo]:
    """Runs from directories with the log's status, plus the runs only the log knows."""
    import dataclasses

    by_id = {r.run_id: dataclasses.replace(r, audit_status=logged.get(r.run_id, ("not in the log", ""))[0])
             for r in runs}
    for run_id, (status, ts) in logged.items():
        if run_id not in by_id:
            by_id[run_id] = RunInfo(
                run_id=run_id, run_dir="", status="no run directory here", flower_run_ids=[], created_at=ts,
                updated_at=None, scenario=None, privacy="not recorded", secure_aggregation="not recorded",
                rounds_planned=None, rounds_done=0, final_accuracy=None, final_loss=None, epsilon_max=None,
                audit_status=status,
            )
    return [by_id[k] for k in sorted(by_id)]


def compare(a: RunInfo, b: RunInfo) -> dict[str, Any]:
    """Side by side, with ``b - a`` for the figures both runs have (accuracy, epsilon, loss, time)."""

    def delta(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else y - x

    return {
        "a": a.to_dict() | {"mode": a.mode},
        "b": b.to_dict() | {"mode": b.mode},
        "delta": {
            "final_accuracy": delta(a.final_accuracy, b.final_accuracy),
            "final_loss": delta(a.final_loss, b.final_loss),
            "epsilon_max": delta(a.epsilon_max, b.epsilon_max),
            "seconds": delta(a.seconds, b.seconds),
        },
    }


def log_files(run_dir: Path) -> list[Path]:
    """The run's log files, in a fixed order."""
    named = [run_dir / n for n in LOG_FILES if (run_dir / n).is_file()]
    others = sorted(p for p in run_dir.glob("*.log") if p not in named)
    return [*named, *others]


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path``."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        return [ln.rstrip("\n") for ln in fh.readlines()[-lines:]]
