"""The aggregator interface (``fedinfra.aggregation.rounds``): registry, selection, the shared checks.

Every mode is one :class:`Aggregator`; what they share is tested here on the interface
itself: a reply's failure becomes one check code, a site counts once, the registry refuses
a name twice, the job picks its aggregator in a fixed order, and the plaintext checks hold
exactly at their bounds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedinfra.aggregation import rounds
from fedinfra.aggregation.digest import model_bytes
from fedinfra.aggregation.rounds import (
    AGGREGATORS,
    SELECTORS,
    Aggregator,
    Folded,
    Reply,
    RoundAggregate,
    RoundSpec,
    Stage,
    UpdateRejected,
    aggregator_class,
    aggregator_name,
    check_update,
    check_weight,
    model_layout,
    plaintext_update,
    register,
    update_subject,
)
from fedinfra.config import JobSpec
from fedinfra.errors import ConfigError, CryptoError, FedinfraError

LAYOUT = (("w", (2, 2)), ("b", (3,)))


class _Scripted(Aggregator):
    """Accepts a reply, or raises what the reply's config says (the base class's handling under test)."""

    name = "scripted-for-tests"

    def _accept(self, reply: Reply) -> Folded:
        exc = reply.config.get("raise")
        if isinstance(exc, BaseException):
            raise exc
        return Folded.of("update", [reply.site.encode()])

    def finish(self) -> RoundAggregate:
        return RoundAggregate(sites=self.sites)


def _scripted() -> _Scripted:
    return _Scripted(RoundSpec(run_id="r", round=1, layout=LAYOUT, job=JobSpec()))


def _update(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 2), scale, np.float32), "b": np.full(3, scale, np.float32)}


# -- the base class ---------------------------------------------------------------------------------------


def test_a_model_layout_is_names_and_int_shapes_in_the_models_order() -> None:
    layout = model_layout({"z": np.zeros((2, 3)), "a": np.zeros(4), "s": np.float32(1.0)})
    assert layout == (("z", (2, 3)), ("a", (4,)), ("s", ()))
    assert all(type(d) is int for _, shape in layout for d in shape)


def test_an_update_rejected_is_a_config_error_with_its_check_and_reason() -> None:
    exc = UpdateRejected("shape", "tensor 'w' has the wrong shape")
    assert isinstance(exc, ConfigError)
    assert exc.check == "shape"
    assert str(exc) == "tensor 'w' has the wrong shape"


def test_the_accepted_sites_are_counted_in_arrival_order_and_a_second_reply_is_a_replay() -> None:
    agg = _scripted()
    agg.accept(Reply(site="b", weight=1.0, config={}))
    agg.accept(Reply(site="a", weight=1.0, config={}))

    with pytest.raises(UpdateRejected, match=r"^site 'a' already contributed to this round \(replay\)$") as info:
        agg.accept(Reply(site="a", weight=1.0, config={}))

    assert info.value.check == "protocol"
    assert agg.sites == ("b", "a")
    assert agg.count == 2


@pytest.mark.parametrize(
    ("exc", "check"),
    [
        (CryptoError("bad ciphertext"), "ciphertext"),
        (KeyError("w"), "missing"),
        (ValueError("bad bytes"), "encoding"),
        (TypeError("bad type"), "encoding"),
        (FedinfraError("bad"), "encoding"),
        (UpdateRejected("bound", "too long"), "bound"),
    ],
)
def test_a_failure_while_accepting_becomes_one_check_and_the_site_is_not_counted(exc: Exception, check: str) -> None:
    agg = _scripted()
    with pytest.raises(UpdateRejected) as info:
        agg.accept(Reply(site="a", weight=1.0, config={"raise": exc}))

    assert info.value.check == check
    assert str(info.value) == str(exc)
    assert info.value is exc or info.value.__cause__ is exc
    assert agg.count == 0
    agg.accept(Reply(site="a", weight=1.0, config={}))  # a refused site may still send its update
    assert agg.sites == ("a",)


def test_any_other_failure_is_a_bug_and_is_not_turned_into_a_check() -> None:
    agg = _scripted()
    with pytest.raises(RuntimeError, match="bug"):
        agg.accept(Reply(site="a", weight=1.0, config={"raise": RuntimeError("bug")}))
    assert agg.count == 0


def test_a_single_wave_aggregator_has_no_stages_and_asks_every_site_to_train() -> None:
    agg = _scripted()
    assert list(agg.stages_before()) == []
    assert list(agg.stages_after()) == []
    assert agg.train_extra("a") == {}
    assert agg.audit_details() == {}
    assert agg.hides_aggregate is False
    assert Stage("s", {}, lambda site, doc: None).close() is None


def test_folded_hashes_the_parts_as_one_byte_string_without_joining_them() -> None:
    floats = np.arange(3, dtype=np.float32)
    parts: list[bytes | bytearray | memoryview] = [b"ab", bytearray(b"cd"), memoryview(floats)]
    whole = b"abcd" + floats.tobytes()

    folded = Folded.of("update.test", parts)

    assert folded == Folded("update.test", hashlib.sha256(whole).hexdigest(), len(whole))
    assert folded.size == 16
    assert folded.subject == ("update.test", hashlib.sha256(whole).hexdigest(), 16)
    assert Folded.of("empty", []).subject == ("empty", hashlib.sha256(b"").hexdigest(), 0)


def test_a_plaintext_updates_subject_is_its_canonical_model_bytes() -> None:
    update = {"w": np.asfortranarray(np.arange(4, dtype=np.float32).reshape(2, 2)), "b": np.ones(3, np.float64)}
    folded = update_subject(update, LAYOUT)
    assert folded.subject == ("update", hashlib.sha256(model_bytes(update)).hexdigest(), 28)


# -- registry and selection -------------------------------------------------------------------------------


def test_the_registry_refuses_an_empty_or_taken_name() -> None:
    class Unnamed(_Scripted):
        name = ""

    class Taken(_Scripted):
        name = "fedavg"

    aggregator_class(JobSpec())  # loads the built-ins
    for cls in (Unnamed, Taken):
        with pytest.raises(ValueError, match=r"is empty or taken$"):
            register(cls)
    assert AGGREGATORS["fedavg"] is not Taken

    class Fresh(_Scripted):
        name = "fresh-for-tests"

    try:
        assert register(Fresh) is Fresh
        assert AGGREGATORS["fresh-for-tests"] is Fresh
    finally:
        del AGGREGATORS["fresh-for-tests"]


@pytest.fixture
def selector() -> Iterator[list[str | None]]:
    """A job -> name hook: ``answer[0]`` and the job's mode (``None`` until the test sets it), removed afterwards."""
    answer: list[str | None] = [None]
    hook = lambda job: None if answer[0] is None else f"{answer[0]}-{job.secure_aggregation.mode}"  # noqa: E731
    SELECTORS.append(hook)
    yield answer
    SELECTORS.remove(hook)


def test_a_selector_hook_decides_first_and_a_silent_one_leaves_it_to_the_job(selector: list[str | None]) -> None:
    bfv = JobSpec.model_validate({"secure_aggregation": {"mode": "bfv", "max_sites": 3, "example_cap": 100}})
    assert aggregator_name(bfv) == "bfv"
    selector[0] = "chosen-by-hook"
    assert aggregator_name(bfv) == "chosen-by-hook-bfv"  # the hook reads the job it is given
    assert aggregator_name(JobSpec()) == "chosen-by-hook-none"


@pytest.mark.parametrize(
    ("doc", "name"),
    [
        ({}, "fedavg"),
        ({"compression": {"bits": 8}}, "compressed"),
        ({"aggregation": {"rule": "median"}, "sites": {"count": 7}}, "median"),
        ({"aggregation": {"rule": "median"}, "sites": {"count": 7}, "compression": {"bits": 8}}, "median"),
        ({"secure_aggregation": {"mode": "ckks", "max_sites": 3, "example_cap": 100}}, "ckks"),
        ({"secure_aggregation": {"mode": "secagg", "max_sites": 10, "example_cap": 100}}, "secagg"),
    ],
)
def test_the_job_picks_its_aggregator_mode_then_rule_then_compression(doc: dict[str, object], name: str) -> None:
    job = JobSpec.model_validate(doc)
    assert aggregator_name(job) == name
    assert aggregator_class(job).name == name


def test_an_unknown_aggregator_name_is_a_config_error_naming_the_known_ones(selector: list[str | None]) -> None:
    selector[0] = "nonexistent"
    with pytest.raises(ConfigError, match=r"^no aggregator named 'nonexistent-none'; known: \[.*'fedavg'.*\]$") as info:
        aggregator_class(JobSpec())
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# -- the plaintext checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("update", "check"),
    [
        ({"w": np.zeros((2, 2), np.float32)}, "layout"),
        ({**_update(), "extra": np.zeros(1, np.float32)}, "layout"),
        ({"w": np.zeros((2, 2), np.float32), "c": np.zeros(3, np.float32)}, "layout"),
        ({"w": np.zeros((4,), np.float32), "b": np.zeros(3, np.float32)}, "shape"),
        ({"w": np.zeros((2, 2), np.float64), "b": np.zeros(3, np.float32)}, "dtype"),
        ({"w": np.zeros((2, 2), np.float32), "b": np.array([0, np.inf, 0], np.float32)}, "finite"),
    ],
)
def test_check_update_names_the_first_check_that_fails(update: dict[str, np.ndarray], check: str) -> None:
    with pytest.raises(UpdateRejected) as info:
        check_update(update, LAYOUT)
    assert info.value.check == check


def test_check_update_messages_name_the_tensor_and_never_a_value() -> None:
    with pytest.raises(UpdateRejected, match=r"^update tensor 'w' has shape \(4,\), the model \(2, 2\)$"):
        check_update({"w": np.zeros(4, np.float32), "b": np.zeros(3, np.float32)}, LAYOUT)
    with pytest.raises(UpdateRejected, match=r"^update tensor 'w' is not float32 like the model$"):
        check_update({"w": np.zeros((2, 2), np.float16), "b": np.zeros(3, np.float32)}, LAYOUT)
    with pytest.raises(UpdateRejected, match=r"^update tensor 'b' has non-finite values$"):
        check_update({"w": np.zeros((2, 2), np.float32), "b": np.array([np.nan, 0, 0], np.float32)}, LAYOUT)
    with pytest.raises(UpdateRejected, match=r"^update tensors do not match the model$"):
        check_update({}, LAYOUT)
    with pytest.raises(UpdateRejected, match=r"^update norm exceeds the job's aggregation.max_update_norm$"):
        check_update(_update(), LAYOUT, max_norm=1.0)


def test_the_norm_bound_is_inclusive_and_sums_every_tensor_and_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rounds, "_CHECK_SLICE", 2)  # several slices per tensor
    update = {"w": np.array([[3.0, 0.0], [0.0, 0.0]], np.float32), "b": np.array([0.0, 0.0, 4.0], np.float32)}
    check_update(update, LAYOUT, max_norm=5.0)  # sqrt(9 + 16) = 5 exactly: allowed
    check_update(update, LAYOUT)  # no bound by default
    with pytest.raises(UpdateRejected) as info:
        check_update(update, LAYOUT, max_norm=math.nextafter(5.0, 0.0))
    assert info.value.check == "bound"
    late = {"w": np.zeros((2, 2), np.float32), "b": np.array([0.0, 0.0, 4.0], np.float32)}
    with pytest.raises(UpdateRejected):  # the last slice of the last tensor counts
        check_update(late, LAYOUT, max_norm=3.9)
    nan_late = {"w": np.zeros((2, 2), np.float32), "b": np.array([0.0, 0.0, np.nan], np.float32)}
    with pytest.raises(UpdateRejected) as info:
        check_update(nan_late, LAYOUT)
    assert info.value.check == "finite"


def test_every_value_of_every_slice_counts_in_the_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rounds, "_CHECK_SLICE", 2)
    for at in range(4):  # each position of a tensor of two slices
        w = np.zeros(4, np.float32)
        w[at] = 3.0
        update = {"w": w.reshape(2, 2), "b": np.array([0.0, 0.0, 4.0], np.float32)}
        check_update(update, LAYOUT, max_norm=5.0)
        with pytest.raises(UpdateRejected):
            check_update(update, LAYOUT, max_norm=math.nextafter(5.0, 0.0))


def test_the_norm_is_summed_in_float64_so_large_float32_values_do_not_overflow_it() -> None:
    update = {"w": np.full((2, 2), 1e20, np.float32), "b": np.zeros(3, np.float32)}  # squares overflow float32
    check_update(update, LAYOUT, max_norm=3e20)  # the norm is 2e20
    with pytest.raises(UpdateRejected):
        check_update(update, LAYOUT, max_norm=1.9e20)


@pytest.mark.parametrize("weight", [0.0, -0.5, math.inf, -math.inf, math.nan])
def test_check_weight_refuses_what_is_not_positive_and_finite(weight: float) -> None:
    with pytest.raises(UpdateRejected, match=r"^reply weight must be a positive finite number$") as info:
        check_weight(weight)
    assert info.value.check == "weight"


def test_check_weight_returns_a_float() -> None:
    w = check_weight(np.float32(2.5))  # type: ignore[arg-type]
    assert w == 2.5
    assert type(w) is float
    assert check_weight(5e-324) == 5e-324


def test_a_plaintext_update_is_read_from_the_reply_and_checked() -> None:
    record = ArrayRecord({k: Array(v) for k, v in _update(0.5).items()})
    update = plaintext_update(Reply(site="a", weight=1.0, config={}, arrays=record), LAYOUT, max_norm=2.0)
    assert {k: v.tolist() for k, v in update.items()} == {k: v.tolist() for k, v in _update(0.5).items()}
    with pytest.raises(UpdateRejected) as bound:
        plaintext_update(Reply(site="a", weight=1.0, config={}, arrays=record), LAYOUT, max_norm=1.0)
    with pytest.raises(UpdateRejected, match=r"^reply carries no update tensors$") as missing:
        plaintext_update(Reply(site="a", weight=1.0, config={}), LAYOUT)
    assert bound.value.check == "bound"
    assert missing.value.check == "missing"
