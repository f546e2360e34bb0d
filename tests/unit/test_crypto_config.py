"""SecureAggSpec refuses parameters that could overflow or that SEAL rejects at 128-bit security."""

from __future__ import annotations

import doctest

import pytest
from pydantic import ValidationError

from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec, max_plain_bits
from fedinfra.crypto import quantize as quantize_module
from fedinfra.crypto._seal import SealContext
from fedinfra.errors import ConfigError


@pytest.mark.parametrize("module", [quantize_module])
def test_doctests_hold(module):
    result = doctest.testmod(module)
    assert result.attempted > 0  # a module without examples would pass vacuously (crypto.params has none)
    assert result.failed == 0


def test_doctests_of_the_spec_hold():
    from fedinfra.config import secagg

    result = doctest.testmod(secagg)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize(("sites", "bits"), [(1, 53), (10, 50), (11, 50), (12, 49), (20, 49), (100, 46), (1000, 43)])
def test_the_plaintext_modulus_follows_seals_fresh_noise_bound(sites, bits):
    assert max_plain_bits(sites) == bits


@pytest.mark.parametrize(
    ("quant_bits", "sites", "lanes"), [(20, 10, 2), (16, 10, 2), (12, 10, 3), (8, 10, 4), (20, 1000, 1)]
)
def test_lanes_per_slot_follow_the_packing_formula(quant_bits, sites, lanes):
    spec = SecureAggSpec(mode="bfv", quant_bits=quant_bits, max_sites=sites, example_cap=10)

    assert spec.lanes_per_slot == lanes


def test_a_plaintext_modulus_above_the_noise_bound_is_refused():
    with pytest.raises(ValidationError, match="exceeds the decryption-noise bound 49 for max_sites=16"):
        SecureAggSpec(mode="bfv", max_sites=16, plain_modulus_bits=50)


def test_a_lane_wider_than_the_plaintext_modulus_is_refused():
    with pytest.raises(ValidationError, match="does not fit a 20-bit plaintext modulus"):
        SecureAggSpec(mode="bfv", quant_bits=20, max_sites=4, plain_modulus_bits=20)


def test_too_many_sites_for_one_prime_are_refused():
    with pytest.raises(ValidationError, match="lower"):
        SecureAggSpec(mode="bfv", max_sites=100_000)


def test_an_example_count_that_overflows_the_count_slot_is_refused():
    with pytest.raises(ValidationError, match=r"max_sites \* example_cap .* overflows"):
        SecureAggSpec(mode="bfv", max_sites=16, plain_modulus_bits=30, quant_bits=8, example_cap=2**26)


def test_a_ckks_bound_that_could_wrap_is_refused():
    with pytest.raises(ValidationError, match="reaches the CKKS limit"):
        SecureAggSpec(mode="ckks", max_sites=1000, ckks_max_abs=1000.0)


@pytest.mark.parametrize("sites", [1, 2, 16, 100, 1000, 20_000])
def test_seal_accepts_every_valid_bfv_spec_at_128_bit_security(sites):
    spec = SecureAggSpec(mode="bfv", max_sites=sites, quant_bits=8, example_cap=1)

    ctx = SealContext("bfv", spec.plain_bits)

    assert ctx.plain_modulus.bit_length() == spec.plain_bits
    assert ctx.coeff_modulus.bit_length() == 60


def test_seal_refusal_is_translated_to_a_config_error():
    with pytest.raises(ConfigError, match="SEAL refused the bfv parameters"):
        SealContext("bfv", 61)


def test_consortium_site_ids_must_be_safe_and_unique():
    with pytest.raises(ValidationError, match="must match"):
        ConsortiumSpec(name="x", sites=["../etc"])
    with pytest.raises(ValidationError, match="unique"):
        ConsortiumSpec(name="x", sites=["a", "a"])
