"""What a coordinator allocates to fold one reply and finish a round, traced (issue 17).

A 10M-parameter model's coordinator must stay within 2x the model's float32 size plus
200 MB (``bench/big_model.py``). These tests bound the Python-traced allocations of each
step in multiples of one update, deterministically (``tracemalloc``, not RSS): each names
the model-sized copy the old code made.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array

from fedinfra.aggregation.rounds import _CHECK_SLICE, Reply, RoundSpec, start_round
from fedinfra.config import JobSpec

#: A 4 MB model: a matrix and a bias.
LAYOUT = (("fc.weight", (1000, 1000)), ("fc.bias", (1000,)))
MODEL_BYTES = 4 * (1000 * 1000 + 1000)


def _peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak traced bytes allocated while ``fn`` runs (above what was allocated before)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return tracemalloc.get_traced_memory()[1] - base, out
    finally:
        tracemalloc.stop()


def _reply(site: str, value: float) -> Reply:
    rng = np.random.default_rng(int(value * 100))
    update = {n: (rng.normal(0, 0.01, s) + value).astype(np.float32) for n, s in LAYOUT}
    return Reply(site=site, weight=10.0, config={}, arrays={n: Array(v) for n, v in update.items()})


def test_a_plaintext_fold_hashes_its_audit_subject_without_copying_the_update() -> None:
    """Allowed: the norm check's float64 slice (2 MiB). The old code joined the update's bytes: 2x one update more."""
    job = JobSpec.model_validate({"sites": {"count": 3}})
    agg = start_round(RoundSpec(run_id="r", round=1, layout=LAYOUT, job=job, sites=("a", "b", "c")))
    agg.accept(_reply("a", 0.1))  # imports scipy's BLAS on first use: not the fold's own cost
    second = _reply("b", 0.2)
    canonical = b"".join(np.asarray(second.arrays[n].numpy()).tobytes() for n in sorted(dict(LAYOUT)))  # type: ignore[index]

    peak, folded = _peak(lambda: agg.accept(second))

    assert peak < 8 * _CHECK_SLICE + 0.1 * MODEL_BYTES
    assert folded.subject == ("update", hashlib.sha256(canonical).hexdigest(), len(canonical))


# -- packed BFV: the coordinator's fold and the aggregate it serializes ---------------------------


@pytest.fixture(scope="module")
def bfv_round(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[bytes]]:
    """A BFV coordinator kit and two sites' signed updates of 300,000 values."""
    from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
    from fedinfra.crypto import seal_update
    from fedinfra.crypto.kits import build_kits, load_coordinator_kit, load_site_kit, write_kits

    kits = tmp_path_factory.mktemp("kits")
    spec = SecureAggSpec(mode="bfv", quant_bits=20, clip=0.05, max_sites=4, example_cap=100)
    write_kits(build_kits(ConsortiumSpec(name="t", sites=["a", "b"], secure_aggregation=spec)), kits)
    values = np.full(300_000, 0.01)
    updates = [
        seal_update(values, 50, load_site_kit(kits / "sites" / s), run_id="r", round_id=1) for s in ("a", "b")
    ]
    return load_coordinator_kit(kits / "coordinator"), updates


def test_an_encrypted_fold_reads_the_ciphertexts_where_they_are(bfv_round: tuple[Any, list[bytes]]) -> None:
    """``envelope.decode`` copied every ciphertext out of the reply: one whole update traced."""
    from fedinfra.crypto import EncryptedSum

    public, (first, second) = bfv_round
    total = EncryptedSum(public, run_id="r", round_id=1)
    total.add(first)

    peak, site = _peak(lambda: total.add(second))

    assert site == "b"
    assert peak < 0.1 * len(second)


def test_the_encrypted_aggregate_is_serialized_once(bfv_round: tuple[Any, list[bytes]]) -> None:
    """The old code held it twice at its peak (the saved list and their join; then body and body + digest)."""
    from fedinfra.crypto import EncryptedSum, envelope

    public, updates = bfv_round
    total = EncryptedSum(public, run_id="r", round_id=1)
    for update in updates:
        total.add(update)

    peak, aggregate = _peak(total.to_bytes)

    assert peak < 1.3 * len(aggregate)
    header, blobs, prefix, trailer = envelope.decode(aggregate, kind=envelope.KIND_AGGREGATE)
    assert header.sites == ("a", "b")
    assert len(blobs) == public.params.ciphertext_count(300_000)
    assert trailer == envelope.digest(envelope.KIND_AGGREGATE, prefix)


# -- secagg: the coordinator's unmasking and decoding ------------------------------------------------

N_SECAGG = 2_000_000


def test_secagg_unmasks_the_running_sum_in_place_and_decodes_it_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code: a uint64 copy of the uint32 sum (2x it) to unmask, a float64 copy (2x) and float32 (1x) to decode."""
    from fedinfra.config.secagg import SecureAggSpec
    from fedinfra.crypto.secagg import codec, local, plan
    from fedinfra.crypto.secagg.protocol import Unmasker

    spec = SecureAggSpec(mode="secagg", quant_bits=20, clip=0.05, max_sites=3, example_cap=100)
    rng = np.random.default_rng(3)
    values = {s: rng.normal(0, 0.01, N_SECAGG) for s in ("a", "b", "c")}
    inputs = {s: codec.encode(v, 50, spec, np.random.default_rng(i)) for i, (s, v) in enumerate(values.items())}
    finish_peaks: list[int] = []

    class Traced(Unmasker):
        def finish(self, responses: Any) -> Any:
            peak, out = _peak(lambda: Unmasker.finish(self, responses))
            finish_peaks.append(peak)
            return out

    monkeypatch.setattr(local, "Unmasker", Traced)
    total = local.run_round(
        plan(3, max_dropouts=0, max_colluders=0, min_contributors=2), inputs, codec.widths(spec)
    )
    decode_peak, (mean, examples, sites) = _peak(lambda: codec.decode(total, spec))

    sum_bytes = 4 * N_SECAGG  # the uint32 running sum
    assert finish_peaks[0] < 0.25 * sum_bytes
    assert decode_peak < 1.5 * sum_bytes  # the float32 mean (1x) and a float64 slice (2 MiB)
    assert (examples, sites) == (150, 3)
    expected = sum(np.clip(v, -0.05, 0.05) for v in values.values()) / 3
    assert float(np.max(np.abs(mean - expected))) < 3 * 0.05 / 2**19


# -- the instructions of a wave ----------------------------------------------------------------------


def test_a_waves_instructions_share_one_serialized_model_in_records_of_their_own() -> None:
    """The old ``_payload`` serialized the model once per site: ten sites, ten model copies alive."""
    from fedinfra.coordinator.persist import RunState
    from fedinfra.coordinator.server import _Outgoing

    rng = np.random.default_rng(0)
    weights = {n: rng.normal(0, 1, s).astype(np.float32) for n, s in LAYOUT}
    outgoing, state = _Outgoing(), RunState(round=3, weights=weights)

    peak, records = _peak(lambda: [outgoing.model(state) for _ in range(10)])

    assert peak < 2.5 * MODEL_BYTES  # one serialization (Flower's Array: np.save into a buffer, then its bytes)
    assert all(r["fc.weight"].data is records[0]["fc.weight"].data for r in records)
    assert records[0] is not records[1]
    assert records[0]["fc.weight"] is not records[1]["fc.weight"]
    assert np.array_equal(records[1]["fc.weight"].numpy(), weights["fc.weight"])
    state.round, state.weights = 4, {n: v + 1 for n, v in weights.items()}
    assert np.array_equal(outgoing.model(state)["fc.bias"].numpy(), weights["fc.bias"] + 1)
