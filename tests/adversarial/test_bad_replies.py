"""Each bad reply of issue 16 against the real coordinator: rejected, audited, run completes.

For every attack the honest sites' aggregate is exactly the aggregate of the run in which
the bad site never answers, and the audit log names the site and the failing check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedinfra.config import JobSpec
from fedinfra.config.job import CompressionSpec
from fedinfra.config.secagg import SecureAggSpec
from fedinfra.runtime.simulation import AUDIT_STORE
from tests.adversarial.harness import (
    Malicious,
    adversarial_job,
    doc_of,
    honest,
    payload_of,
    rejections,
    run_job,
    silent,
    with_doc,
    with_payload,
)


def _doc_attack(**changes: Any) -> Malicious:
    def attack(msg: Message, reply: Message) -> Message:
        doc = doc_of(reply)
        for key, value in changes.items():
            if key.startswith("details."):
                doc.setdefault("details", {})[key.removeprefix("details.")] = value
            else:
                doc[key] = value
        return with_doc(reply, doc)

    return Malicious(attack)


def _raw_doc_attack(edit: Any) -> Malicious:
    def attack(msg: Message, reply: Message) -> Message:
        return with_doc(reply, edit(doc_of(reply)))

    return Malicious(attack)


def _arrays_attack(make: Any) -> Malicious:
    def attack(msg: Message, reply: Message) -> Message:
        update = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
        bad = make(update)
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in bad.items()}),
                "config": ConfigRecord(dict(reply.content.config_records["config"])),
            }
        )
        return Message(content, reply_to=_req(reply))

    return Malicious(attack)


def _req(reply: Message) -> Message:
    from tests.adversarial.harness import _request_of

    return _request_of(reply)


def _huge_digits(doc: dict[str, Any]) -> str:
    text = json.dumps(doc)
    return text.replace(f'"num_examples": {doc["num_examples"]}', '"num_examples": ' + "9" * 400)


def _infinite_loss(doc: dict[str, Any]) -> str:
    return json.dumps({**doc, "train_loss": float("inf")})  # json.dumps writes Infinity


ATTACKS: dict[str, tuple[Malicious, str]] = {
    "epsilon_total is a string": (_doc_attack(**{"details.epsilon_total": "x"}), "details"),
    "details integer 2**60": (_doc_attack(**{"details.steps": 2**60}), "details"),
    "400-digit num_examples": (_raw_doc_attack(_huge_digits), "num_examples"),
    "num_examples 10**15": (_doc_attack(num_examples=10**15), "num_examples"),
    "num_examples above the declared dataset": (_doc_attack(num_examples=10**6), "report.num_examples:above_declared"),
    "float64 update of 1e300": (
        _arrays_attack(lambda u: {k: np.full(v.shape, 1e300, dtype=np.float64) for k, v in u.items()}),
        "dtype",
    ),
    "float32 update of 3e38": (
        _arrays_attack(lambda u: {k: np.full(v.shape, 3e38, dtype=np.float32) for k, v in u.items()}),
        "bound",
    ),
    "nan update": (
        _arrays_attack(lambda u: {k: np.full(v.shape, np.nan, dtype=np.float32) for k, v in u.items()}),
        "finite",
    ),
    "wrong shape": (
        _arrays_attack(lambda u: {k: np.zeros((*v.shape, 2), dtype=np.float32) for k, v in u.items()}),
        "shape",
    ),
    "train_loss inf": (_raw_doc_attack(_infinite_loss), "train_report.train_loss"),
    "evaluation correct > count": (
        _doc_attack(evaluation={"round": 1, "loss_sum": 1.0, "correct": 10**10, "count": 1}),
        "evaluation",
    ),
    "stale run id": (_doc_attack(run_id="an-older-run"), "report.run_id:mismatch"),
    "built on another model": (_doc_attack(model_digest="0" * 64), "report.model_digest:mismatch"),
    "no run id": (_doc_attack(run_id=None), "report.run_id:mismatch"),
    "another site's name": (_doc_attack(site="edge-0"), "report.site:mismatch"),
    "wrong round": (_doc_attack(round=7), "report.round:mismatch"),
    "not json": (Malicious(lambda m, r: with_doc(r, "{not json")), "train_report"),
    "oversize document": (Malicious(lambda m, r: with_doc(r, " " * (2 << 20))), "reply.doc:too_long"),
}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The run in which site 3 never answers."""
    mp = pytest.MonkeyPatch()
    try:
        job = _job()
        return run_job(tmp_path_factory.mktemp("base"), job, [honest, honest, honest, silent], monkeypatch=mp)
    finally:
        mp.undo()


def _job() -> JobSpec:
    return adversarial_job()


#: In the default run: the five ways one reply used to abort the run, and the poisoning ones.
DEFAULT = {
    "stale run id",
    "epsilon_total is a string",
    "details integer 2**60",
    "400-digit num_examples",
    "num_examples 10**15",
    "float64 update of 1e300",
}


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in sorted(ATTACKS)]
)
def test_a_bad_reply_is_rejected_and_the_honest_aggregate_is_unchanged(
    name: str, baseline: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, check = ATTACKS[name]

    out = run_job(tmp_path, _job(), [honest, honest, honest, bad], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    assert baseline.error is None
    assert out.state is not None
    assert baseline.state is not None
    for k, v in baseline.state.weights.items():
        assert np.array_equal(out.state.weights[k], v), k
    rejected = [d for site, d in rejections(out) if site == "edge-3"]
    assert len(rejected) >= 2
    assert all(check in d["check"] for d in rejected), rejected
    assert [e.type for e in out.entries][-2:] == ["run.completed", "checkpoint.published"]


def _smuggled(msg: Message, reply: Message) -> Message:
    """The payload moved into the config record (the old wire format): never read from there."""
    blob = payload_of(reply, "update.compressed")
    return with_doc(with_payload(reply, "update.compressed", None), doc_of(reply), **{"update.compressed": blob})


@pytest.mark.parametrize(
    ("attack", "check"),
    [
        (lambda m, r: with_payload(r, "update.compressed", None), "missing"),
        (_smuggled, "missing"),
        (
            lambda m, r: with_payload(r, "update.compressed", ArrayRecord({"000000": Array(np.zeros(4, np.float32))})),
            "reply.update.compressed:malformed",
        ),
        (lambda m, r: with_payload(r, "update.compressed", b"\0" * (1 << 20)), "reply.update.compressed:too_long"),
    ],
    ids=["absent", "in-config", "not-bytes", "too-long"],
)
def test_a_compressed_update_that_is_no_bytes_or_too_long_is_rejected_before_it_is_read(
    attack: Any, check: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 MiB update is refused by its bound from the model (``intake.compressed_update_bound``)
    before its segments are joined; the old code read it and failed in the decoder (``encoding``)."""
    job = _job().model_copy(update={"compression": CompressionSpec(bits=8, clip=1.0)})
    bad = Malicious(attack)

    out = run_job(tmp_path, job, [honest, honest, honest, bad], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    rejected = [d for site, d in rejections(out) if site == "edge-3"]
    assert [d["check"] for d in rejected] == [check, check]
    assert [e.type for e in out.entries][-2:] == ["run.completed", "checkpoint.published"]


@pytest.mark.parametrize(
    ("rewrite", "check"), [({}, "report.round:mismatch"), ({"round": 2}, "report.model_digest:mismatch")]
)
def test_a_replayed_reply_of_an_earlier_round_is_rejected(
    rewrite: dict[str, Any], check: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept: list[Message] = []

    def replay(msg: Message, reply: Message) -> Message:
        if not kept:
            kept.append(reply)
            return reply
        old = kept[0]
        return with_doc(old, {**doc_of(old), **rewrite})

    out = run_job(tmp_path, _job(), [honest, honest, honest, Malicious(replay)], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    rejected = [(e.round, e.details["check"]) for e in out.entries if e.type == "update.rejected"]
    assert rejected == [(2, check)]


def test_a_slow_loris_site_is_named_and_not_waited_for(
    baseline: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_job(tmp_path, _job(), [honest, honest, honest, honest], delays={3: 30.0}, monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    assert out.state is not None
    for k, v in baseline.state.weights.items():
        assert np.array_equal(out.state.weights[k], v), k
    assert [(s, d["check"]) for s, d in rejections(out)] == [("edge-3", "reply.timeout")] * 2


#: What a site's refusal text may carry: a kit path, a record's value, a person's name.
LEAK = "PolicyViolation: /srv/kits/sites/edge-3/data/patients.csv row 4711: John Doe, MRN 0042-4711"


@pytest.mark.parametrize("code", ["budget", "policy", "error"])
def test_a_sites_refusal_is_audited_as_its_code_and_its_free_text_never_reaches_the_store(
    code: str, baseline: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal's ``reason`` is the site's free text (up to 1,000 characters on the wire):
    the audit log keeps the bounded ``code`` only (GDPR Art. 5(1)(c), data minimisation)."""

    def refuse(msg: Message, reply: Message) -> Message:
        doc = doc_of(reply)
        refused = {
            "site": doc["site"],
            "round": doc["round"],
            "status": "refused",
            "reason": LEAK,
            "code": code,
            "num_examples": 0,
            "run_id": doc["run_id"],
        }
        return with_doc(reply, refused)

    out = run_job(tmp_path, _job(), [honest, honest, honest, Malicious(refuse)], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    assert out.state is not None
    for k, v in baseline.state.weights.items():
        assert np.array_equal(out.state.weights[k], v), k
    stored = b"".join(e.canonical() for e in out.entries)
    for f in out.run_dir.glob(f"{AUDIT_STORE}*"):  # the database file itself (and its WAL), every page
        stored += f.read_bytes()
    for fragment in (b"/srv/kits", b"patients.csv", b"4711", b"John Doe", b"PolicyViolation"):
        assert fragment not in stored, fragment
    rejected = [d for site, d in rejections(out) if site == "edge-3"]
    assert [(d["check"], d["code"]) for d in rejected] == [(f"site.refused:{code}", code)] * 2


def test_an_encrypted_update_larger_than_the_model_allows_is_rejected_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HE_UPDATE`` is bounded by the job's model and the kit's HE parameters
    (``intake.he_update_bound``), not by gRPC's 2 GB: one byte over is refused by name."""
    from fedinfra.aggregation.rounds import model_layout
    from fedinfra.config.wire import HE_UPDATE
    from fedinfra.coordinator.intake import he_update_bound
    from fedinfra.models import get_weights
    from fedinfra.runtime.coordinator_kit import settings_from_kit
    from fedinfra.runtime.simulation import provision_simulation
    from fedinfra.site.tasks import job_model

    job = _job().model_copy(
        update={"secure_aggregation": SecureAggSpec.model_validate({"mode": "bfv", "quant_bits": 8, "clip": 1.0})}
    )
    provision_simulation(job, "run-1", tmp_path / "run-1")  # run_job reuses these kits
    kit = settings_from_kit(tmp_path / "run-1" / "kits" / "coordinator", store=":memory:", tls=False, he=True)
    assert kit.he_public is not None
    limit = he_update_bound(kit.he_public.params, model_layout(get_weights(job_model(job)[0])))
    honest_sizes: list[int] = []

    def oversize(msg: Message, reply: Message) -> Message:
        blob = payload_of(reply, HE_UPDATE)
        honest_sizes.append(len(blob))
        return with_payload(reply, HE_UPDATE, blob + b"\0" * (limit + 1 - len(blob)))

    out = run_job(tmp_path, job, [honest, honest, honest, Malicious(oversize)], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    rejected = [d["check"] for site, d in rejections(out) if site == "edge-3"]
    assert rejected == ["reply.he.update:too_long"] * 2
    assert all(size <= limit <= 4 * size for size in honest_sizes)  # an honest site fits; the bound is tight
    assert [e.type for e in out.entries][-2:] == ["run.completed", "checkpoint.published"]


def test_a_masked_update_longer_than_the_model_allows_is_rejected_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SECAGG_UPDATE`` has an exact length from the job's model (``intake.secagg_update_bound``):
    one byte over is refused by name at intake, and the round goes on with the other three.

    On the old code the reply reached the aggregator, which copied it and then failed while
    decoding: the audited check was ``encoding``, not ``reply.secagg.update:too_long``.
    """
    from fedinfra.aggregation.rounds import model_layout
    from fedinfra.config.wire import SECAGG_UPDATE
    from fedinfra.coordinator.intake import secagg_update_bound
    from fedinfra.models import get_weights
    from fedinfra.site.tasks import job_model

    secure = {"mode": "secagg", "max_dropouts": 1, "max_colluders": 1, "example_cap": 1000}
    job = _job().model_copy(update={"secure_aggregation": SecureAggSpec.model_validate(secure)})
    limit = secagg_update_bound(job.secure_aggregation, model_layout(get_weights(job_model(job)[0])))
    honest_sizes: list[int] = []

    def oversize(msg: Message, reply: Message) -> Message:
        blob = payload_of(reply, SECAGG_UPDATE)
        honest_sizes.append(len(blob))
        return with_payload(reply, SECAGG_UPDATE, blob + b"\0")

    out = run_job(tmp_path, job, [honest, honest, honest, Malicious(oversize)], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    rejected = [d["check"] for site, d in rejections(out) if site == "edge-3"]
    assert rejected == ["reply.secagg.update:too_long"] * 2
    assert honest_sizes == [limit] * 2  # the bound is the honest size, exactly
    assert [e.type for e in out.entries].count("aggregation.completed") == 2


def test_a_malformed_close_wave_sum_is_audited_and_the_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under secagg+he the final model's evaluation travels in the close wave's secure sum; a site
    whose close reply carries a malformed payload record is refused by name and audited, and the
    run still completes (the payload check at intake raised past the close wave's handler)."""
    from fedinfra.config.wire import SECAGG_UPDATE

    # secagg+he: the sites decrypt and evaluate each model; the close wave sums their figures securely.
    secure = {"mode": "secagg+he", "max_sites": 4, "max_dropouts": 1, "max_colluders": 1}
    job = adversarial_job(secure_aggregation=secure)
    bad_record = ArrayRecord({"000000": Array(np.zeros(4, np.float32))})

    def malformed(msg: Message, reply: Message) -> Message:
        if "blob:" + SECAGG_UPDATE not in reply.content.array_records:
            return reply  # not the close wave's secure sum
        return with_payload(reply, SECAGG_UPDATE, bad_record)

    bad = Malicious(malformed, phases=("evaluate",))
    out = run_job(tmp_path, job, [honest, honest, honest, bad], monkeypatch=monkeypatch)

    assert out.error is None, repr(out.error)
    rejected = [d for site, d in rejections(out) if site == "edge-3"]
    assert [(d["check"], d["code"]) for d in rejected] == [("reply.secagg.update:malformed", "evaluation")]
    assert [e.type for e in out.entries][-2:] == ["run.completed", "checkpoint.published"]
