"""The wire fields that fold HE federated evaluation into the next train wave."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedinfra.config.wire import MAX_EVAL_COUNT, EvalCounts, TrainInstruction, TrainReport


def _instruction(**extra: object) -> TrainInstruction:
    return TrainInstruction.model_validate({"run_id": "r", "round": 3, "job": {}, **extra})


def test_train_instruction_evaluates_the_model_it_trains_on() -> None:
    assert _instruction(evaluate_round=2).evaluate_round == 2
    assert _instruction().evaluate_round is None


@pytest.mark.parametrize(
    ("extra"), [{"evaluate_round": 3}, {"evaluate_round": 1}, {"phase": "close", "evaluate_round": 2}]
)
def test_train_instruction_refuses_any_other_evaluate_round(extra: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="evaluate_round"):
        _instruction(**extra)


@pytest.mark.parametrize(
    "counts",
    [
        {"round": 1, "loss_sum": -1.0, "correct": 1, "count": 2},
        {"round": 1, "loss_sum": float("nan"), "correct": 1, "count": 2},
        {"round": 1, "loss_sum": 1.0, "correct": -1, "count": 2},
        {"round": 1, "loss_sum": 1.0, "correct": 3, "count": 2},
        {"round": 1, "loss_sum": 1.0, "correct": 0, "count": MAX_EVAL_COUNT + 1},
        {"round": 0, "loss_sum": 1.0, "correct": 0, "count": 1},
    ],
)
def test_evaluation_counts_out_of_bounds_are_refused(counts: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TrainReport.model_validate({"site": "a", "round": 2, "num_examples": 0, "evaluation": counts})


def test_train_report_carries_valid_counts() -> None:
    report = TrainReport.model_validate(
        {
            "site": "a",
            "round": 2,
            "num_examples": 0,
            "evaluation": {"round": 1, "loss_sum": 2.5, "correct": 7, "count": 9},
        }
    )
    assert report.evaluation == EvalCounts(round=1, loss_sum=2.5, correct=7, count=9)
