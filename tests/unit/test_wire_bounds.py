"""Every value a site sends is bounded by the wire schemas (issue 16)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from fedinfra.config.wire import F32_MAX, MAX_EXAMPLES, EvalReport, SiteHello, TrainReport

HELLO = {"site": "hospital-0", "num_features": 30, "dataset_fingerprint": "sha256:" + "0" * 64}
REPORT = {"site": "hospital-0", "round": 1, "num_examples": 10, "train_loss": 0.5}


def _report(**changes: object) -> TrainReport:
    return TrainReport.model_validate_json(json.dumps({**REPORT, **changes}))


@pytest.mark.parametrize(
    "details",
    [
        {"epsilon_total": "x"},
        {"epsilon_total": -1.0},
        {"epsilon_total": 1e300},
        {"steps": 2**60},
        {"update_norm": 1e39},
        {"Bad Key": 1},
        {"nested": {"a": 1}},
        {"caveats": ["x" * 2000]},
        {"list": list(range(100))},
        {f"k{i}": i for i in range(65)},
    ],
)
def test_report_details_out_of_bounds_are_refused(details: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _report(details=details)


def test_report_details_within_bounds_are_kept_and_typed() -> None:
    details = {"epsilon_total": 2, "mechanism": "dp-sgd", "caveats": ["few sites"], "steps": 12}
    assert _report(details=details).details == {**details, "epsilon_total": 2.0}


@pytest.mark.parametrize(
    "changes",
    [
        {"num_examples": MAX_EXAMPLES + 1},
        {"num_examples": 10**15},
        {"train_loss": float("nan")},
        {"train_loss": -1.0},
        {"train_loss": F32_MAX * 2},
        {"site": "Evil Site"},
        {"site": "../x"},
        {"reason": "x" * 5000},
    ],
)
def test_train_report_fields_out_of_bounds_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _report(**changes)


def test_a_400_digit_example_count_is_refused_not_overflowed() -> None:
    raw = json.dumps(REPORT).replace('"num_examples": 10', '"num_examples": ' + "9" * 400)
    with pytest.raises(ValidationError):
        TrainReport.model_validate_json(raw)


@pytest.mark.parametrize(
    "changes",
    [
        {"loss_sum": -1e308},
        {"loss_sum": float("nan")},
        {"correct": 10**10, "count": 1},
        {"correct": 2, "count": 1},
        {"count": 10**9},
    ],
)
def test_eval_report_is_bounded_like_eval_counts(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        EvalReport.model_validate({"site": "a", "round": 1, **changes})


@pytest.mark.parametrize(
    "changes", [{"site": "Evil Site"}, {"num_examples": 10**15}, {"epsilon_spent_lifetime": float("inf")}]
)
def test_site_hello_is_bounded(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SiteHello.model_validate({**HELLO, **changes})
