"""The plaintext aggregators (``fedinfra.aggregation.modes``): FedAvg and compressed FedAvg, case by case.

Each folds exactly the example-weighted mean of the replies it accepts, audits what it
folded by the bytes it read (the float32 tensors, or the compressed reply as sent), and
refuses a reply - weight, bytes, grid, norm - before it touches the running mean.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedinfra.aggregation.compression import UpdateCompressor, decompress, encode
from fedinfra.aggregation.digest import model_bytes
from fedinfra.aggregation.modes import CompressedAggregator, FedAvgAggregator
from fedinfra.aggregation.rounds import Reply, RoundSpec, UpdateRejected, start_round
from fedinfra.config import JobSpec
from fedinfra.config.wire import COMPRESSED_UPDATE, HE_UPDATE
from fedinfra.errors import ConfigError

LAYOUT = (("w", (2, 3)), ("b", (3,)))


def _job(*, compression: dict[str, Any] | None = None, **aggregation: object) -> JobSpec:
    doc: dict[str, Any] = {"aggregation": dict(aggregation)}
    if compression is not None:
        doc["compression"] = compression
    return JobSpec.model_validate(doc)


def _spec(job: JobSpec) -> RoundSpec:
    return RoundSpec(run_id="r", round=1, layout=LAYOUT, job=job)


def _tensors(base: float) -> dict[str, np.ndarray]:
    flat = base + 0.01 * np.arange(9, dtype=np.float32)
    return {"w": flat[:6].reshape(2, 3), "b": flat[6:]}


def _reply(site: str, tensors: dict[str, np.ndarray], weight: float = 1.0) -> Reply:
    record = ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()})
    return Reply(site=site, weight=weight, config={}, arrays=record)


def _compressed(seed: int, *, bits: int = 8, scale: float = 0.3) -> bytes:
    update = {k: v * scale for k, v in _tensors(0.1 * seed - 0.2).items()}
    return encode(UpdateCompressor(clip=1.0, bits=bits, rng=np.random.default_rng(seed)).compress(update))


def _creply(site: str, blob: object, weight: float = 1.0) -> Reply:
    return Reply(site=site, weight=weight, config={COMPRESSED_UPDATE: blob})


# -- FedAvg -----------------------------------------------------------------------------------------------


def test_fedavg_is_the_example_weighted_mean_and_audits_the_canonical_bytes() -> None:
    agg = start_round(_spec(_job()))
    assert isinstance(agg, FedAvgAggregator)
    a, b = _tensors(0.1), _tensors(0.5)

    fa = agg.accept(_reply("a", a, weight=1.0))
    fb = agg.accept(_reply("b", b, weight=3.0))
    out = agg.finish()

    assert fa.subject == ("update", hashlib.sha256(model_bytes(a)).hexdigest(), 36)
    assert fb.subject == ("update", hashlib.sha256(model_bytes(b)).hexdigest(), 36)
    assert out.sites == ("a", "b")
    assert out.mean is not None
    for name, _ in LAYOUT:
        np.testing.assert_allclose(out.mean[name], (a[name] + 3 * b[name]) / 4, rtol=1e-6)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_fedavg_refuses_a_weight_that_is_not_positive_and_finite(weight: float) -> None:
    agg = start_round(_spec(_job()))
    with pytest.raises(UpdateRejected) as info:
        agg.accept(_reply("a", _tensors(0.1), weight=weight))
    assert info.value.check == "weight"
    assert agg.count == 0


def test_fedavg_returns_the_tensors_in_the_models_order_whatever_the_replys_order() -> None:
    agg = start_round(_spec(_job()))
    t = _tensors(0.2)
    reversed_record = ArrayRecord({k: Array(np.ascontiguousarray(t[k])) for k in ("b", "w")})

    agg.accept(Reply(site="a", weight=1.0, config={}, arrays=reversed_record))
    out = agg.finish()

    assert out.mean is not None
    assert list(out.mean) == ["w", "b"]
    assert [v.shape for v in out.mean.values()] == [(2, 3), (3,)]


def test_fedavg_holds_updates_to_the_jobs_norm_bound() -> None:
    small, large = _tensors(0.01), _tensors(0.3)  # norms about 0.09 and 0.9
    agg = start_round(_spec(_job(max_update_norm=0.5)))

    agg.accept(_reply("a", small))
    with pytest.raises(UpdateRejected) as info:
        agg.accept(_reply("b", large))

    assert info.value.check == "bound"
    assert agg.finish().sites == ("a",)


# -- compressed FedAvg ------------------------------------------------------------------------------------


def test_a_compressed_job_needs_its_compression_table() -> None:
    with pytest.raises(ConfigError, match=r"^the compressed aggregator needs a \[compression\] table in the job$"):
        CompressedAggregator(_spec(_job()))


def test_compressed_fedavg_is_the_weighted_mean_of_the_decompressed_updates_on_the_jobs_grid() -> None:
    agg = start_round(_spec(_job(compression={"bits": 6, "clip": 1.0})))
    assert isinstance(agg, CompressedAggregator)
    blobs = [_compressed(seed, bits=6) for seed in range(3)]

    folded = [
        agg.accept(_creply(f"s{i}", bytearray(blob) if i == 1 else blob, weight=float(i + 1)))
        for i, blob in enumerate(blobs)
    ]
    out = agg.finish()

    for f, blob in zip(folded, blobs, strict=True):
        assert f.subject == ("update.compressed", hashlib.sha256(blob).hexdigest(), len(blob))
    updates = [decompress(blob, LAYOUT, clip=1.0, bits=6) for blob in blobs]
    assert out.sites == ("s0", "s1", "s2")
    assert out.mean is not None
    for name, _ in LAYOUT:
        want = sum((i + 1) * u[name].astype(np.float64) for i, u in enumerate(updates)) / 6
        np.testing.assert_allclose(out.mean[name], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("blob", [None, "not bytes", 12], ids=["absent", "text", "number"])
def test_compressed_fedavg_refuses_a_reply_without_compressed_bytes(blob: object) -> None:
    agg = start_round(_spec(_job(compression={"bits": 8, "clip": 1.0})))
    reply = _reply("s0", _tensors(0.1)) if blob is None else _creply("s0", blob)  # plain tensors are not read

    with pytest.raises(UpdateRejected, match=r"^reply carries no compressed update$") as info:
        agg.accept(reply)
    assert info.value.check == "missing"


def test_compressed_fedavg_refuses_another_grid_a_bad_weight_and_the_norm_bound() -> None:
    agg = start_round(_spec(_job(max_update_norm=0.5, compression={"bits": 8, "clip": 1.0})))

    with pytest.raises(UpdateRejected, match="another quantization grid"):
        agg.accept(_creply("s0", _compressed(0, bits=6)))
    with pytest.raises(UpdateRejected) as weight:
        agg.accept(_creply("s0", _compressed(0), weight=0.0))
    with pytest.raises(UpdateRejected) as bound:
        agg.accept(_creply("s0", _compressed(0, scale=3.0)))  # clipped to 1.0, above the bound 0.5
    agg.accept(_creply("s1", _compressed(1, scale=0.1)))

    assert weight.value.check == "weight"
    assert bound.value.check == "bound"
    assert agg.finish().sites == ("s1",)


# -- packed BFV (the encrypted modes share one implementation) ---------------------------------------------


@pytest.fixture(scope="module")
def bfv_kit() -> tuple[Any, dict[str, Any]]:
    from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
    from fedinfra.crypto import generate_consortium

    spec = SecureAggSpec(mode="bfv", clip=1.0, max_sites=3, example_cap=100)
    return generate_consortium(ConsortiumSpec(name="t", sites=["a", "b", "c"], secure_aggregation=spec))


def _bfv_spec(public: Any) -> RoundSpec:
    job = JobSpec.model_validate({"secure_aggregation": {"mode": "bfv", "max_sites": 3, "example_cap": 100}})
    return RoundSpec(run_id="r", round=1, layout=LAYOUT, job=job, he_public=public)


def test_an_encrypted_round_audits_the_ciphertext_as_sent_and_refuses_a_reply_without_one(
    bfv_kit: tuple[Any, dict[str, Any]],
) -> None:
    from fedinfra.crypto import seal_update

    public, sites = bfv_kit
    spec = _bfv_spec(public)
    agg = start_round(spec)
    blob = seal_update(_tensors(0.1), 10, sites["a"], run_id="r", round_id=1)

    with pytest.raises(UpdateRejected, match=r"^reply carries no encrypted update$") as info:
        agg.accept(Reply(site="b", weight=1.0, config={HE_UPDATE: "not bytes"}))
    folded = agg.accept(Reply(site="a", weight=1.0, config={HE_UPDATE: bytearray(blob)}))

    assert info.value.check == "missing"
    assert agg.spec is spec
    assert agg.hides_aggregate
    assert folded.subject == ("update.ciphertext", hashlib.sha256(blob).hexdigest(), len(blob))
    assert agg.finish().sites == ("a",)
