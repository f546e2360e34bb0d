"""The audit entry schema: one event, serialised as RFC 8785 canonical JSON.

Entries carry identifiers, hashes and counts only, never personal data (GDPR Art. 5(1)(c)
data minimisation; HIPAA §164.312(b) asks for audit controls, not for copies of PHI).
The schema enforces what it can: identifiers match a strict pattern (no spaces, no '@', so
no names or e-mail addresses), ``details`` keys are snake-case codes and its strings are
short. The fields answer PCI DSS 10.2.2's "user, event type, date and time, success or
failure, origination, identity of the affected data or resource".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_serializer, field_validator

from fedinfra.audit.canonical import MAX_SAFE_INTEGER, canonical_with_details

EventType = Literal[
    "run.created",
    "policy.evaluated",
    "site.admitted",
    "site.rejected",
    "round.started",
    "update.received",
    "update.rejected",
    "aggregation.completed",
    "checkpoint.published",
    "budget.spent",
    "run.completed",
    "run.failed",
    "log.read",
    "report.generated",
    "receipt.rejected",
    "model.saved",
    "evaluation.completed",
]
"""Every event the log records (issue 3 lists the first fourteen)."""

EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))

Outcome = Literal["success", "failure", "denied"]
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))
"""Result of the audited action (PCI DSS 10.2.2: success or failure indication)."""

ActorKind = Literal["coordinator", "site", "operator", "system"]
ACTOR_KINDS: frozenset[str] = frozenset(get_args(ActorKind))
"""Who acted: the coordinator process, a site, an operator's command, or the log itself."""

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]
"""An opaque id: letters, digits and ``._:/-``; no spaces or '@', so no names or e-mails."""

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

MAX_DETAIL_STRING = 256
"""Longest string allowed in ``details``: room for codes and ids, not for free text."""

_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_.]{0,63}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Actor(_Frozen):
    """Who performed the action: kind, id and, when it signed something, its key id."""

    kind: ActorKind
    id: Identifier
    key_id: Identifier | None = None


class Subject(_Frozen):
    """The artifact acted on, by name, SHA-256 and size in bytes."""

    artifact: Identifier
    sha256: Sha256Hex
    size: int = Field(ge=0, le=MAX_SAFE_INTEGER)


def _check_detail(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not _DETAIL_KEY.fullmatch(key):
                raise ValueError(f"details key {where}{key!r} must be a lower-case code ([a-z][a-z0-9_.]*)")
            _check_detail(item, f"{where}{key}.")
    elif isinstance(value, list):
        for item in value:
            _check_detail(item, where)
    elif isinstance(value, str):
        if len(value) > MAX_DETAIL_STRING:
            raise ValueError(f"details string at {where!r} is longer than {MAX_DETAIL_STRING} characters")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"details integer at {where!r} exceeds 2**53 - 1 (RFC 8785)")
    elif isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError(f"details number at {where!r} is not finite")


class Event(_Frozen):
    """What happened; the log adds the sequence number and time to make an :class:`Entry`."""

    run_id: Identifier | None = None
    round: int | None = Field(default=None, ge=0, le=MAX_SAFE_INTEGER)
    type: EventType
    actor: Actor
    outcome: Outcome
    subject: Subject | None = None
    details: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("details")
    @classmethod
    def _details_hold_codes_only(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        _check_detail(value, "")
        return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (UTC)")
    return value.astimezone(UTC)


def format_ts(value: datetime) -> str:
    """Render a timestamp as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (fixed width, so it sorts)."""
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Entry(Event):
    """One log entry: an event with its position ``seq`` and UTC time ``ts``."""

    seq: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    ts: datetime

    @field_validator("ts")
    @classmethod
    def _ts_is_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @field_serializer("ts")
    def _ts_text(self, value: datetime) -> str:
        return format_ts(value)

    def to_json_dict(self, *, ts_text: str | None = None) -> dict[str, Any]:
        """Return the entry as the JSON object its leaf hashes (every field, nulls included).

        ``ts_text`` is ``format_ts(self.ts)`` when the caller already has it (batch appends).
        """
        return {
            "seq": self.seq,
            "ts": ts_text if ts_text is not None else format_ts(self.ts),
            "run_id": self.run_id,
            "round": self.round,
            "type": self.type,
            "actor": {"kind": self.actor.kind, "id": self.actor.id, "key_id": self.actor.key_id},
            "outcome": self.outcome,
            "subject": None
            if self.subject is None
            else {"artifact": self.subject.artifact, "sha256": self.subject.sha256, "size": self.subject.size},
            "details": self.details,
        }

    def canonical(self, *, ts_text: str | None = None) -> bytes:
        """Return the RFC 8785 bytes of the entry: the data of its Merkle leaf.

        Every field but ``details`` is validated to ASCII keys, strings and safe
        integers, so only ``details`` decides whether the fast encoder applies.
        """
        return canonical_with_details(self.to_json_dict(ts_text=ts_text))

    @classmethod
    def from_event(cls, event: Event, *, seq: int, ts: datetime) -> Entry:
        """Place the already validated ``event`` at position ``seq`` and UTC time ``ts``.

        Nothing is validated again: this is :meth:`pydantic.BaseModel.model_construct`
        without its per-field bookkeeping, which dominated batched appends.
        """
        entry = cls.__new__(cls)
        values = dict(event.__dict__)
        values["seq"] = seq
        values["ts"] = ts
        object.__setattr__(entry, "__dict__", values)
        object.__setattr__(entry, "__pydantic_fields_set__", set(_ENTRY_FIELDS))
        object.__setattr__(entry, "__pydantic_extra__", None)
        object.__setattr__(entry, "__pydantic_private__", None)
        return entry


_ENTRY_FIELDS = frozenset(Entry.model_fields)


_ENTRY_KEYS = frozenset({"seq", "ts", "run_id", "round", "type", "actor", "outcome", "subject", "details"})
_ACTOR_KEYS = frozenset({"kind", "id", "key_id"})
_SUBJECT_KEYS = frozenset({"artifact", "sha256", "size"})


def _opt_str(value: Any) -> bool:
    return value is None or type(value) is str


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_SAFE_INTEGER


def has_entry_shape(obj: Any) -> bool:
    """Return whether a parsed JSON value has the fields and exact JSON types of an entry.

    The verifier's fast check (no pydantic): with this shape every member but ``details``
    is ASCII-keyed strings and safe integers, so :func:`canonical_with_details` applies.
    """
    if type(obj) is not dict or obj.keys() != _ENTRY_KEYS:
        return False
    actor, subject = obj["actor"], obj["subject"]
    return (
        _count(obj["seq"])
        and (obj["round"] is None or _count(obj["round"]))
        and type(obj["ts"]) is str
        and _opt_str(obj["run_id"])
        and obj["type"] in EVENT_TYPES
        and obj["outcome"] in OUTCOMES
        and type(actor) is dict
        and actor.keys() == _ACTOR_KEYS
        and actor["kind"] in ACTOR_KINDS
        and type(actor["id"]) is str
        and _opt_str(actor["key_id"])
        and (
            subject is None
            or (
                type(subject) is dict
                and subject.keys() == _SUBJECT_KEYS
                and type(subject["artifact"]) is str
                and type(subject["sha256"]) is str
                and _count(subject["size"])
            )
        )
        and type(obj["details"]) is dict
    )
