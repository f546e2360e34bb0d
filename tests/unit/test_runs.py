"""``fedinfra runs ls|show|compare|stop|logs`` over run directories the coordinator's writer made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from fedinfra.cli import build_app, invoke
from fedinfra.config import JobSpec
from fedinfra.coordinator.artifacts import METRICS_SCHEMA_VERSION, RunArtifacts
from fedinfra.coordinator.events import RoundResult

TREE = typer.main.get_command(build_app())
DP = "20260301T090000Z-aaaaaaaaaaaa"
DPHE = "20260301T100000Z-bbbbbbbbbbbb"


def _write(runs: Path, run_id: str, *, he: bool, accuracy: float, epsilon: float, flower_id: int) -> Path:
    """A finished run written by :class:`RunArtifacts`, exactly as the coordinator writes one."""
    job = JobSpec.model_validate(
        {
            "scenario": "hospital",
            "rounds": 3,
            "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5},
            "secure_aggregation": {"mode": "bfv" if he else "none"},
            "training": {"lr": 1.6, "batch_size": 100_000, "local_epochs": 1},
        }
    )
    art = RunArtifacts(runs / run_id)
    art.write_job(job, run_id)
    art.record_flower_run(flower_id)
    rounds = [
        RoundResult(round=n, test_loss=0.5 - n / 10, test_accuracy=accuracy - (3 - n) / 100, train_loss=0.4,
                    replies=3, refused=0, seconds=1.5)
        for n in (1, 2, 3)
    ]
    art.write_metrics(run_id, rounds[:1], ["hospital-0", "hospital-1"], 2.0)  # after round 1
    art.write_metrics(
        run_id,
        rounds,
        ["hospital-0", "hospital-1"],
        6.0,
        extra={
            "stop_reason": "completed",
            "secure_aggregation": "bfv" if he else "none",
            "privacy": {
                "mechanism": "dp-sgd",
                "epsilon_per_site": {"hospital-0": epsilon, "hospital-1": epsilon - 0.1},
            },
        },
    )
    return runs / run_id


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _write(root, DP, he=False, accuracy=0.93, epsilon=2.9, flower_id=111)
    _write(root, DPHE, he=True, accuracy=0.91, epsilon=2.95, flower_id=222)
    return root


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = invoke(list(args), TREE)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_metrics_json_has_a_schema_timestamps_versions_hyperparameters_and_rounds_once(runs: Path) -> None:
    doc = json.loads((runs / DP / "metrics.json").read_text())

    assert doc["schema_version"] == METRICS_SCHEMA_VERSION == 2
    assert doc["created_at"] <= doc["updated_at"]
    assert doc["created_at"].endswith("Z")
    assert doc["versions"]["fedinfra"]
    assert doc["versions"]["flwr"]
    assert doc["job"]["training"]["lr"] == 1.6
    assert doc["job"]["privacy"]["mechanism"] == "dp-sgd"
    assert doc["flower_run_ids"] == ["111"]
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    # per-round figures appear once: no parallel accuracy/loss/round_s lists
    assert "accuracy" not in doc
    assert "loss" not in doc
    assert "round_s" not in doc["timings"]


def test_runs_ls_lists_one_id_per_run_with_flowers_id_inside(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "runs", "ls", "--runs-dir", str(runs), "--format", "json")

    listed = json.loads(out)
    assert code == 0
    assert [(r["run_id"], r["mode"], r["status"], r["flower_run_ids"]) for r in listed] == [
        (DP, "dp", "completed", ["111"]),
        (DPHE, "dp+he", "completed", ["222"]),
    ]


def test_runs_compare_prints_the_difference_in_accuracy_and_epsilon(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "runs", "compare", DP, DPHE, "--runs-dir", str(runs), "--format", "json")
    text_code, text, _ = cli(capsys, "runs", "compare", DP, DPHE, "--runs-dir", str(runs))

    delta = json.loads(out)["delta"]
    assert code == text_code == 0
    assert delta["final_accuracy"] == pytest.approx(0.91 - 0.93)
    assert delta["epsilon_max"] == pytest.approx(2.95 - 2.9)
    assert "-0.0200" in text
    assert "+0.050" in text
    assert "dp+he" in text


def test_runs_show_of_an_unknown_run_is_one_line_and_exit_2(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "runs", "show", "does-not-exist", "--runs-dir", str(runs))

    assert code == 2
    assert err.count("\n") == 1
    assert "does-not-exist" in err
    assert DPHE in err  # names runs to choose from


def test_runs_show_and_logs(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (runs / DP / "flower.log").write_text("".join(f"line {i}\n" for i in range(100)))

    code, out, _ = cli(capsys, "runs", "show", DP, "--runs-dir", str(runs), "--format", "json")
    log_code, log_out, _ = cli(capsys, "runs", "logs", DP, "--runs-dir", str(runs), "--tail", "3", "--format", "json")

    assert code == log_code == 0
    assert json.loads(out)["epsilon_per_site"] == {"hospital-0": 2.9, "hospital-1": pytest.approx(2.8)}
    assert json.loads(log_out)["logs"][0]["lines"] == ["line 97", "line 98", "line 99"]


def test_runs_stop_of_a_finished_run_is_refused(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text(f'runs_dir = "{runs}"\nstate_dir = "state"\n')

    code, _, err = cli(capsys, "runs", "stop", DP, "--config", str(cfg))

    assert code == 2
    assert "nothing to stop (completed)" in err


def test_runs_ls_reads_the_consortium_audit_log_too(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedinfra.audit import Actor, AuditLog
    from fedinfra.audit.note import Signer

    store = tmp_path / "audit.sqlite"
    coord = Actor(kind="coordinator", id="coordinator")
    with AuditLog.open(store, origin="fedinfra.test", signer=Signer.generate("fedinfra.test")) as log:
        for run_id, end in ((DP, "run.completed"), (DPHE, None), ("20260301T080000Z-cccccccccccc", "run.failed")):
            log.append(run_id=run_id, round=None, type="run.created", actor=coord, outcome="success", details={})
            if end:
                log.append(run_id=run_id, round=None, type=end, actor=coord, outcome="success", details={})
        log.publish_checkpoint(run_id=DP)

    code, out, err = cli(capsys, "runs", "ls", "--runs-dir", str(runs), "--store", str(store), "--format", "json")

    assert code == 0, err
    listed = {r["run_id"]: (r["status"], r["audit_status"]) for r in json.loads(out)}
    assert listed == {
        "20260301T080000Z-cccccccccccc": ("no run directory here", "failed"),
        DP: ("completed", "completed"),
        DPHE: ("completed", "started"),
    }
    assert "runs ls" in (tmp_path / "audit.sqlite.reads.jsonl").read_text()  # the read was recorded first


def test_a_run_the_operator_stopped_is_listed_as_stopped_by_its_directory_and_by_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``runs stop`` marks the run before stopping Flower's; the coordinator's run.failed names the stop."""
    from fedinfra.audit import Actor, AuditLog
    from fedinfra.audit.note import Signer
    from fedinfra.coordinator.trail import failure_reason
    from fedinfra.runtime.runstore import mark_stopped

    runs = tmp_path / "runs"
    stopped, crashed = "20260301T110000Z-dddddddddddd", "20260301T120000Z-eeeeeeeeeeee"
    for run_id in (stopped, crashed):
        art = RunArtifacts(runs / run_id)
        art.write_job(JobSpec(), run_id)
        art.record_flower_run(333)
        art.write_json("error.json", {"error": "SystemExit", "message": "1"})  # what the ServerApp leaves
    mark_stopped(runs / stopped)
    assert RunArtifacts(runs / stopped).stop_requested()
    assert not RunArtifacts(runs / crashed).stop_requested()
    store = tmp_path / "audit.sqlite"
    coord = Actor(kind="coordinator", id="coordinator")
    with AuditLog.open(store, origin="fedinfra.test", signer=Signer.generate("fedinfra.test")) as log:
        for run_id, was_stopped in ((stopped, True), (crashed, False)):
            log.append(run_id=run_id, round=None, type="run.created", actor=coord, outcome="success", details={})
            reason = failure_reason(SystemExit(1), stopped=was_stopped)
            log.append(run_id=run_id, round=None, type="run.failed", actor=coord, outcome="failure",
                       details={"reason": reason})
        log.publish_checkpoint(run_id=stopped)

    code, out, err = cli(capsys, "runs", "ls", "--runs-dir", str(runs), "--store", str(store), "--format", "json")

    assert code == 0, err
    listed = {r["run_id"]: (r["status"], r["audit_status"]) for r in json.loads(out)}
    assert listed == {stopped: ("stopped: by the operator", "stopped"), crashed: ("failed", "failed")}
    assert (runs / stopped / "stopped.json").stat().st_mode & 0o077 == 0


def test_a_run_just_submitted_is_found_before_its_coordinator_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'fedinfra run' writes flower-runs.json and flower.log at once; job.json comes with the ServerApp."""
    run_id = "20260301T130000Z-ffffffffffff"
    run_dir = tmp_path / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "flower-runs.json").write_text('["444"]')
    (run_dir / "flower.log").write_text("Starting logstream\n")

    code, out, err = cli(capsys, "runs", "logs", run_id, "--runs-dir", str(tmp_path / "runs"), "--format", "json")
    ls_code, ls_out, _ = cli(capsys, "runs", "ls", "--runs-dir", str(tmp_path / "runs"), "--format", "json")

    assert code == 0, err
    assert json.loads(out)["logs"][0]["lines"] == ["Starting logstream"]
    assert ls_code == 0
    assert [(r["run_id"], r["status"], r["flower_run_ids"]) for r in json.loads(ls_out)] == [
        (run_id, "submitted", ["444"])
    ]


def test_runs_stop_returns_once_the_coordinator_has_recorded_the_end(tmp_path: Path) -> None:
    """``runs stop`` waits for the ServerApp's error.json (written after its run.failed entry).

    Without the wait, ``runs ls`` right after ``runs stop`` showed the audit status 'started'
    (CI, stop 22): the coordinator had not yet written run.failed.
    """
    import threading
    import time

    from fedinfra.cli.runs import _await_end

    run_dir = tmp_path / DP
    art = RunArtifacts(run_dir)
    art.write_job(JobSpec(), DP)
    assert _await_end(run_dir, 0.0) is False  # nothing recorded yet, no wait
    t0 = time.monotonic()
    assert _await_end(run_dir, 0.6) is False  # it waited, then gave up
    assert time.monotonic() - t0 >= 0.6
    timer = threading.Timer(0.3, lambda: art.write_json("error.json", {"error": "SystemExit", "message": "1"}))
    timer.start()
    assert _await_end(run_dir, 10.0) is True
    timer.join()
    done = tmp_path / DPHE
    RunArtifacts(done).write_json("metrics.json", {"stop_reason": "completed"})
    assert _await_end(done, 0.0) is True
