"""Issue 16 deliverable 4: sites compare the model they were sent with what the cosigned log records.

The real coordinator logs one model digest per checkpoint (in the checkpoint's own
``checkpoint.published`` announcement) and sends every site the proof of it with the
checkpoint to cosign. Here the coordinator shows one site another model than the one it
logs: it swaps the model in that site's train message in round ``lie`` and names the swapped
model's digest, so the site's own comparison of bytes and named digest passes. Only the
coordinator's choice of what to send that one site is played (and, so its own intake takes
the reply, the digest in the reply); the sites, the log, the proofs and the stores are real.
That site refuses to cosign and to train, writes the mismatch to its ``alerts.log``, and
the run is not final (the job's quorum asks every site); the other sites cosign.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message

from fedinfra.aggregation.digest import model_digest
from fedinfra.config import JobSpec
from fedinfra.config.wire import ARRAYS, CONFIG, DOC
from fedinfra.site.receipts import ALERTS_FILE
from fedinfra.site.weights import arrays_to_weights, weights_to_arrays
from tests.adversarial.harness import Outcome, adversarial_job, honest, rejections, run_job

pytestmark = pytest.mark.timeout(600)

SITES = ("edge-0", "edge-1", "edge-2", "edge-3")


class ShownAnotherModel:
    """Site ``edge-3``'s real ClientApp; in round ``lie`` the coordinator sends it another model."""

    def __init__(self, lie: int) -> None:
        self.lie = lie
        self.lied = False

    def __call__(self, msg: Message, context: Context) -> Message | None:
        config = msg.content.config_records.get(CONFIG)
        if msg.metadata.message_type != "train" or config is None:
            return honest(msg, context)
        doc = json.loads(str(config[DOC]))
        if doc.get("round") != self.lie or doc.get("phase") != "train":
            return honest(msg, context)
        logged = doc["model_digest"]
        sent = arrays_to_weights(msg.content.array_records[ARRAYS])
        other = {k: (v + np.float32(0.01)).astype(np.float32) for k, v in sent.items()}
        msg.content.array_records[ARRAYS] = weights_to_arrays(other)
        doc["model_digest"] = model_digest(other)
        config[DOC] = json.dumps(doc)
        self.lied = True
        reply = honest(msg, context)
        if reply is not None and not reply.has_error():  # the lying coordinator's intake plays along
            answer = json.loads(str(reply.content.config_records[CONFIG][DOC]))
            if answer.get("model_digest"):
                answer["model_digest"] = logged
                reply.content.config_records[CONFIG][DOC] = json.dumps(answer)
        return reply


def _job() -> JobSpec:
    return adversarial_job(name="model-views", sites={"count": 4, "min_sites": 2, "cosign_quorum": 4})


def _alerts(out: Outcome, site: str) -> list[str]:
    found = (out.run_dir / "site-homes" / site / "receipts").rglob(ALERTS_FILE)
    return [line for path in found for line in path.read_text().splitlines()]


def _metrics(out: Outcome) -> dict[str, Any]:
    return dict(json.loads((out.run_dir / "metrics.json").read_text()))


@pytest.mark.parametrize("lie", [1, 2], ids=["initial-model", "last-round"])
def test_a_site_sent_another_model_than_the_logged_one_refuses_to_cosign(
    tmp_path: Path, monkeypatch: Any, lie: int
) -> None:
    liar = ShownAnotherModel(lie)
    out = run_job(tmp_path, _job(), [honest, honest, honest, liar], monkeypatch=monkeypatch)
    assert out.error is None, out.error  # the other sites carry the run
    assert liar.lied
    (alert,) = _alerts(out, "edge-3")
    assert "model view: the log records model" in alert
    assert "refusing to cosign" in alert
    assert ("edge-3", {"site": "edge-3", "reason": "site.refused:receipt", "code": "receipt",
                       "check": "site.refused:receipt"}) in rejections(out)
    trained = {(e.actor.id, e.round) for e in out.entries if e.type == "update.received"}
    assert not any(site == "edge-3" and rnd >= lie for site, rnd in trained)  # caught once, never again
    assert {("edge-0", lie), ("edge-1", lie), ("edge-2", lie)} <= trained
    for site in SITES[:3]:
        assert _alerts(out, site) == []
    cosigned = _metrics(out)["cosigned_checkpoint"]
    assert "edge-3" not in cosigned["cosigners"]
    assert sorted(cosigned["cosigners"]) == list(SITES[:3])
    assert _metrics(out)["final"] is False  # 3 of the 4 the job asks for


def test_an_honest_run_is_cosigned_by_every_site_with_every_checkpoint_announcing_its_model(
    tmp_path: Path, monkeypatch: Any
) -> None:
    out = run_job(tmp_path, _job(), [honest] * 4, monkeypatch=monkeypatch)
    assert out.error is None, out.error
    assert _metrics(out)["final"] is True
    assert sorted(_metrics(out)["cosigned_checkpoint"]["cosigners"]) == list(SITES)
    for site in SITES:
        assert _alerts(out, site) == []
    # Every round's train instructions named the model the checkpoint before them announced.
    announced = [e.details.get("model_sha256") for e in out.entries if e.type == "checkpoint.published"]
    started = [e.details["model_sha256"] for e in out.entries if e.type == "round.started"]
    assert started
    assert all(d in announced for d in started)
