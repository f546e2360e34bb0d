"""The coordinator's round loop logs through ``logging`` (issue 18): what happened, never a value.

The real coordinator runs over in-process ClientApps (the harness); one site names itself
"Evil Site" at admission, one stays silent in training. The log must say which sites were
admitted and rejected (with a check code), when each round started and finished and how
many updates were aggregated, at the level ``--log-level`` asks for and as JSON lines with
``--log-format json`` - and carry no model or metric value and no text a site wrote.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from fedinfra.config import JobSpec
from tests.adversarial.harness import Malicious, doc_of, honest, run_job, with_doc

LOGGER = "fedinfra.coordinator"


def _evil_hello(msg: Message, reply: Message) -> Message:
    return with_doc(reply, {**doc_of(reply), "site": "Evil Site"})


def _silent_in_training(msg: Message, reply: Message) -> Message | None:
    return None


def _sites() -> list[Any]:
    return [honest, honest, Malicious(_silent_in_training), Malicious(_evil_hello, phases=("query",))]


@pytest.fixture
def fedinfra_logger() -> Iterator[logging.Logger]:
    """The ``fedinfra`` logger, restored afterwards (``configure_logging`` changes it)."""
    root = logging.getLogger("fedinfra")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        yield root
    finally:
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


def _text(records: list[logging.LogRecord]) -> str:
    skip = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)))
    return "\n".join(
        f"{r.getMessage()} {json.dumps({k: v for k, v in vars(r).items() if k not in skip}, default=str)}"
        for r in records
    )


def test_rounds_admissions_and_rejections_are_logged_without_values(
    plain_job: JobSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    fedinfra_logger: logging.Logger,
) -> None:
    from fedinfra.cli._common import configure_logging

    configure_logging("info", "text")  # what '--log-level info' does
    logger = logging.getLogger(LOGGER)
    logger.addHandler(caplog.handler)  # the fedinfra logger does not propagate to pytest's root handler
    try:
        out = run_job(tmp_path, plain_job, _sites(), monkeypatch=monkeypatch)
    finally:
        logger.removeHandler(caplog.handler)

    assert out.error is None, repr(out.error)
    assert out.state is not None
    records = [r for r in caplog.records if r.name == LOGGER]
    events = [(getattr(r, "event", None), getattr(r, "round", None), getattr(r, "site", None)) for r in records]
    assert [e for e in events if e[0] == "site.admitted"] == [
        ("site.admitted", None, s) for s in ("edge-0", "edge-1", "edge-2")
    ]
    (rejected,) = [r for r in records if getattr(r, "event", None) == "site.rejected"]
    assert rejected.levelno == logging.WARNING
    assert rejected.check.startswith("site_hello.site")  # type: ignore[attr-defined]
    for rnd in (1, 2):
        assert ("round.started", rnd, None) in events
        (done,) = [r for r in records if getattr(r, "event", None) == "aggregation.completed" and r.round == rnd]  # type: ignore[attr-defined]
        assert done.updates == 2  # type: ignore[attr-defined]
        assert done.refused == 0  # type: ignore[attr-defined]
        assert ("update.rejected", rnd, "edge-2") in events
    assert events[-1][0] == "run.completed"
    # No values: not the site's own text, not a figure of the model or its evaluation.
    text = _text(records)
    assert "Evil" not in text
    results = out.state.results
    for value in [r.test_accuracy for r in results] + [r.test_loss for r in results] + [r.train_loss for r in results]:
        assert f"{value:.4f}" not in text
        assert repr(value) not in text
    for array in out.state.weights.values():
        assert f"{float(array.flat[0]):.4f}" not in text


def test_log_level_and_json_format_are_respected(
    plain_job: JobSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fedinfra_logger: logging.Logger,
) -> None:
    from fedinfra.cli._common import configure_logging

    configure_logging("warning", "json")  # '--log-level warning --log-format json' (a service)
    out = run_job(tmp_path, plain_job, _sites(), monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    lines = [json.loads(ln) for ln in capsys.readouterr().err.splitlines() if ln.startswith("{")]
    mine = [d for d in lines if d["logger"] == LOGGER]
    assert {d["event"] for d in mine} == {"site.rejected", "update.rejected"}  # no info records at 'warning'
    assert all(d["level"] == "warning" and d["run_id"] == "run-1" and d["ts"] for d in mine)
    assert sorted((d["round"], d["site"], d["code"]) for d in mine if d["event"] == "update.rejected") == [
        (1, "edge-2", "timeout"), (2, "edge-2", "timeout")
    ]
