"""The coordinator refuses bad encrypted updates and keeps summing the valid ones."""

from __future__ import annotations

import numpy as np
import pytest

from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.crypto import EncryptedSum, generate_consortium, open_sum, seal_update
from fedinfra.errors import CryptoError

SITES = ["a", "b", "c"]


def _kit(**spec: object) -> tuple:
    settings = {"mode": "bfv", "clip": 1.0, "max_sites": 3, "example_cap": 100, **spec}
    return generate_consortium(ConsortiumSpec(name="t", sites=SITES, secure_aggregation=SecureAggSpec(**settings)))


@pytest.fixture(scope="module")
def kit():
    return _kit()


@pytest.fixture(scope="module")
def update_a(kit):
    _, sites = kit
    return seal_update(np.full(5000, 0.5), 100, sites["a"], run_id="run", round_id=4)


def _sum(kit, round_id=4):
    return EncryptedSum(kit[0], run_id="run", round_id=round_id)


def test_a_valid_update_is_accepted_and_names_its_site(kit, update_a):
    agg = _sum(kit)

    assert agg.add(update_a) == "a"
    assert agg.sites == ("a",)


@pytest.mark.parametrize("position", [0, 10, 60, 200, 5000, -100, -1])
def test_a_flipped_bit_anywhere_is_rejected(kit, update_a, position):
    tampered = bytearray(update_a)
    tampered[position] ^= 0x01
    agg = _sum(kit)

    with pytest.raises(CryptoError, match=r"rejected|malformed"):
        agg.add(bytes(tampered))
    assert len(agg) == 0


@pytest.mark.parametrize("keep", [0, 3, 100, 20_000])
def test_a_truncated_update_is_rejected(kit, update_a, keep):
    with pytest.raises(CryptoError, match=r"malformed or truncated|rejected"):
        _sum(kit).add(update_a[:keep])


def test_a_replay_in_the_same_round_is_rejected(kit, update_a):
    agg = _sum(kit)
    agg.add(update_a)

    with pytest.raises(CryptoError, match=r"already contributed.*replay"):
        agg.add(update_a)
    assert len(agg) == 1


def test_an_update_of_an_earlier_round_is_rejected(kit, update_a):
    with pytest.raises(CryptoError, match=r"round 4.*round 5.*stale or replayed"):
        _sum(kit, round_id=5).add(update_a)


def test_an_update_from_another_kit_with_equal_settings_is_rejected(update_a):
    other = _kit()

    with pytest.raises(CryptoError, match="other HE parameters or another kit"):
        EncryptedSum(other[0], run_id="run", round_id=4).add(update_a)


def test_an_update_made_under_other_parameters_is_rejected(update_a):
    other = _kit(quant_bits=8)

    with pytest.raises(CryptoError, match="other HE parameters or another kit"):
        EncryptedSum(other[0], run_id="run", round_id=4).add(update_a)


def test_an_update_of_the_wrong_size_is_rejected(kit, update_a):
    _, sites = kit
    agg = _sum(kit)
    agg.add(update_a)

    with pytest.raises(CryptoError, match="carries 4000 values, the sum holds 5000"):
        agg.add(seal_update(np.zeros(4000), 1, sites["b"], run_id="run", round_id=4))


def test_a_site_signing_for_another_is_rejected(kit):
    # Site b holds the shared HE key but not a's signing key: it cannot pass as a.
    _, sites = kit
    b = sites["b"]
    forged_keys = type(b)(
        params=b.params, consortium=b.consortium, site_id="a", he_secret_key=b.he_secret_key, signing_key=b.signing_key
    )
    forged = seal_update(np.zeros(10), 1, forged_keys, run_id="run", round_id=4)

    with pytest.raises(CryptoError, match="signature or ciphertext invalid"):
        _sum(kit).add(forged)


def test_more_sites_than_the_parameters_were_sized_for_are_rejected():
    public, sites = _kit(max_sites=2)
    agg = EncryptedSum(public, run_id="run", round_id=0)
    for s in ("a", "b"):
        agg.add(seal_update(np.zeros(10), 1, sites[s], run_id="run", round_id=0))

    with pytest.raises(CryptoError, match="max_sites=2"):
        agg.add(seal_update(np.zeros(10), 1, sites["c"], run_id="run", round_id=0))


def test_a_rejected_reply_leaves_the_sum_of_the_valid_ones_intact(kit, update_a):
    public, sites = kit
    agg = _sum(kit)
    agg.add(update_a)
    with pytest.raises(CryptoError):
        agg.add(update_a[:-1] + bytes([update_a[-1] ^ 1]))
    agg.add(seal_update(np.full(5000, -0.5), 100, sites["c"], run_id="run", round_id=4))

    mean, total = open_sum(agg.to_bytes(), sites["b"], run_id="run", round_id=4)

    assert total == 200
    assert np.max(np.abs(mean)) <= public.params.mean_error_bound(sites=2, total_examples=200)


def test_a_corrupted_aggregate_is_rejected_by_the_site(kit, update_a):
    _, sites = kit
    agg = _sum(kit)
    agg.add(update_a)
    blob = bytearray(agg.to_bytes())
    blob[len(blob) // 2] ^= 0x80

    with pytest.raises(CryptoError, match="corrupted or truncated"):
        open_sum(bytes(blob), sites["a"], run_id="run", round_id=4)


def test_an_aggregate_of_another_round_is_rejected_by_the_site(kit, update_a):
    _, sites = kit
    agg = _sum(kit)
    agg.add(update_a)

    with pytest.raises(CryptoError, match="stale or replayed"):
        open_sum(agg.to_bytes(), sites["a"], run_id="run", round_id=5)


def test_an_update_is_not_an_aggregate(kit, update_a):
    _, sites = kit
    with pytest.raises(CryptoError):
        open_sum(update_a, sites["a"], run_id="run", round_id=4)
