"""The entry schema: canonical bytes, no personal data, UTC timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import rfc8785
from pydantic import ValidationError

from fedinfra.audit import EVENT_TYPES, Actor, Entry, Event, Subject

ISSUE_TYPES = {
    "run.created", "policy.evaluated", "site.admitted", "site.rejected", "round.started", "update.received",
    "update.rejected", "aggregation.completed", "checkpoint.published", "budget.spent", "run.completed",
    "run.failed", "log.read", "report.generated",
}


def _entry(**overrides: object) -> Entry:
    fields: dict[str, object] = {
        "seq": 3,
        "ts": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "run_id": "run-1",
        "round": 2,
        "type": "update.received",
        "actor": Actor(kind="site", id="hospital-a", key_id="c74f20a3"),
        "outcome": "success",
        "subject": Subject(artifact="update", sha256="0" * 64, size=10),
        "details": {"num_examples": 128, "epsilon": 0.5, "codes": ["a", "b"]},
    }
    fields.update(overrides)
    return Entry.model_validate(fields)


def test_every_event_type_of_the_issue_is_known() -> None:
    assert ISSUE_TYPES <= EVENT_TYPES


def test_the_leaf_data_is_the_rfc8785_form_of_every_field() -> None:
    entry = _entry()

    assert entry.canonical() == rfc8785.dumps(entry.to_json_dict())
    assert b'"ts":"2026-01-02T03:04:05.000006Z"' in entry.canonical()
    assert b'"epsilon":0.5' in entry.canonical()


def test_a_timestamp_in_another_zone_is_stored_in_utc() -> None:
    entry = _entry(ts=datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))))

    assert entry.to_json_dict()["ts"] == "2026-01-02T03:04:05.000000Z"


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        _entry(ts=datetime(2026, 1, 2, 3, 4, 5))


@pytest.mark.parametrize("actor_id", ["jane.doe@hospital.org", "Jane Doe", "", "x" * 129])
def test_an_actor_id_that_could_hold_a_name_or_email_is_refused(actor_id: str) -> None:
    with pytest.raises(ValidationError):
        Actor(kind="site", id=actor_id)


@pytest.mark.parametrize(
    "details",
    [{"Patient Name": "x"}, {"note": "x" * 257}, {"n": 2**53}, {"x": float("nan")}, {"nested": {"Bad-Key": 1}}],
    ids=["free-text-key", "long-string", "huge-int", "nan", "nested-key"],
)
def test_details_hold_codes_ids_and_counts_only(details: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Event(type="run.created", actor=Actor(kind="coordinator", id="c"), outcome="success", details=details)  # type: ignore[arg-type]


def test_an_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        Event(type="model.stolen", actor=Actor(kind="coordinator", id="c"), outcome="success")  # type: ignore[arg-type]


def test_a_subject_hash_must_be_lower_case_sha256_hex() -> None:
    with pytest.raises(ValidationError):
        Subject(artifact="model", sha256="ABC", size=1)


def test_an_entry_round_trips_through_json() -> None:
    entry = _entry()

    assert Entry.model_validate_json(entry.model_dump_json()) == entry
