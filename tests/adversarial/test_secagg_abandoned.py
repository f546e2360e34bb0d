"""Issue 13: a secagg round with fewer survivors than t releases nothing, spends nothing more.

Two of four sites train (and charge their ledgers write-ahead) but their masked inputs
never arrive, as if they were killed after replying was decided: 2 survivors < t = 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, Message

from fedinfra.config import JobSpec
from fedinfra.config.wire import SECAGG
from fedinfra.privacy import PrivacyLedger
from fedinfra.report import generate_report
from fedinfra.runtime.simulation import AUDIT_STORE
from tests.adversarial.harness import Handler, Malicious, adversarial_job, honest, run_job


def _job() -> JobSpec:
    return adversarial_job(
        name="abandoned",
        privacy={"mechanism": "user-dp", "epsilon": 8.0, "max_grad_norm": 1.0},
        secure_aggregation={"mode": "secagg", "example_cap": 1, "max_dropouts": 1, "max_colluders": 1},
    )


def _lost_after_training() -> Malicious:
    """A site that trains, charges its ledger, masks, and whose reply is then lost."""
    return Malicious(lambda msg, reply: None)


def test_fewer_survivors_than_t_release_nothing_and_the_reserved_charge_is_reported_as_unreleased(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is released, no ledger holds more than its one write-ahead reservation, and the
    audit log and report say that round 1's charges were reserved for a release that never happened.

    On the old code the run failed with the same reason, but ``run.failed`` did not name the
    round and every round-1 spend was reported as an ordinary release (no ``released`` field).
    """
    out = run_job(
        tmp_path, _job(), [honest, honest, _lost_after_training(), _lost_after_training()], monkeypatch=monkeypatch
    )

    assert out.error is not None
    types = [e.type for e in out.entries]
    assert "aggregation.completed" not in types  # no sum formed, no model published
    (failed,) = [e for e in out.entries if e.type == "run.failed"]
    assert failed.details["abandoned_round"] == 1
    assert failed.details["released"] is False
    assert "round 1 abandoned, nothing released" in failed.details["reason"]
    stages = [e.details.get("stage") for e in out.entries if e.details.get("stage")]
    assert "unmask" not in stages  # no site was asked for an unmasking share
    # Every site that trained holds exactly its one write-ahead charge for round 1; nothing more.
    for site in ("edge-0", "edge-1", "edge-2", "edge-3"):
        ledger = PrivacyLedger(out.run_dir / "site-homes" / site / "ledger.sqlite")
        try:
            charges = [(e.run_id, e.round) for e in ledger.entries()]
        finally:
            ledger.close()
        assert charges == [("run-1", 1)], site
    files = generate_report(
        str(out.run_dir / AUDIT_STORE), "run-1", out_dir=tmp_path / "report", formats=["json", "html"]
    )
    report = json.loads(files.paths["json"].read_text())
    points = [p for b in report["controls"]["budgets"] for p in b["points"]]
    assert points  # the survivors' round-1 charges are in the report ...
    assert all(p["round"] == 1 and p["released"] is False for p in points)  # ... as unreleased
    assert "reserved, round abandoned: nothing released" in files.paths["html"].read_text()


def _u2_below_the_floor(site: str) -> Handler:
    """The real site, fed train messages whose mask stage names only it and one other site in U2.

    What a dishonest coordinator would send to learn more from the unmasking; the shares are
    cut to match, so the floor is the check that fails.
    """

    def handler(msg: Message, context: Context) -> Message | None:
        cfg = msg.content.config_records.get("config")
        raw = cfg.get(SECAGG) if cfg is not None and msg.metadata.message_type == "train" else None
        if isinstance(raw, str):
            doc = json.loads(raw)
            if doc.get("stage") == "mask":
                doc["u2"] = sorted({site, next(n for n in doc["u2"] if n != site)})
                doc["shares"] = {k: v for k, v in doc["shares"].items() if k in doc["u2"]}
                cfg[SECAGG] = json.dumps(doc)
        return honest(msg, context)

    return handler


def test_a_mask_stage_with_u2_below_the_floor_is_refused_before_anything_is_charged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site refuses the train message and its ledger holds no charge for it.

    On the old code the site trained and reserved its user-level DP spend first and only then
    ran the mask stage's checks: the refusal came with the round charged (issue 13's note).
    """
    out = run_job(tmp_path, _job(), [honest, honest, honest, _u2_below_the_floor("edge-3")], monkeypatch=monkeypatch)

    refusals = [e.details["check"] for e in out.entries if e.actor.id == "edge-3" and e.type == "update.rejected"]
    assert refusals == ["site.refused:crypto"] * 2  # both rounds (SecAggAbandoned is a CryptoError)
    ledger = PrivacyLedger(out.run_dir / "site-homes" / "edge-3" / "ledger.sqlite")
    try:
        charges = [(e.run_id, e.round) for e in ledger.entries()]
    finally:
        ledger.close()
    assert charges == []
    for site in ("edge-0", "edge-1", "edge-2"):  # the honest sites trained and were charged
        ledger = PrivacyLedger(out.run_dir / "site-homes" / site / "ledger.sqlite")
        try:
            assert [e.round for e in ledger.entries()][:1] == [1], site
        finally:
            ledger.close()
