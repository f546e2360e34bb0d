"""The coordinator's side of the audit trail: one method per kind of event.

Entries carry ids, hashes, counts and codes only (GDPR Art. 5(1)(c)); :func:`codes` maps
any JSON-like payload (policy findings, manifests' non-personal fields) onto what the log
schema accepts: lower-case keys, bounded strings, lists instead of name-keyed maps.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedinfra.errors import PolicyViolation

if TYPE_CHECKING:
    from fedinfra.audit import AuditLog, Checkpoint, Entry, EventType, Outcome

MAX_TEXT = 240
_KEY = re.compile(r"[^a-z0-9_.]")


def _key(key: str) -> str:
    k = _KEY.sub("_", key.lower())
    return k if k[:1].isalpha() else f"k_{k}"


def codes(value: Any) -> Any:
    """Make ``value`` acceptable as audit ``details`` (see module docstring)."""
    if isinstance(value, Mapping):
        return {_key(str(k)): codes(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [codes(v) for v in value]
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int):
        return value
    return codes(str(value))


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class AuditTrail:
    """Writes one run's events into an :class:`~fedinfra.audit.AuditLog`."""

    def __init__(self, log: AuditLog, *, run_id: str, key_id: str) -> None:
        from fedinfra.audit import Actor

        self.log = log
        self.run_id = run_id
        self.coordinator = Actor(kind="coordinator", id="coordinator", key_id=key_id)

    def site_actor(self, site: str) -> Any:
        """The actor of a site's action."""
        from fedinfra.audit import Actor

        return Actor(kind="site", id=site)

    def event(
        self,
        type: EventType,
        *,
        round: int | None = None,
        outcome: Outcome = "success",
        site: str | None = None,
        subject: tuple[str, bytes] | tuple[str, str, int] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Append one event; ``subject`` is (artifact, bytes) or (artifact, sha256, size)."""
        from fedinfra.audit import Subject

        subj = None
        if subject is not None:
            if len(subject) == 2:
                name, data = subject
                assert isinstance(data, bytes)
                subj = Subject(artifact=name, sha256=sha256_hex(data), size=len(data))
            else:
                name, digest, size = subject
                subj = Subject(artifact=name, sha256=str(digest), size=int(size))
        return self.log.append(
            run_id=self.run_id,
            round=round,
            type=type,
            actor=self.site_actor(site) if site else self.coordinator,
            outcome=outcome,
            subject=subj,
            details=codes(dict(details or {})),
        )

    def checkpoint(self, round: int | None, *, model_sha256: str | None = None) -> Checkpoint:
        """Publish a signed checkpoint covering everything so far (announcing ``model_sha256`` if given)."""
        return self.log.publish_checkpoint(run_id=self.run_id, round=round, model_sha256=model_sha256)

    def receipt(self, seq: int, *, since: int | None) -> str:
        """A receipt (JSON) for entry ``seq`` against the newest checkpoint."""
        return self.log.receipt(seq, since=since or None).to_json()


class RoundAbandoned(PolicyViolation):
    """A secure-aggregation round that could not be unmasked: nothing of it was released.

    Fewer than ``t`` (or ``min_contributors``) sites survived to unmasking, so no sum
    was formed (Bonawitz et al., CCS 2017, figure 4: the server aborts below t). The sites
    that trained had charged their ledgers write-ahead, before their masked input left
    (:func:`fedinfra.site.user_dp.reserve_spend`); the charge stands and the audit entry
    says the round released nothing.
    """

    def __init__(self, rnd: int, reason: str) -> None:
        super().__init__(f"round {rnd} abandoned, nothing released: {reason}")
        self.abandoned_round = rnd


#: The ``run.failed`` reason of a run the operator stopped (``fedinfra runs stop``).
STOPPED_REASON = "stopped by the operator (fedinfra runs stop)"


def failure_reason(exc: BaseException, *, stopped: bool = False) -> str:
    """Why a run ended abnormally, fit for the audit log.

    fedinfra's own errors carry a message written for the operator; anything else may
    carry an input value in its message, so only its class is named. ``stopped``: the
    operator asked for the stop, whatever exception it surfaced as.
    """
    from fedinfra.errors import FedinfraError

    if stopped:
        return STOPPED_REASON
    if isinstance(exc, FedinfraError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return "interrupted by a signal or shutdown; resume with 'fedinfra run --resume RUN_ID'"
    return f"unexpected {type(exc).__name__}; resume with 'fedinfra run --resume RUN_ID'"


def failed(trail: AuditTrail, exc: BaseException, *, stopped: bool = False) -> None:
    """Write a signed ``run.failed`` entry (and checkpoint) for ``exc``; never raises.

    The entry is covered by a signed checkpoint so that an abnormal end is part of the
    tamper-evident record (RFC 9162 section 2.1), and a resumed run starts after it.
    A secure-aggregation round abandoned below its threshold (:class:`RoundAbandoned`)
    is named with ``abandoned_round`` and ``released = false``: the sites' write-ahead
    charges for that round are then shown as reserved, not released (report ``budgets``).
    """
    details: dict[str, Any] = {"reason": failure_reason(exc, stopped=stopped), "error": type(exc).__name__}
    abandoned = getattr(exc, "abandoned_round", None)
    if isinstance(abandoned, int):
        details.update(abandoned_round=abandoned, released=False)
    try:
        trail.event("run.failed", outcome="failure", details=details)
        trail.checkpoint(None)
    except Exception:  # noqa: S110 - the original exception is what the caller re-raises
        pass
