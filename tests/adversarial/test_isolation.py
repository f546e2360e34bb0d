"""One site's hello or evaluation cannot abort a run; an abnormal end is audited and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message

from fedinfra.config import JobSpec
from tests.adversarial.harness import Malicious, adversarial_job, doc_of, honest, rejections, run_job, silent, with_doc


def _job(**changes: Any) -> JobSpec:
    return adversarial_job(**changes)


def _set(**changes: Any) -> Any:
    def attack(msg: Message, reply: Message) -> Message:
        return with_doc(reply, {**doc_of(reply), **changes})

    return attack


def test_a_hello_naming_evil_site_is_rejected_at_admission_and_the_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = Malicious(_set(site="Evil Site"), phases=("query",))

    out = run_job(tmp_path, _job(), [honest, honest, honest, bad], monkeypatch=monkeypatch)
    base = run_job(tmp_path / "base", _job(), [honest, honest, honest, silent], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    rejected = [e.details for e in out.entries if e.type == "site.rejected"]
    assert [d["check"] for d in rejected] == ["site_hello.site:string_pattern_mismatch"]
    assert "Evil" not in str([e.details for e in out.entries])
    assert out.state is not None
    assert base.state is not None
    for k, v in base.state.weights.items():
        assert np.array_equal(out.state.weights[k], v)


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"loss_sum": -1e308}, "eval_report.loss_sum:greater_than_equal"),
        ({"loss_sum": float("nan")}, "eval_report.loss_sum"),
        ({"correct": 10**10, "count": 1}, "eval_report.correct:less_than_equal"),
        ({"correct": 5, "count": 1}, "eval_report.root:correct_above_count"),
    ],
)
def test_an_out_of_bounds_evaluation_report_is_rejected_and_audited(
    changes: dict[str, Any], check: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = Malicious(_set(**changes), phases=("evaluate",))

    out = run_job(tmp_path, _job(rounds=1), [honest, honest, honest, bad], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    rejected = [d for site, d in rejections(out) if site == "edge-3"]
    assert len(rejected) == 1
    assert rejected[0]["check"].startswith(check), rejected
    assert rejected[0]["code"] == "evaluation"


class _DiesInRound:
    """A transport that fails while the coordinator pushes round ``rnd``'s messages."""

    def __init__(self, rnd: int) -> None:
        self.rnd = rnd

    def __call__(self, msg: Message, context: Context) -> Message | None:
        if msg.metadata.message_type == "train" and f'"round":{self.rnd}' in str(
            msg.content.config_records["config"]["doc"]
        ).replace(" ", ""):
            raise ConnectionResetError("link lost")
        return honest(msg, context)


def test_an_abnormal_end_writes_a_signed_run_failed_and_resume_continues_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(rounds=2)
    first = run_job(tmp_path, job, [honest, honest, honest, _DiesInRound(2)], monkeypatch=monkeypatch)

    assert isinstance(first.error, ConnectionResetError)
    types = [e.type for e in first.entries]
    assert types[-2:] == ["run.failed", "checkpoint.published"]
    failed = first.entries[-2]
    assert failed.details["error"] == "ConnectionResetError"
    assert "link lost" not in str(failed.details)

    again = run_job(tmp_path, job, [honest, honest, honest, honest], resume=True, monkeypatch=monkeypatch)

    assert again.error is None, repr(again.error)
    assert again.state is not None
    assert again.state.round == 2
    rounds = [e.round for e in again.entries if e.type == "aggregation.completed"]
    assert rounds == [1, 2]
    assert [e.type for e in again.entries][-2:] == ["run.completed", "checkpoint.published"]


def _lied_to(msg: Message, context: Context) -> Message | None:
    """A site whose TRAIN messages carry another model than the instruction names (a split view)."""
    from flwr.app import Array, ArrayRecord, RecordDict

    if msg.metadata.message_type == "train":
        arrays = {k: v.numpy() + np.float32(0.5) for k, v in msg.content.array_records["arrays"].items()}
        content = dict(msg.content)
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        forged = Message(RecordDict(content), dst_node_id=msg.metadata.dst_node_id, message_type="train")
        forged.metadata.__dict__.update(
            {k: msg.metadata.__dict__[k] for k in ("_message_id", "_src_node_id", "_run_id")}
        )
        msg = forged
    return honest(msg, context)


def test_a_site_sent_another_model_than_the_instruction_names_refuses_to_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_job(tmp_path, _job(), [honest, honest, honest, _lied_to], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    refusals = [(site, d["code"]) for site, d in rejections(out)]
    assert refusals == [("edge-3", "receipt")] * 2
    started = [e.details for e in out.entries if e.type == "round.started"]
    completed = [e.subject.sha256 for e in out.entries if e.type == "aggregation.completed"]
    assert started[1]["model_sha256"] == completed[0]
