"""Packed BFV and CKKS: encrypt at sites, add at the coordinator, decrypt the weighted mean."""

from __future__ import annotations

import numpy as np
import pytest

from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.crypto import EncryptedSum, generate_consortium, open_sum, seal_update, unflatten
from fedinfra.errors import ConfigError

SITES = ["a", "b", "c", "d"]


def _consortium(**spec: object) -> tuple:
    settings = {"mode": "bfv", "clip": 1.0, "max_sites": 4, "example_cap": 1000, **spec}
    return generate_consortium(ConsortiumSpec(name="test", sites=SITES, secure_aggregation=SecureAggSpec(**settings)))


@pytest.fixture(scope="module")
def bfv():
    return _consortium()


@pytest.fixture(scope="module")
def ckks():
    return _consortium(mode="ckks", ckks_max_abs=100.0)


def _round(public, sites, updates, counts, *, round_id=1, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    agg = EncryptedSum(public, run_id="run-1", round_id=round_id)
    for site, update, n in zip(sites, updates, counts, strict=True):
        agg.add(seal_update(update, n, sites[site], run_id="run-1", round_id=round_id, rng=rng))
    return agg.to_bytes()


def _exact(updates, counts):
    total = sum(counts)
    return sum(np.asarray(u, dtype=np.float64) * n for u, n in zip(updates, counts, strict=True)) / total


def test_bfv_weighted_mean_is_within_the_documented_bound(bfv):
    public, sites = bfv
    rng = np.random.default_rng(1)
    updates = [rng.uniform(-1, 1, 10_000) for _ in SITES]
    counts = [10, 250, 999, 1]

    mean, total = open_sum(_round(public, sites, updates, counts), sites["b"], run_id="run-1", round_id=1)

    assert total == sum(counts)
    assert mean.dtype == np.float32
    bound = public.params.mean_error_bound(sites=4, total_examples=total)
    assert np.max(np.abs(mean - _exact(updates, counts))) <= bound


def test_ckks_weighted_mean_is_within_the_documented_bound(ckks):
    public, sites = ckks
    rng = np.random.default_rng(2)
    updates = [rng.uniform(-100, 100, 5001) for _ in SITES]
    counts = [3, 700, 50, 1000]

    mean, total = open_sum(_round(public, sites, updates, counts), sites["a"], run_id="run-1", round_id=1)

    assert total == sum(counts)
    exact = _exact(updates, counts)
    assert np.max(np.abs(mean - exact)) <= public.params.mean_error_bound(sites=4, total_examples=total)
    assert np.max(np.abs(mean - exact)) <= 1e-5  # float32 rounding dominates (CKKS error ~1e-12)


def test_dropouts_leave_the_mean_of_whoever_replied(bfv):
    public, sites = bfv
    updates = [np.full(100, 0.5), np.full(100, -0.25)]
    replied = {"a": sites["a"], "c": sites["c"]}

    mean, total = open_sum(_round(public, replied, updates, [100, 300]), sites["d"], run_id="run-1", round_id=1)

    assert total == 400
    assert np.allclose(mean, (0.5 * 100 - 0.25 * 300) / 400, atol=1e-5)


def test_named_tensors_round_trip_through_unflatten(bfv):
    public, sites = bfv
    update = {"w": np.full((3, 4), 0.25, dtype=np.float32), "b": np.array([-0.5, 0.75], dtype=np.float32)}
    layout = [("w", (3, 4)), ("b", (2,))]

    mean, _ = open_sum(_round(public, {"a": sites["a"]}, [update], [1000]), sites["a"], run_id="run-1", round_id=1)
    named = unflatten(mean, layout)

    assert named["w"].shape == (3, 4)
    assert np.allclose(named["w"], 0.25, atol=1e-5)
    assert np.allclose(named["b"], [-0.5, 0.75], atol=1e-5)


def test_values_above_the_clip_bound_are_clipped_by_default(bfv):
    public, sites = bfv
    mean, _ = open_sum(
        _round(public, {"a": sites["a"]}, [np.array([5.0, -7.0, 0.5])], [1000]),
        sites["a"],
        run_id="run-1",
        round_id=1,
    )

    assert np.allclose(mean, [1.0, -1.0, 0.5], atol=1e-5)


def test_values_above_the_clip_bound_are_refused_in_reject_mode(bfv):
    _, sites = bfv
    with pytest.raises(ConfigError, match=r"exceeds secure_aggregation.clip=1"):
        seal_update(np.array([1.5]), 1, sites["a"], run_id="r", round_id=0, over_clip="reject")


def test_ckks_refuses_values_beyond_its_bound_instead_of_wrapping(ckks):
    _, sites = ckks
    with pytest.raises(ConfigError, match=r"ckks_max_abs=100"):
        seal_update(np.array([101.0]), 1, sites["a"], run_id="r", round_id=0)


@pytest.mark.parametrize("count", [0, -3, 1001])
def test_example_counts_outside_the_cap_are_refused(bfv, count):
    _, sites = bfv
    with pytest.raises(ConfigError, match=r"example_cap=1000"):
        seal_update(np.zeros(3), count, sites["a"], run_id="r", round_id=0)


def test_non_finite_updates_are_refused(bfv):
    _, sites = bfv
    with pytest.raises(ConfigError, match="NaN or infinity"):
        seal_update(np.array([0.1, np.nan]), 1, sites["a"], run_id="r", round_id=0)


def test_an_already_noised_update_is_accepted_and_its_mean_recovered(bfv):
    # Distributed DP: the privacy library adds noise before quantization; the codec only
    # sees a float vector (here noise of std 0.1 around 0.2).
    public, sites = bfv
    rng = np.random.default_rng(5)
    noised = [0.2 + rng.normal(0, 0.1, 2000) for _ in SITES]

    mean, total = open_sum(_round(public, sites, noised, [1000] * 4), sites["a"], run_id="run-1", round_id=1)

    assert np.max(np.abs(mean - _exact(noised, [1000] * 4))) <= public.params.mean_error_bound(
        sites=4, total_examples=total
    )


def test_a_full_update_costs_about_four_bytes_per_parameter_at_20_bits(bfv):
    _, sites = bfv
    blob = seal_update(np.zeros(40_000), 1, sites["a"], run_id="r", round_id=0)

    assert len(blob) / 40_000 < 4.2


def test_encryption_is_randomized(bfv):
    _, sites = bfv
    one = seal_update(np.zeros(10), 1, sites["a"], run_id="r", round_id=0, rng=np.random.default_rng(0))
    two = seal_update(np.zeros(10), 1, sites["a"], run_id="r", round_id=0, rng=np.random.default_rng(0))

    assert one != two
