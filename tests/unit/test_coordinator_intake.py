"""The coordinator's reading of one site's reply (``fedinfra.coordinator.intake``), reader by reader.

Each refusal is a check code naming the field and the failed check, never the value sent;
the byte bounds on encrypted and masked updates are the exact sizes an honest site's
largest reply reaches (built here with the wire formats the sites use), so one byte more is
refused and the largest honest reply is not.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, Metadata, RecordDict
from pydantic import ValidationError

from fedinfra.aggregation.rounds import UpdateRejected
from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.config.wire import CONFIG, DOC, EvalReport, TrainReport
from fedinfra.coordinator import intake
from fedinfra.coordinator.intake import MAX_DOC_BYTES, Rejected
from fedinfra.crypto import envelope, generate_consortium, seal_update
from fedinfra.crypto._seal import MAX_CT_BYTES
from fedinfra.crypto.secagg import codec as sa_codec
from fedinfra.errors import ConfigError, FedinfraError

SITE = "edge-1"
RUN = "run-7"
VIEW = "ab" * 32


def _meta() -> Metadata:
    return Metadata(
        run_id=1,
        message_id="reply",
        src_node_id=2,
        dst_node_id=1,
        reply_to_message_id="instruction",
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )


def _reply(config: dict[str, Any] | None = None, *, records: dict[str, Any] | None = None) -> Message:
    content = records if records is not None else {CONFIG: ConfigRecord(config or {})}
    return Message(RecordDict(content), metadata=_meta())


def _with_doc(doc: dict[str, Any] | str, **extra: Any) -> Message:
    return _reply({DOC: doc if isinstance(doc, str) else json.dumps(doc), **extra})


def _train_doc(**changes: Any) -> dict[str, Any]:
    return {"site": SITE, "round": 3, "num_examples": 40, "run_id": RUN, "model_digest": VIEW, **changes}


def _eval_doc(**changes: Any) -> dict[str, Any]:
    return {"site": SITE, "round": 3, "correct": 5, "count": 9, "run_id": RUN, "model_digest": VIEW, **changes}


def _check(exc_info: pytest.ExceptionInfo[Rejected]) -> str:
    exc = exc_info.value
    assert str(exc) == exc.check
    return exc.check


def _train(reply: Message, declared: int | None = 40) -> TrainReport:
    return intake.train_report(reply, site=SITE, rnd=3, declared_examples=declared, run_id=RUN, view=VIEW)


def _eval(reply: Message) -> EvalReport:
    return intake.eval_report(reply, site=SITE, rnd=3, run_id=RUN, view=VIEW)


# -- check codes -------------------------------------------------------------------------------


def test_rejected_carries_its_check_as_message_and_is_a_value_error():
    exc = Rejected("report.site:mismatch")

    assert exc.check == "report.site:mismatch"
    assert str(exc) == "report.site:mismatch"
    assert isinstance(exc, FedinfraError)
    assert isinstance(exc, ValueError)


def test_check_of_names_a_rejection_and_an_aggregators_refusal_by_their_check():
    assert intake.check_of(Rejected("reply.doc:too_long")) == "reply.doc:too_long"
    assert intake.check_of(UpdateRejected("finite", "the update holds NaN or infinity")) == "finite"


def test_check_of_turns_a_schema_error_into_model_field_and_type():
    with pytest.raises(ValidationError) as info:
        TrainReport.model_validate(_train_doc(num_examples=10**15))

    assert intake.check_of(info.value) == "train_report.num_examples:less_than_equal"


def test_check_of_names_only_the_class_of_anything_else():
    class Odd(FedinfraError):
        check = 7  # not a check code

    forged = ValueError("secret value 0.123")
    forged.check = "looks.like:a_check"  # type: ignore[attr-defined]

    assert intake.check_of(RuntimeError("secret value 0.123")) == "internal.RuntimeError"
    assert intake.check_of(Odd("secret")) == "internal.Odd"
    assert intake.check_of(forged) == "internal.ValueError"
    assert intake.check_of(ConfigError("secret")) == "internal.ConfigError"


def test_schema_check_joins_the_nested_field_path():
    with pytest.raises(ValidationError) as info:
        TrainReport.model_validate(_train_doc(evaluation={"round": 1, "loss_sum": -1.0, "correct": 0, "count": 1}))

    assert intake.schema_check(info.value, "TrainReport") == "train_report.evaluation.loss_sum:greater_than_equal"


def test_schema_check_of_a_whole_model_error_names_the_root():
    with pytest.raises(ValidationError) as info:
        EvalReport.model_validate(_eval_doc(correct=10, count=9))

    assert intake.schema_check(info.value, "EvalReport") == "eval_report.root:correct_above_count"


def test_schema_check_is_cut_to_200_characters():
    with pytest.raises(ValidationError) as info:
        TrainReport.model_validate(_train_doc(num_examples=-1))
    model = "VeryLong" * 40

    code = intake.schema_check(info.value, model)

    assert len(code) == 200
    assert code == ("_very_long" * 40).lstrip("_")[:200]


# -- config values and documents ------------------------------------------------------------------------


def test_config_value_reads_the_config_record():
    assert intake.config_value(_reply({"k": 5}), "k") == 5


@pytest.mark.parametrize("reply", [_reply({"other": 1}), _reply(records={})], ids=["key", "record"])
def test_a_missing_config_value_is_named_without_the_key_error(reply):
    with pytest.raises(Rejected) as info:
        intake.config_value(reply, "k")

    assert _check(info) == "reply.k:missing"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_a_document_that_is_not_text_is_refused():
    with pytest.raises(Rejected) as info:
        intake.parse_doc(TrainReport, _reply({DOC: json.dumps(_train_doc()).encode()}))

    assert _check(info) == "reply.doc:type"


def test_a_document_of_exactly_the_limit_is_read_and_one_byte_more_is_refused():
    doc = json.dumps(_train_doc())
    at_limit = doc + " " * (MAX_DOC_BYTES - len(doc))

    assert intake.parse_doc(TrainReport, _with_doc(at_limit)).num_examples == 40
    with pytest.raises(Rejected) as info:
        intake.parse_doc(TrainReport, _with_doc(at_limit + " "))
    assert _check(info) == "reply.doc:too_long"


@pytest.mark.parametrize(
    ("doc", "check"),
    [
        ("{not json", "train_report.root:json_invalid"),
        (json.dumps(_train_doc(num_examples=10**15)), "train_report.num_examples:less_than_equal"),
        (json.dumps(_train_doc(train_loss=float("inf"))), "train_report.train_loss:finite_number"),
        (json.dumps(_train_doc(extra=1)), "train_report.extra:extra_forbidden"),
    ],
)
def test_an_invalid_document_is_refused_with_its_schema_check_and_not_its_value(doc, check):
    with pytest.raises(Rejected) as info:
        intake.parse_doc(TrainReport, _with_doc(doc))

    assert _check(info) == check
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# -- train and evaluation reports --------------------------------------------------------------------------


def test_a_train_report_for_this_site_run_round_and_model_is_returned():
    report = _train(_with_doc(_train_doc()))

    assert (report.site, report.round, report.num_examples, report.run_id) == (SITE, 3, 40, RUN)


def test_an_error_reply_is_refused_as_an_error():
    reply = Message(error=Error(code=3, reason="site crashed at /home/x"), metadata=_meta())

    for read in (_train, _eval):
        with pytest.raises(Rejected) as info:
            read(reply)
        assert _check(info) == "reply.error"


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"site": "edge-2"}, "report.site:mismatch"),
        ({"run_id": "run-6"}, "report.run_id:mismatch"),
        ({"run_id": None}, "report.run_id:mismatch"),
        ({"round": 2}, "report.round:mismatch"),
        ({"model_digest": "cd" * 32}, "report.model_digest:mismatch"),
        ({"model_digest": None}, "report.model_digest:mismatch"),
    ],
)
def test_a_report_for_another_site_run_round_or_model_is_refused(changes, check):
    for read, doc in ((_train, _train_doc(**changes)), (_eval, _eval_doc(**changes))):
        with pytest.raises(Rejected) as info:
            read(_with_doc(doc))
        assert _check(info) == check


def test_a_refusal_need_not_name_the_model_but_must_name_the_site_run_and_round():
    refused = {"status": "refused", "code": "budget", "num_examples": 0, "model_digest": None}

    assert _train(_with_doc(_train_doc(**refused))).status == "refused"
    with pytest.raises(Rejected) as info:
        _train(_with_doc(_train_doc(**refused, round=4)))
    assert _check(info) == "report.round:mismatch"


def test_the_example_count_may_reach_but_not_exceed_the_declared_dataset():
    assert _train(_with_doc(_train_doc(num_examples=40)), declared=40).num_examples == 40
    with pytest.raises(Rejected) as info:
        _train(_with_doc(_train_doc(num_examples=41)), declared=40)
    assert _check(info) == "report.num_examples:above_declared"


def test_with_counts_withheld_under_he_the_report_must_carry_zero_examples():
    assert _train(_with_doc(_train_doc(num_examples=0)), declared=None).num_examples == 0
    with pytest.raises(Rejected) as info:
        _train(_with_doc(_train_doc(num_examples=1)), declared=None)
    assert _check(info) == "report.num_examples:above_declared"


def test_an_eval_report_is_read_within_its_bounds():
    report = _eval(_with_doc(_eval_doc()))

    assert (report.correct, report.count) == (5, 9)
    with pytest.raises(Rejected) as info:
        _eval(_with_doc(_eval_doc(correct=10)))
    assert _check(info) == "eval_report.root:correct_above_count"


# -- byte bounds on binary payloads ----------------------------------------------------------------------


def test_a_payload_of_the_limit_passes_and_one_byte_more_is_refused_before_it_is_read():
    intake.bounded_blob(_reply({"he.update": b"\0" * 100}), "he.update", 100)
    with pytest.raises(Rejected) as info:
        intake.bounded_blob(_reply({"he.update": b"\0" * 101}), "he.update", 100)
    assert _check(info) == "reply.he.update:too_long"


@pytest.mark.parametrize(
    "reply",
    [_reply({"he.update": "x" * 500}), _reply({"he.update": 10**12}), _reply({}), _reply(records={})],
    ids=["text", "number", "absent", "no-config"],
)
def test_a_payload_that_is_no_bytes_or_absent_is_left_to_the_aggregator(reply):
    intake.bounded_blob(reply, "he.update", 100)  # the aggregator refuses it by type ("missing", "encoding")


LAYOUT = (("w", (3, 70)), ("b", (7,)))  # 217 values


@pytest.fixture(scope="module")
def bfv_kit():
    spec = SecureAggSpec(mode="bfv", clip=1.0, max_sites=3, example_cap=100)
    return generate_consortium(ConsortiumSpec(name="t", sites=["a", "b", "c"], secure_aggregation=spec))


@pytest.mark.parametrize("n_values", [217, 9000])
def test_the_he_bound_is_the_largest_envelope_an_honest_site_can_send(bfv_kit, n_values):
    # Longest ids the envelope allows, every ciphertext at SEAL's largest size, one site id.
    public, _ = bfv_kit
    params = public.params
    layout = (("w", (n_values,)),)
    longest = "r" * envelope.MAX_ID_BYTES
    header = envelope.Header(
        kind=envelope.KIND_UPDATE,
        scheme=params.scheme,
        param_id=params.param_id,
        run_id=longest,
        round_id=2**64 - 1,
        n_values=n_values,
        layout=b"\0" * 32,
        nonce=b"\0" * envelope.NONCE_BYTES,
        sites=("s" * envelope.MAX_ID_BYTES,),
    )
    blobs = [b"\0" * MAX_CT_BYTES] * params.ciphertext_count(n_values)
    largest = envelope.encode(header, blobs) + b"\0" * envelope.TRAILER_BYTES[envelope.KIND_UPDATE]

    assert intake.he_update_bound(params, layout) == len(largest)


def test_a_real_sealed_update_is_within_the_he_bound(bfv_kit):
    _, sites = bfv_kit
    update = {"w": np.full((3, 70), 0.5), "b": np.zeros(7)}
    blob = seal_update(update, 10, sites["a"], run_id=RUN, round_id=3)

    assert len(blob) <= intake.he_update_bound(sites["a"].params, LAYOUT)


@pytest.mark.parametrize(("quant_bits", "max_sites"), [(8, 1), (16, 3), (20, 1000)])
@pytest.mark.parametrize("n_eval", [0, 3])
def test_the_secagg_bound_is_the_exact_length_of_a_masked_update(quant_bits, max_sites, n_eval):
    spec = SecureAggSpec(mode="secagg", quant_bits=quant_bits, max_sites=max_sites, example_cap=100)
    values = np.linspace(-1.0, 1.0, 217)
    segments = sa_codec.encode(values, 10, spec, np.random.default_rng(0))
    if n_eval:
        segments.append(sa_codec.encode_eval(np.array([1.5, 0.0, 4.0]), spec))
    wire = sa_codec.to_wire(segments, sa_codec.widths(spec, n_eval))

    assert intake.secagg_update_bound(spec, LAYOUT, n_eval) == len(wire)
    if not n_eval:
        assert intake.secagg_update_bound(spec, LAYOUT) == len(wire)
