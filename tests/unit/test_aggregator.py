"""One aggregator interface: the layout comes from the model, a rejected reply leaves no trace.

Issue 13 measured both failures on the old code: a malformed first reply fixed the layout
(honest replies then failed with "model mismatch"), and a BFV ciphertext in NTT form was
half-added to the encrypted sum before the addition failed (sites accepted a mean of 50.01
where the honest value was 0.01).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array

from fedinfra.aggregation.rounds import (
    AGGREGATORS,
    Reply,
    RoundSpec,
    UpdateRejected,
    aggregator_class,
    start_round,
)
from fedinfra.config import JobSpec
from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.config.wire import HE_UPDATE
from fedinfra.crypto import _sign, envelope, generate_consortium, open_sum, seal_update
from fedinfra.crypto.codec import context_for
from fedinfra.errors import CryptoError

LAYOUT = (("w", (40, 250)), ("b", (5,)))  # 10005 values: two or more ciphertexts
SITES = ["a", "b", "c"]


def _update(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, dtype=np.float32) for name, shape in LAYOUT}


def _arrays(update: dict[str, np.ndarray]) -> dict[str, Array]:
    return {k: Array(np.ascontiguousarray(v)) for k, v in update.items()}


def _spec(job: JobSpec, public: object = None) -> RoundSpec:
    return RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, he_public=public)


# -- registry ---------------------------------------------------------------------------------------


def test_every_mode_of_the_job_has_an_aggregator():
    aggregator_class(JobSpec())  # loads the built-ins

    assert {"fedavg", "compressed", "bfv", "ckks"} <= set(AGGREGATORS)
    assert aggregator_class(JobSpec()).name == "fedavg"


# -- plaintext --------------------------------------------------------------------------------------


def test_plaintext_layout_comes_from_the_model_not_the_first_reply():
    agg = start_round(_spec(JobSpec()))
    bad_first = {"w": np.zeros((7, 7), dtype=np.float32)}

    with pytest.raises(UpdateRejected) as info:
        agg.accept(Reply(site="x", weight=1.0, config={}, arrays=_arrays(bad_first)))
    agg.accept(Reply(site="a", weight=1.0, config={}, arrays=_arrays(_update(0.25))))
    agg.accept(Reply(site="b", weight=3.0, config={}, arrays=_arrays(_update(0.75))))

    assert info.value.check == "layout"
    assert agg.sites == ("a", "b")
    mean = agg.finish().mean
    assert mean is not None
    assert np.allclose(mean["w"], 0.625)
    assert mean["w"].shape == (40, 250)


@pytest.mark.parametrize(
    ("bad", "check"),
    [
        ({"w": np.full((40, 250), 9.0, np.float32), "b": np.array([1, 2, 3, 4, np.nan], np.float32)}, "finite"),
        ({"w": np.full((40, 250), 9.0, np.float32), "b": np.zeros(6, np.float32)}, "shape"),
        ({"w": np.full((40, 250), 9.0, np.float32)}, "layout"),
    ],
)
def test_a_rejected_plaintext_reply_leaves_no_trace(bad, check):
    agg = start_round(_spec(JobSpec()))
    agg.accept(Reply(site="a", weight=1.0, config={}, arrays=_arrays(_update(0.5))))

    with pytest.raises(UpdateRejected) as info:
        agg.accept(Reply(site="x", weight=1.0, config={}, arrays=_arrays(bad)))

    assert info.value.check == check
    mean = agg.finish().mean
    assert mean is not None
    assert np.all(mean["w"] == 0.5)
    assert np.all(mean["b"] == 0.5)


def test_a_zero_weight_is_rejected_naming_the_check():
    agg = start_round(_spec(JobSpec()))

    with pytest.raises(UpdateRejected) as info:
        agg.accept(Reply(site="a", weight=0.0, config={}, arrays=_arrays(_update(0.5))))

    assert info.value.check == "weight"


# -- encrypted --------------------------------------------------------------------------------------


def _kit(mode: str):
    spec = SecureAggSpec(mode=mode, clip=1.0, max_sites=3, example_cap=100)
    return generate_consortium(ConsortiumSpec(name="t", sites=SITES, secure_aggregation=spec))


@pytest.fixture(scope="module")
def bfv():
    return _kit("bfv")


@pytest.fixture(scope="module")
def ckks():
    return _kit("ckks")


def _job(mode: str) -> JobSpec:
    return JobSpec.model_validate({"secure_aggregation": {"mode": mode, "max_sites": 3, "example_cap": 100}})


def _seal(keys, update, n=100):
    return seal_update(update, n, keys, run_id="run", round_id=1)


def _resign(keys, blob: bytes, transform) -> bytes:
    """Re-encode ``blob`` with ``transform`` applied to its ciphertext list, signed by ``keys``."""
    header, blobs, _, _ = envelope.decode(blob, kind=envelope.KIND_UPDATE)
    header, blobs = transform(header, list(blobs))
    body = envelope.encode(header, blobs)
    return body + _sign.sign(keys.signing_key, envelope.digest(envelope.KIND_UPDATE, body))


def _flip_ntt(params, index: int):
    ctx = context_for(params)

    def transform(header, blobs):
        (ct,) = ctx.load_ciphertexts([blobs[index]]) if params.scheme == "bfv" else (None,)
        if ct is None:  # CKKS: load bypassing the form check to take it out of NTT form
            ct = _raw_load(ctx, blobs[index])
            ctx._evaluator.transform_from_ntt_inplace(ct)
        else:
            ctx._evaluator.transform_to_ntt_inplace(ct)
        blobs[index] = ctx.save_ciphertexts([ct])[0]
        return header, blobs

    return transform


def _raw_load(ctx, blob: bytes):
    from fedinfra.crypto._seal import _memfile, _write_all

    ct = ctx._s.Ciphertext(ctx._ctx)
    with _memfile() as (fd, path):
        _write_all(fd, blob)
        ct.load(ctx._ctx, path)
    return ct


def _open(keys, ciphertext: bytes):
    return open_sum(ciphertext, keys, run_id="run", round_id=1)


@pytest.mark.parametrize("mode", ["bfv", "ckks"])
def test_encrypted_layout_comes_from_the_model_not_the_first_reply(mode, bfv, ckks):
    public, sites = bfv if mode == "bfv" else ckks
    agg = start_round(_spec(_job(mode), public))
    wrong_model = _seal(sites["b"], {"w": np.zeros((10, 10))})

    with pytest.raises(UpdateRejected) as info:
        agg.accept(Reply(site="b", weight=1.0, config={HE_UPDATE: wrong_model}))
    agg.accept(Reply(site="a", weight=1.0, config={HE_UPDATE: _seal(sites["a"], _update(0.25))}))
    agg.accept(Reply(site="c", weight=1.0, config={HE_UPDATE: _seal(sites["c"], _update(0.75))}))

    assert info.value.check == "ciphertext"
    out = agg.finish()
    assert out.sites == ("a", "c")
    mean, total = _open(sites["a"], out.ciphertext)
    assert total == 200
    assert np.allclose(mean, 0.5, atol=1e-4)


@pytest.mark.parametrize("mode", ["bfv", "ckks"])
def test_a_ciphertext_in_the_wrong_ntt_form_leaves_no_trace_in_the_sum(mode, bfv, ckks):
    # The attack: the second ciphertext of a validly signed reply is in the other
    # form; on the old code the first ciphertext was added before the addition failed.
    public, sites = bfv if mode == "bfv" else ckks
    agg = start_round(_spec(_job(mode), public))
    agg.accept(Reply(site="a", weight=1.0, config={HE_UPDATE: _seal(sites["a"], _update(0.01))}))
    evil = _resign(sites["b"], _seal(sites["b"], _update(1.0)), _flip_ntt(public.params, 1))
    assert len(envelope.decode(evil, kind=envelope.KIND_UPDATE)[1]) >= 2

    with pytest.raises(UpdateRejected) as info:
        agg.accept(Reply(site="b", weight=1.0, config={HE_UPDATE: evil}))
    agg.accept(Reply(site="c", weight=1.0, config={HE_UPDATE: _seal(sites["c"], _update(0.01))}))

    assert info.value.check == "ciphertext"
    mean, total = _open(sites["a"], agg.finish().ciphertext)
    assert total == 200
    assert np.allclose(mean, 0.01, atol=1e-4)


def test_an_addition_that_fails_part_way_is_undone(bfv):
    # Defence in depth below the load checks: SealContext.add_inplace is all or nothing.
    public, sites = bfv
    ctx = context_for(public.params)
    _, blobs_a, _, _ = envelope.decode(_seal(sites["a"], _update(0.01)), kind=envelope.KIND_UPDATE)
    _, blobs_b, _, _ = envelope.decode(_seal(sites["b"], _update(1.0)), kind=envelope.KIND_UPDATE)
    acc = ctx.load_ciphertexts(list(blobs_a))
    before = ctx.save_ciphertexts(acc)
    bad = ctx.load_ciphertexts(list(blobs_b))
    ctx._evaluator.transform_to_ntt_inplace(bad[1])

    with pytest.raises(CryptoError):
        ctx.add_inplace(acc, bad)

    assert ctx.save_ciphertexts(acc) == before
