"""A round asked again from the same model is answered with the same release, at no new cost.

This is what lets a coordinator killed mid-run resume without overspending the sites'
budgets: the resumed run re-asks the round it lost, and the sites re-send what they had
already released instead of training (and spending) a second time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedinfra.config import JobSpec
from fedinfra.config.wire import TrainInstruction
from fedinfra.models import build_model, get_weights
from fedinfra.privacy import PrivacyLedger
from fedinfra.site import replay
from fedinfra.site.context import site_context
from fedinfra.site.round import run_round


def _job() -> JobSpec:
    return JobSpec.model_validate(
        {
            "scenario": "hospital",
            "rounds": 3,
            "data": {"dataset": "breast_cancer"},
            "sites": {"count": 2, "min_sites": 2},
            "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5, "accountant": "rdp"},
        }
    )


def _instruction(job: JobSpec, rnd: int) -> TrainInstruction:
    return TrainInstruction(run_id="run-replay", round=rnd, phase="train", job=job.model_dump(mode="json"), sampled=2)


@pytest.fixture
def ctx(tmp_path: Path):  # type: ignore[no-untyped-def]
    job = _job()
    node_config: dict[str, object] = {"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path / "home")}
    return site_context(node_config, job)


def _global(ctx) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    model = build_model(ctx.job.model, num_features=int(ctx.data.x.shape[1]), num_classes=2, seed=7)
    return get_weights(model)


def _spent(ctx) -> float:  # type: ignore[no-untyped-def]
    ledger = PrivacyLedger(ctx.home.ledger)
    try:
        return ledger.spent(dataset_fingerprint=ctx.fingerprint)
    finally:
        ledger.close()


def test_same_round_same_model_replays_the_release_without_spending(ctx) -> None:  # type: ignore[no-untyped-def]
    weights = _global(ctx)
    first = run_round(ctx, _instruction(ctx.job, 1), weights, tls=True, sampled=2)
    spent = _spent(ctx)
    assert spent > 0

    again = run_round(ctx, _instruction(ctx.job, 1), weights, tls=True, sampled=2)

    assert again.report.details["replayed"] is True
    assert first.update is not None
    assert again.update is not None
    for name in first.update:  # bit-identical: the same noisy release, not a fresh one
        assert np.array_equal(first.update[name], again.update[name])
    assert again.report.details["epsilon_total"] == first.report.details["epsilon_total"]
    assert _spent(ctx) == spent


def test_same_round_from_another_model_is_a_new_release_and_is_accounted(ctx) -> None:  # type: ignore[no-untyped-def]
    weights = _global(ctx)
    first = run_round(ctx, _instruction(ctx.job, 1), weights, tls=True, sampled=2)
    other = {k: v + np.float32(0.01) for k, v in weights.items()}

    again = run_round(ctx, _instruction(ctx.job, 1), other, tls=True, sampled=2)

    assert "replayed" not in again.report.details
    assert float(again.report.details["epsilon_total"]) > float(first.report.details["epsilon_total"])  # type: ignore[arg-type]
    assert _spent(ctx) == pytest.approx(float(again.report.details["epsilon_total"]))  # type: ignore[arg-type]


def test_a_torn_reply_file_is_ignored_and_the_round_is_trained_again(ctx) -> None:  # type: ignore[no-untyped-def]
    weights = _global(ctx)
    run_round(ctx, _instruction(ctx.job, 1), weights, tls=True, sampled=2)
    (path,) = (ctx.home.run_dir("run-replay") / "replies").glob("round-*.npz")
    path.write_bytes(path.read_bytes()[:100])

    again = run_round(ctx, _instruction(ctx.job, 1), weights, tls=True, sampled=2)

    assert "replayed" not in again.report.details
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_model_digest_names_dtype_and_shape() -> None:
    a = {"w": np.zeros((2, 3), dtype=np.float32)}
    assert replay.model_digest(a) == replay.model_digest({"w": np.zeros((2, 3), dtype=np.float32)})
    assert replay.model_digest(a) != replay.model_digest({"w": np.zeros((3, 2), dtype=np.float32)})
    assert replay.model_digest(a) != replay.model_digest({"w": np.zeros((2, 3), dtype=np.float64)})
    assert replay.model_digest(a) != replay.model_digest({"v": np.zeros((2, 3), dtype=np.float32)})
