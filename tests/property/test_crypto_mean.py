"""Property: the decrypted packed-HE mean equals the plaintext mean within the documented bound."""

from __future__ import annotations

from functools import cache

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.crypto import EncryptedSum, generate_consortium, open_sum, seal_update

MAX_SITES = 12
CAP = 1000


@cache
def _kit(mode: str, quant_bits: int, clip: float):
    spec = SecureAggSpec(mode=mode, quant_bits=quant_bits, clip=clip, max_sites=MAX_SITES, example_cap=CAP)
    return generate_consortium(
        ConsortiumSpec(name="prop", sites=[f"s{i}" for i in range(MAX_SITES)], secure_aggregation=spec)
    )


def _mean(public, sites, updates, counts, seed):
    rng = np.random.default_rng(seed)
    agg = EncryptedSum(public, run_id="p", round_id=0)
    for i, (u, n) in enumerate(zip(updates, counts, strict=True)):
        agg.add(seal_update(u, n, sites[f"s{i}"], run_id="p", round_id=0, rng=rng))
    return open_sum(agg.to_bytes(), sites["s0"], run_id="p", round_id=0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    quant_bits=st.sampled_from([8, 12, 16, 20]),
    clip=st.sampled_from([0.01, 1.0, 50.0]),
    n_sites=st.integers(1, MAX_SITES),
    width=st.integers(1, 9000),
    counts_seed=st.integers(0, 2**32 - 1),
    spread=st.floats(0.1, 3.0),
)
def test_bfv_decrypted_mean_is_within_the_bound(quant_bits, clip, n_sites, width, counts_seed, spread):
    public, sites = _kit("bfv", quant_bits, clip)
    rng = np.random.default_rng(counts_seed)
    # Values up to spread * clip: above 1 the codec clips; the bound is to the clipped mean.
    updates = [rng.uniform(-spread * clip, spread * clip, width) for _ in range(n_sites)]
    counts = [int(c) for c in rng.integers(1, CAP + 1, n_sites)]

    mean, total = _mean(public, sites, updates, counts, counts_seed)

    clipped = [np.clip(u, -clip, clip) for u in updates]
    exact = sum(u * n for u, n in zip(clipped, counts, strict=True)) / sum(counts)
    assert total == sum(counts)
    assert np.max(np.abs(mean - exact)) <= public.params.mean_error_bound(sites=n_sites, total_examples=total)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_sites=st.integers(1, MAX_SITES),
    width=st.integers(1, 5000),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-6, 1.0, 80.0]),
)
def test_ckks_decrypted_mean_is_within_the_bound(n_sites, width, seed, scale):
    public, sites = _kit("ckks", 20, 1.0)
    rng = np.random.default_rng(seed)
    updates = [rng.uniform(-scale, scale, width) for _ in range(n_sites)]
    counts = [int(c) for c in rng.integers(1, CAP + 1, n_sites)]

    mean, total = _mean(public, sites, updates, counts, seed)

    exact = sum(u * n for u, n in zip(updates, counts, strict=True)) / sum(counts)
    assert total == sum(counts)
    assert np.max(np.abs(mean - exact)) <= public.params.mean_error_bound(sites=n_sites, total_examples=total)


def test_the_largest_sum_the_parameters_allow_decrypts_exactly():
    # Every site sends the extreme quantized value at full weight: every lane of every slot
    # holds its maximum, max_sites * (2^b - 2), and the noise of max_sites ciphertexts is at
    # its largest. The mean must still come back to the clip value.
    for quant_bits in (8, 20):
        public, sites = _kit("bfv", quant_bits, 1.0)
        for sign in (1.0, -1.0):
            updates = [np.full(20_000, sign) for _ in range(MAX_SITES)]

            mean, total = _mean(public, sites, updates, [CAP] * MAX_SITES, 0)

            assert total == CAP * MAX_SITES
            assert np.all(mean == np.float32(sign))


def test_a_hundred_extreme_replies_still_decrypt_exactly():
    # The noise bound is sized per max_sites: 100 sites give t = 46 bits, 8-bit lanes of 15 bits.
    spec = SecureAggSpec(mode="bfv", quant_bits=8, clip=1.0, max_sites=100, example_cap=1)
    names = [f"s{i}" for i in range(100)]
    public, sites = generate_consortium(ConsortiumSpec(name="big", sites=names, secure_aggregation=spec))
    agg = EncryptedSum(public, run_id="p", round_id=0)
    for name in names:
        agg.add(seal_update(np.full(12_000, -1.0), 1, sites[name], run_id="p", round_id=0))

    mean, total = open_sum(agg.to_bytes(), sites["s7"], run_id="p", round_id=0)

    assert spec.plain_bits == 46
    assert total == 100
    assert np.all(mean == np.float32(-1.0))
