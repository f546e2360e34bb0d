"""The compliance report shows the task the run trained and its metrics, per round and final.

The log is written through the real :class:`AuditLog` with the details the coordinator
writes (``evaluation.completed`` carries the sites' summed metrics, ``run.completed`` the
task block, ``aggregation.completed`` the coordinator's own evaluation), then read back,
verified and rendered by the real report code.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fedinfra.audit.entry import Actor, Event, Subject
from fedinfra.audit.log import AuditLog
from fedinfra.report import load_report, to_html, to_json
from tests.unit.test_report import ORIGIN, T0, _sha, _site_details, signer

RUN = "20260301T000000Z-task01"
SITES = ["bank-a", "bank-b"]
BINARY = [
    {"loss": 0.31, "accuracy": 0.94, "balanced_accuracy": 0.55, "f1": 0.12, "roc_auc": 0.66},
    {"loss": 0.27, "accuracy": 0.94, "balanced_accuracy": 0.61, "f1": 0.2, "roc_auc": 0.7213},
]
TASK = {"ref": "caravan_task:CaravanTask", "kind": "binary", "headline": "roc_auc", "metrics": BINARY[-1]}


def _store(path: Path, *, per_round: list[dict[str, Any]], task: dict[str, Any] | None, by_sites: bool) -> Path:
    key = signer()
    coord = Actor(kind="coordinator", id="coordinator", key_id=key.key_id)
    tick = iter(T0 + timedelta(seconds=i) for i in range(1000))
    with AuditLog.open(path, origin=ORIGIN, signer=key) as log:
        log.append(run_id=RUN, round=None, type="run.created", actor=coord, outcome="success", now=next(tick),
                   details={"fedinfra_version": "0.1.0", "job_name": "caravan-auc", "scenario": "bank", "tls": True,
                            "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5},
                            "secure_aggregation": {"mode": "secagg"}})
        for name in SITES:
            log.append(run_id=RUN, round=None, type="site.admitted", actor=Actor(kind="site", id=name),
                       outcome="success", details=_site_details(name, "DE"), now=next(tick))
        for rnd, metrics in enumerate(per_round, start=1):
            figures = {} if by_sites else {"test_loss": metrics["loss"], "test_accuracy": metrics.get("accuracy"),
                                           "metrics": metrics}
            events = [
                Event(run_id=RUN, round=rnd, type="round.started", actor=coord, outcome="success",
                      details={"sites": SITES}),
                Event(run_id=RUN, round=rnd, type="aggregation.completed", actor=coord, outcome="success",
                      subject=Subject(artifact=f"model-{rnd}", sha256=_sha(f"m{rnd}"), size=64),
                      details={"replies": 2, "mode": "secagg", **figures}),
            ]
            if by_sites:
                events.append(Event(run_id=RUN, round=rnd, type="evaluation.completed", actor=coord,
                                    outcome="success", details={"evaluated_round": rnd, "test_loss": metrics["loss"],
                                                                "test_accuracy": metrics.get("accuracy"),
                                                                "metrics": metrics, "sites": SITES}))
            log.append_many(events, now=next(tick), publish=True)
        done = {"rounds": len(per_round), **({"task": task} if task else {})}
        log.append_many([Event(run_id=RUN, round=None, type="run.completed", actor=coord, outcome="success",
                               details=done)], now=next(tick), publish=True)
    return path


def test_a_binary_tasks_report_leads_with_roc_auc_per_round_and_final(tmp_path: Path) -> None:
    report = load_report(_store(tmp_path / "audit.db", per_round=BINARY, task=TASK, by_sites=True), RUN)

    assert report.task is not None
    assert (report.task.ref, report.task.kind, report.task.headline) == ("caravan_task:CaravanTask", "binary",
                                                                         "roc_auc")
    assert report.task.names[0] == "roc_auc"
    assert report.task.final["roc_auc"] == pytest.approx(0.7213)
    assert [m.metrics["roc_auc"] for m in report.metrics] == [0.66, 0.7213]
    html = to_html(report)
    assert "final <b>ROC AUC 0.7213</b>" in html
    assert '<h3 id="task-metrics">Task metrics (binary)</h3>' in html
    table = html[html.index('<table class="task-metrics">'):]
    table = table[: table.index("</table>")]
    assert table.index("ROC AUC") < table.index("balanced accuracy")  # the headline column first
    assert "0.66" in table
    assert "<b>0.7213</b>" in table
    assert b'"headline": "roc_auc"' in to_json(report)


def test_a_regression_tasks_report_shows_mse_and_mae_and_no_accuracy(tmp_path: Path) -> None:
    rounds = [{"loss": 0.9, "mse": 0.9, "mae": 0.8}, {"loss": 0.52, "mse": 0.52, "mae": 0.6}]
    task = {"ref": "diabetes_task:DiabetesRegression", "kind": "regression", "headline": "mse", "metrics": rounds[-1]}
    report = load_report(_store(tmp_path / "audit.db", per_round=rounds, task=task, by_sites=True), RUN)

    html = to_html(report)
    assert "final <b>MSE 0.5200</b>" in html
    assert "MAE 0.6000" in html
    assert "final accuracy" not in html


def test_the_coordinators_own_evaluation_fills_the_table_when_the_log_has_no_task_block(tmp_path: Path) -> None:
    report = load_report(_store(tmp_path / "audit.db", per_round=BINARY, task=None, by_sites=False), RUN)

    assert report.task is not None
    assert report.task.final == BINARY[-1]  # the last evaluated round
    assert report.task.ref == "fedinfra.task.builtin:TabularTask"
    assert "Task metrics" in to_html(report)


def test_a_log_without_any_task_metrics_has_no_task_section(tmp_path: Path) -> None:
    report = load_report(_store(tmp_path / "audit.db", per_round=[], task=None, by_sites=True), RUN)

    assert report.task is None
    assert "task-metrics" not in to_html(report)
