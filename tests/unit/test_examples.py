"""Every example's task and data go through a real site round (DP-SGD) and evaluation.

The full federated runs (Flower simulation, secure aggregation) are in
``tests/e2e/test_examples.py``; here each example is prepared in a temporary folder, one
simulated site loads its share through the screen and the task, trains one DP-SGD round
and evaluates the task's metrics.
"""

from __future__ import annotations

import runpy
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedinfra.config import JobSpec, load_job
from fedinfra.config.wire import TrainInstruction
from fedinfra.errors import PolicyViolation
from fedinfra.models import get_weights
from fedinfra.site.context import site_context
from fedinfra.site.round import run_round
from fedinfra.site.tasks import job_model, job_task
from fedinfra.task.metrics import finalize

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _prepare(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *scripts: str) -> JobSpec:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / name, root)
    for script in ("prepare.py", *scripts):
        runpy.run_path(str(root / script), run_name="example")["main"](root)
    monkeypatch.syspath_prepend(str(root))
    job = load_job(root / "job.toml")
    assert job.data.source is not None
    source = job.data.source.model_copy(update={"path": str(root / job.data.source.path)})
    return job.model_copy(update={"data": job.data.model_copy(update={"source": source})})


def _one_round(job: JobSpec, tmp_path: Path) -> tuple[Any, dict[str, float]]:
    from fedinfra.site.app import _test_counts

    node = {"partition-id": 0, "num-partitions": job.sites.count, "state-dir": str(tmp_path / "home")}
    ctx = site_context(node, job)
    weights = get_weights(job_model(job)[0])
    instruction = TrainInstruction(run_id="run-ex", round=1, phase="train", job=job.model_dump(mode="json"))
    out = run_round(ctx, instruction, weights, tls=True, sampled=job.sites.count)
    assert out.update is not None
    trained = {k: weights[k] + out.update[k] for k in weights}
    _, _, count, sums = _test_counts(ctx, trained)
    assert count > 0
    return out, finalize(job_task(job).kind, sums)


@pytest.fixture(autouse=True)
def _forget_example_modules() -> Any:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.endswith("_task"):
            sys.modules.pop(name, None)


def test_digits_cnn_trains_on_png_images_with_dp_sgd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _prepare("digits_cnn", tmp_path, monkeypatch)

    out, metrics = _one_round(job, tmp_path)

    assert out.report.details["mechanism"] == "dp-sgd"
    assert out.report.details["clipping_mode"] == "hooks"  # convolutions: per-sample grads by hooks
    assert 0 < float(out.report.details["epsilon_total"]) <= 8.0  # type: ignore[arg-type]
    assert set(metrics) >= {"accuracy", "balanced_accuracy", "f1", "roc_auc"}


def test_caravan_reports_roc_auc_for_an_imbalanced_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _prepare("caravan", tmp_path, monkeypatch)

    _, metrics = _one_round(job, tmp_path)

    assert job_task(job).kind == "binary"
    assert 0.0 <= metrics["roc_auc"] <= 1.0
    assert metrics["f1"] >= 0.0


def test_diabetes_is_a_regression_with_mse_and_mae(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _prepare("diabetes", tmp_path, monkeypatch)

    _, metrics = _one_round(job, tmp_path)

    assert set(metrics) == {"loss", "mse", "mae"}
    assert np.isfinite(metrics["mse"])
    assert metrics["mae"] > 0


def test_dicom_example_is_refused_until_its_identifying_tags_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _prepare("dicom", tmp_path / "before", monkeypatch)
    node = {"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path / "home")}
    with pytest.raises(PolicyViolation, match=r"re-check finds identifying DICOM tags: .*PatientName"):
        site_context(node, job)

    cleaned = _prepare("dicom", tmp_path / "after", monkeypatch, "deidentify.py")
    _, metrics = _one_round(cleaned, tmp_path / "after")

    assert "roc_auc" in metrics
