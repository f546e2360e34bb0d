"""Report: the write-ahead charges of a secagg round abandoned below t are shown as unreleased."""

from __future__ import annotations

from fedinfra.report.collect import _unreleased_rounds
from fedinfra.report.records import AuditRecord


def _record(seq: int, kind: str, rnd: int | None, **details: object) -> AuditRecord:
    return AuditRecord(
        index=seq,
        seq=seq,
        ts="t",
        run_id="run",
        round=rnd,
        type=kind,
        actor_kind="coordinator",
        actor_id="coordinator",
        actor_key_id=None,
        outcome="success",
        subject=None,
        details=dict(details),
    )


def test_an_abandoned_round_is_unreleased_until_a_resumed_run_completes_it():
    """Round 2 was abandoned (``run.failed``: ``abandoned_round``); a resume then completed it.

    Its charges stand either way (the sites reserved them write-ahead); only a round with
    no ``aggregation.completed`` after all is reported as released nothing.
    """
    abandoned = [
        _record(1, "aggregation.completed", 1),
        _record(2, "run.failed", None, reason="round 2 abandoned, nothing released", abandoned_round=2, released=False),
    ]
    resumed = [*abandoned, _record(3, "aggregation.completed", 2)]
    other_failure = [_record(1, "run.failed", None, reason="only 1 site passed admission")]

    assert _unreleased_rounds(abandoned) == {2}
    assert _unreleased_rounds(resumed) == set()
    assert _unreleased_rounds(other_failure) == set()
