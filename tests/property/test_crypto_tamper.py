"""Property: any flipped bit in an encrypted update or aggregate is detected."""

from __future__ import annotations

from functools import cache

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.crypto import EncryptedSum, generate_consortium, open_sum, seal_update
from fedinfra.errors import CryptoError


@cache
def _fixture():
    public, sites = generate_consortium(
        ConsortiumSpec(name="t", sites=["a", "b"], secure_aggregation=SecureAggSpec(mode="bfv", max_sites=2))
    )
    update = seal_update(np.linspace(-1, 1, 3000), 10, sites["a"], run_id="r", round_id=2)
    agg = EncryptedSum(public, run_id="r", round_id=2)
    agg.add(update)
    return public, sites, update, agg.to_bytes()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_flipped_bit_of_an_update_is_rejected(data):
    public, _, update, _ = _fixture()
    position = data.draw(st.integers(0, len(update) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(update)
    tampered[position] ^= 1 << bit
    agg = EncryptedSum(public, run_id="r", round_id=2)

    try:
        agg.add(bytes(tampered))
    except CryptoError:
        assert len(agg) == 0
    else:
        raise AssertionError(f"flipped bit {bit} of byte {position} was accepted")


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_flipped_bit_of_an_aggregate_is_rejected(data):
    _, sites, _, aggregate = _fixture()
    position = data.draw(st.integers(0, len(aggregate) - 1))
    tampered = bytearray(aggregate)
    tampered[position] ^= 1 << data.draw(st.integers(0, 7))

    try:
        open_sum(bytes(tampered), sites["b"], run_id="r", round_id=2)
    except CryptoError:
        pass
    else:
        raise AssertionError(f"flipped byte {position} was accepted")
