"""Experiment tracking against a real local MLflow file store and real TensorBoard event files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import typer

from fedinfra.cli import build_app, invoke
from fedinfra.config import JobSpec
from fedinfra.coordinator.artifacts import RunArtifacts
from fedinfra.coordinator.events import RoundResult

TREE = typer.main.get_command(build_app())
RUN = "20260301T090000Z-cccccccccccc"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    job = JobSpec.model_validate(
        {
            "rounds": 3,
            "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5},
            "training": {"lr": 1.6},
            "tracking": {"experiment": "hospital-study"},
        }
    )
    art = RunArtifacts(tmp_path / "runs" / RUN)
    art.write_job(job, RUN)
    art.record_flower_run(4242)
    rounds = [
        RoundResult(round=n, test_loss=0.4 - n / 20, test_accuracy=0.88 + n / 50, train_loss=0.3, replies=3,
                    refused=0, seconds=1.0, details={"epsilon_max": n * 0.9})
        for n in (1, 2, 3)
    ]
    art.write_metrics(RUN, rounds, ["hospital-0"], 3.0, extra={
        "stop_reason": "completed", "privacy": {"mechanism": "dp-sgd", "epsilon_per_site": {"hospital-0": 2.7}}})
    art.write_bytes(f"report-{RUN}.html", b"<html>report</html>")
    return tmp_path / "runs"


def _track(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = invoke(["--log-level", "info", "--log-format", "json", "runs", "track", RUN, *args, "--format", "json"],
                  TREE)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_run_is_tracked_in_a_real_mlflow_file_store(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"file:{tmp_path / 'mlruns'}"

    code, out, err = _track(capsys, "--runs-dir", str(runs), "--mlflow-uri", uri)
    again, out_again, _ = _track(capsys, "--runs-dir", str(runs), "--mlflow-uri", uri)

    assert code == again == 0, err
    run_id = json.loads(out)["mlflow_run_id"]
    assert json.loads(out_again)["mlflow_run_id"] == run_id  # tracked once, not twice
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "hospital-study"
    assert run.info.status == "FINISHED"
    assert run.data.tags["fedinfra.run_id"] == RUN
    assert run.data.tags["fedinfra.flower_run_ids"] == "4242"
    assert run.data.params["training.lr"] == "1.6"
    assert run.data.params["privacy.mechanism"] == "dp-sgd"
    history = client.get_metric_history(run_id, "test_accuracy")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 0.9), (2, 0.92), (3, 0.94)]
    assert [m.value for m in client.get_metric_history(run_id, "round.epsilon_max")] == pytest.approx([0.9, 1.8, 2.7])
    assert run.data.metrics["epsilon.hospital-0"] == 2.7
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "job.json", f"report-{RUN}.html"} <= artifacts
    # MLflow's usage telemetry is off; the log line is JSON from the standard logging module
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(rec["logger"] == "fedinfra.tracking" and rec["mlflow_run_id"] == run_id for rec in logged)


def _events(path: Path) -> list[bytes]:
    """TFRecord framing: u64 length, u32 crc, payload, u32 crc."""
    data, records, i = path.read_bytes(), [], 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        records.append(data[i + 12 : i + 12 + length])
        i += 16 + length
    return records


def test_a_run_is_written_as_tensorboard_scalars(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboardX.proto.event_pb2 import Event

    code, out, err = _track(capsys, "--runs-dir", str(runs), "--tensorboard-dir", str(tmp_path / "tb"))

    assert code == 0, err
    files = list(Path(json.loads(out)["tensorboard"]).glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = {}
    for raw in _events(files[0]):
        event = Event.FromString(raw)
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, round(value.simple_value, 4)))
    assert scalars["test_accuracy"] == [(1, 0.9), (2, 0.92), (3, 0.94)]
    assert scalars["epsilon.hospital-0"] == [(3, 2.7)]


def test_tracking_without_a_destination_is_bad_input(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _track(capsys, "--runs-dir", str(runs))

    assert code == 2
    assert "no tracking destination" in json.loads(out)["error"]


def test_a_tracking_uri_must_name_a_scheme() -> None:
    from fedinfra.config import parse_model
    from fedinfra.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tracking\.mlflow_uri"):
        parse_model(JobSpec, {"tracking": {"mlflow_uri": "mlruns"}}, "job.toml")
