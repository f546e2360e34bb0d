"""Submitting the fedinfra Flower App to a running SuperLink and following the run.

The job travels inside the run config as JSON (``job``), so what runs is fixed at
submission (:func:`fedinfra.runtime.apps.run_config` lists every key). Progress comes
from ``runs/<run-id>/metrics.json``, which the coordinator rewrites atomically after every
round; the Flower run's status comes from the Control API.

One fedinfra run may span several Flower runs: ``fedinfra run --resume RUN_ID`` submits a
new Flower run that continues the same fedinfra run after its last aggregated round. Each
Flower run id is kept in ``runs/<run-id>/flower-runs.json``, so a resume can first stop a
Flower run left behind by a crashed coordinator.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fedinfra.config import JobSpec
from fedinfra.coordinator.artifacts import FLOWER_RUNS_FILE, atomic_write
from fedinfra.errors import ConfigError, RuntimeLaunchError
from fedinfra.runtime.deploy import CONNECTION, flwr_cli
from fedinfra.runtime.procs import flower_bin, flower_env

APP_COMPONENTS = ("fedinfra.runtime.apps:server_app", "fedinfra.runtime.apps:client_app")


@dataclass(frozen=True)
class Submitted:
    """A run accepted by the SuperLink."""

    run_id: str
    flower_run_id: str
    run_dir: Path


def _private_log(path: Path) -> BinaryIO:
    """Open ``path`` for appending, created 0600 (45 CFR 164.312(a)(1): access to run records)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "ab")


def check_app_dir(app_dir: Path) -> None:
    """The directory must hold the fedinfra Flower App manifest."""
    manifest = app_dir / "pyproject.toml"
    try:
        text = manifest.read_text()
    except OSError as exc:
        raise ConfigError(f"{manifest}: Flower App manifest not found; set app_dir in server.toml") from exc
    if not all(c in text for c in APP_COMPONENTS):
        raise ConfigError(f"{manifest}: does not name {APP_COMPONENTS[0]} and {APP_COMPONENTS[1]}")


def _toml_value(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def submit(
    job: JobSpec,
    *,
    run_id: str,
    runs_dir: Path,
    app_dir: Path,
    flwr_home: Path,
    kit: Path,
    audit_store: str | None = None,
    resume: bool = False,
    report_formats: tuple[str, ...] | None = None,
    registered: int | None = None,
    audit_dir: Path | None = None,
) -> Submitted:
    """Submit ``job`` as run ``run_id`` (or continue it, ``resume``); artifacts go to ``runs_dir/run_id``.

    The app is submitted only if its FAB is a release the coordinator kit approved, signed by
    a key it pinned (refusals go to ``<audit_dir>/coordinator-audit.jsonl``).
    """
    from fedinfra.runtime.apps import DEFAULT_REPORT_FORMATS, run_config
    from fedinfra.runtime.serverapp_guard import check_own_app

    if registered is not None and job.sites.count > registered:
        raise ConfigError(
            f"job needs sites.count={job.sites.count} but only {registered} sites are registered; "
            "provision more sites or lower sites.count"
        )
    check_app_dir(app_dir)
    from fedinfra.task.packaging import check_app_holds_task

    check_app_holds_task(app_dir, job)
    check_own_app(app_dir, kit, audit_dir)  # before anything reaches the SuperLink
    run_dir = runs_dir / run_id
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = run_config(
        job,
        run_id=run_id,
        runs_dir=runs_dir,
        kit=kit,
        audit_store=audit_store,
        resume=resume,
        report_formats=DEFAULT_REPORT_FORMATS if report_formats is None else report_formats,
    )
    overrides = run_dir / "flower-run-config.toml"
    atomic_write(overrides, "".join(f"{k} = {_toml_value(v)}\n" for k, v in config.items()).encode())
    answer = flwr_cli(["run", str(app_dir), CONNECTION, "--run-config", str(overrides)], flwr_home=flwr_home)
    if not answer.get("success"):
        detail = [ln for ln in str(answer.get("error-message", "")).splitlines() if ln.strip()]
        raise RuntimeLaunchError(f"the SuperLink refused the run: {detail[-1] if detail else 'unknown error'}")
    flower_run_id = str(answer["run-id"])
    record = run_dir / FLOWER_RUNS_FILE
    runs = flower_runs(run_dir)
    runs.append(flower_run_id)
    atomic_write(record, json.dumps(runs).encode())
    return Submitted(run_id, flower_run_id, run_dir)


def flower_runs(run_dir: Path) -> list[str]:
    """The Flower run ids submitted for this fedinfra run, oldest first."""
    try:
        runs = json.loads((run_dir / FLOWER_RUNS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [str(r) for r in runs] if isinstance(runs, list) else []


def check_resumable(job: JobSpec, run_dir: Path) -> None:
    """A run can be resumed only with the job it started with."""
    try:
        started = json.loads((run_dir / "job.json").read_text())["job"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{run_dir}: no job.json; run {run_dir.name} never started here, so it cannot be resumed"
        ) from exc
    if JobSpec.model_validate(started) != job:
        raise ConfigError(
            f"{run_dir / 'job.json'}: run {run_dir.name} started with a different job; "
            "resume it with the same job file"
        )


def stop_stale(run_dir: Path, *, flwr_home: Path) -> list[str]:
    """Stop Flower runs of this fedinfra run that are still marked running; return their ids.

    After a coordinator crash the SuperLink may still count the dead run as running (and
    its sites may still hold its messages); a resumed run must not race it.
    """
    stopped = []
    for flower_run_id in flower_runs(run_dir):
        if run_status(flower_run_id, flwr_home=flwr_home).startswith("finished"):
            continue
        flwr_cli(["stop", flower_run_id, CONNECTION], flwr_home=flwr_home)
        stopped.append(flower_run_id)
    return stopped


def run_status(flower_run_id: str, *, flwr_home: Path) -> str:
    """Flower's status of a run (``running``, ``finished:completed``, ``finished:failed`` ...)."""
    answer = flwr_cli(["ls", CONNECTION, "--run-id", flower_run_id], flwr_home=flwr_home)
    runs = answer.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def _read_metrics(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def follow(
    sub: Submitted,
    *,
    flwr_home: Path,
    on_round: Callable[[dict[str, Any]], None],
    timeout: float,
    poll_s: float = 0.5,
    skip: int = 0,
) -> str:
    """Report each new round until the run ends; return Flower's final status.

    ``skip`` rounds are already known (a resumed run's metrics start with them).

    ``flwr log --stream`` runs alongside: it ends when the run ends, which is cheaper than
    asking the Control API every few seconds.
    """
    stream = subprocess.Popen(  # noqa: S603 - fixed argv
        [flower_bin("flwr"), "log", sub.flower_run_id, CONNECTION, "--stream"],
        env=flower_env(flwr_home),
        stdout=_private_log(sub.run_dir / "flower.log"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    seen = skip
    deadline = time.monotonic() + timeout
    try:
        while True:
            metrics = _read_metrics(sub.run_dir / "metrics.json")
            rounds = (metrics or {}).get("rounds", [])
            for r in rounds[seen:]:
                on_round(r)
            seen = max(seen, len(rounds))
            if stream.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeLaunchError(f"run {sub.run_id} did not finish within {timeout:.0f} s; see {sub.run_dir}")
            time.sleep(poll_s)
    finally:
        if stream.poll() is None:
            stream.terminate()
            stream.wait(timeout=10)
    metrics = _read_metrics(sub.run_dir / "metrics.json")
    for r in (metrics or {}).get("rounds", [])[seen:]:
        on_round(r)
    return run_status(sub.flower_run_id, flwr_home=flwr_home)


__all__ = [
    "Submitted",
    "check_app_dir",
    "check_resumable",
    "flower_runs",
    "follow",
    "run_status",
    "stop_stale",
    "submit",
]
