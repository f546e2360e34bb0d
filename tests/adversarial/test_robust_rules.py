"""A site sending its update scaled by -100 against the real coordinator, per aggregation rule.

Plain FedAvg follows the scaled update; the robust rules keep the honest model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedinfra.config import JobSpec
from tests.adversarial.harness import Malicious, _request_of, honest, run_job


def _scaled(msg: Message, reply: Message) -> Message:
    arrays = {k: -100 * v.numpy() for k, v in reply.content.array_records["arrays"].items()}
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}),
            "config": ConfigRecord(dict(reply.content.config_records["config"])),
        }
    )
    return Message(content, reply_to=_request_of(reply))


def _job(rule: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "robust",
            "scenario": "edge",
            "purpose": "on-device-model-improvement",
            "rounds": 3,
            "sites": {"count": 4, "min_sites": 2},
            "training": {"local_epochs": 1, "server_momentum": 0.5},
            "aggregation": rule,
        }
    )


@pytest.mark.parametrize(
    "rule",
    [{"rule": "median"}, {"rule": "trimmed-mean", "trim_fraction": 0.25}, {"rule": "norm-bounded", "clip": 0.5}],
)
def test_a_scaled_update_cannot_take_over_a_robust_rule(
    rule: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_job(tmp_path, _job(rule), [honest, honest, honest, Malicious(_scaled)], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    assert out.state is not None
    assert out.state.results[-1].test_accuracy >= 0.8
    completed = [e.details for e in out.entries if e.type == "aggregation.completed"]
    assert [d["rule"] for d in completed] == [rule["rule"]] * 3


def test_plain_fedavg_follows_the_scaled_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = run_job(
        tmp_path, _job({"rule": "fedavg"}), [honest, honest, honest, Malicious(_scaled)], monkeypatch=monkeypatch
    )

    assert out.error is None, repr(out.error)
    assert out.state is not None
    assert out.state.results[-1].test_accuracy < 0.5
