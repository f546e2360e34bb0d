"""Experiment tracking: a finished run's figures to MLflow and/or TensorBoard (both optional).

What goes out is what the run directory already holds for anyone with access to it: the
job's hyperparameters, the per-round figures and privacy figures of ``metrics.json``, and
the report files - never data, never a value from a site outside the accounting. Nothing is
sent unless the job names a destination (``[tracking]``); MLflow's own usage telemetry is
switched off before it is imported (DESIGN.md: nothing phones home).

* MLflow (``mlflow-skinny``, extra ``tracking``): one MLflow run per fedinfra run, named by
  the run id and tagged ``fedinfra.run_id``; tracking the same run again reuses it.
  ``file:`` URIs use MLflow's file store, which MLflow 3 keeps only behind
  ``MLFLOW_ALLOW_FILE_STORE`` - the user asked for it by writing ``file:``.
* TensorBoard (``tensorboardX``, extra ``tracking``): scalars under ``<dir>/<run id>``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedinfra._optional import extra_imports
from fedinfra.config.job import TrackingSpec
from fedinfra.errors import ConfigError

#: Per-round figures logged as metrics (step = round).
ROUND_FIGURES = ("test_loss", "test_accuracy", "train_loss", "replies", "refused", "seconds")
_QUIET_MLFLOW = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
_MAX_PARAM = 500
log = logging.getLogger("fedinfra.tracking")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in sorted(value.items()):
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)
    elif value is not None:
        yield prefix, json.dumps(value) if isinstance(value, list) else str(value)


def _reports(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("report-*"))


def run_figures(run_dir: Path) -> dict[str, Any]:
    """What a tracker logs, read from the run directory (``metrics.json``, ``job.json``, reports)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_dir}: no readable metrics.json; track a run that has finished a round") from exc
    params = dict(list(_flatten("", metrics.get("job") or {}))[:_MAX_PARAM])
    rounds: list[tuple[int, dict[str, float]]] = []
    for r in metrics.get("rounds", []):
        figures = {k: v for k in ROUND_FIGURES if (v := _finite(r.get(k))) is not None}
        for k, v in (r.get("details") or {}).items():
            if (num := _finite(v)) is not None:
                figures[f"round.{k}"] = num
        rounds.append((int(r["round"]), figures))
    final: dict[str, float] = {}
    for key in ("final_accuracy", "final_loss"):
        if (num := _finite(metrics.get(key))) is not None:
            final[key] = num
    privacy = metrics.get("privacy") or {}
    if privacy.get("mechanism") not in (None, "none"):
        for site, eps in (privacy.get("epsilon_per_site") or {}).items():
            if (num := _finite(eps)) is not None:
                final[f"epsilon.{site}"] = num
    return {
        "run_id": str(metrics.get("run_id") or run_dir.name),
        "flower_run_ids": [str(f) for f in metrics.get("flower_run_ids", [])],
        "params": params,
        "rounds": rounds,
        "final": final,
        "status": "FINISHED" if metrics.get("stop_reason") else "RUNNING",
        "artifacts": [p for p in [run_dir / "metrics.json", run_dir / "job.json", *_reports(run_dir)] if p.is_file()],
    }


def log_mlflow(run_dir: Path, uri: str, experiment: str = "fedinfra") -> str:
    """Log the run to MLflow at ``uri``; return the MLflow run id (reused if already tracked)."""
    os.environ.update(_QUIET_MLFLOW)
    if uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    figures = run_figures(run_dir)
    with extra_imports("MLflow tracking ([tracking] mlflow_uri)", "tracking"):
        from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    existing = client.search_runs([exp_id], filter_string=f"tags.`fedinfra.run_id` = '{figures['run_id']}'")
    if existing:
        return str(existing[0].info.run_id)
    run = client.create_run(
        exp_id,
        run_name=figures["run_id"],
        tags={"fedinfra.run_id": figures["run_id"], "fedinfra.flower_run_ids": ",".join(figures["flower_run_ids"])},
    )
    rid = run.info.run_id
    for key, value in figures["params"].items():
        client.log_param(rid, key, value[:6000])
    for step, values in figures["rounds"]:
        for key, value in values.items():
            client.log_metric(rid, key, value, step=step)
    for key, value in figures["final"].items():
        client.log_metric(rid, key, value)
    for path in figures["artifacts"]:
        client.log_artifact(rid, str(path))
    client.set_terminated(rid, status=figures["status"])
    return str(rid)


def log_tensorboard(run_dir: Path, log_dir: Path) -> Path:
    """Write the run's per-round figures as TensorBoard scalars under ``log_dir/<run id>``."""
    figures = run_figures(run_dir)
    target: Path = log_dir / str(figures["run_id"])
    with extra_imports("TensorBoard tracking ([tracking] tensorboard_dir)", "tracking"):
        from tensorboardX import SummaryWriter  # type: ignore[import-untyped]
    writer = SummaryWriter(logdir=str(target))
    try:
        for step, values in figures["rounds"]:
            for key, value in values.items():
                writer.add_scalar(key, value, global_step=step)
        last = figures["rounds"][-1][0] if figures["rounds"] else 0
        for key, value in figures["final"].items():
            writer.add_scalar(key, value, global_step=last)
    finally:
        writer.close()
    return target


def track_run(run_dir: Path, spec: TrackingSpec) -> dict[str, str]:
    """Send the run to every destination ``spec`` names; return where each went."""
    out: dict[str, str] = {}
    if spec.mlflow_uri:
        out["mlflow_run_id"] = log_mlflow(run_dir, spec.mlflow_uri, spec.experiment)
        log.info("run tracked in MLflow", extra={"run_dir": str(run_dir), "mlflow_run_id": out["mlflow_run_id"]})
    if spec.tensorboard_dir:
        out["tensorboard"] = str(log_tensorboard(run_dir, Path(spec.tensorboard_dir)))
        log.info("run written as TensorBoard scalars", extra={"run_dir": str(run_dir), "logdir": out["tensorboard"]})
    return out


def track_after_run(run_dir: Path, spec: TrackingSpec) -> None:
    """Track a run that just ended; a tracker that fails is logged, never fails the run."""
    if not (spec.mlflow_uri or spec.tensorboard_dir):
        return
    try:
        track_run(run_dir, spec)
    except Exception as exc:  # the run's own artifacts are complete; tracking is a copy
        log.warning("experiment tracking failed: %s: %s; retry with 'fedinfra runs track'", type(exc).__name__, exc)
