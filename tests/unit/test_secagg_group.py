"""Zero-sum evaluation masks of the shared HE key (:mod:`fedinfra.crypto.secagg.group`), by known answers.

The masks of a site are ``+PRG(k_uv)`` for every roster member ``v`` after it and
``-PRG(k_uv)`` for every one before it, each keyed by HKDF-SHA256 of the shared HE secret
and labelled with the sum's context, the roster's digest and the pair. The end-to-end
evaluation tests (test_evaluation_secure_sum.py) check that masks cancel over a roster; the
tests here pin *which* masks: a mask that still cancelled but no longer bound the context or
the roster (or a key derived under another info string) would let the coordinator reuse one
site's masked figures across sums, and no cancellation test would notice.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import numpy as np
import pytest

from fedinfra.crypto.secagg import group, prg
from fedinfra.errors import CryptoError

SECRET = b"the consortium's shared HE secret key"
CONTEXT = "run-7\x003\x00digest-of-the-model"


def _hkdf_sha256(ikm: bytes, info: bytes) -> bytes:
    """RFC 5869 with an all-zero salt and L = 32 (one block), computed with hmac alone."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _expected_mask(values: list[int], key: bytes, me: str, roster: list[str], context: str) -> list[int]:
    """The module docstring's formula, spelled out: y_u = x_u + sum_{v > u} PRG(k_uv) - sum_{v < u} PRG(k_uv)."""
    names = sorted(roster)
    digest = hashlib.sha256("\x00".join(names).encode()).hexdigest()
    out = [v % 2**64 for v in values]
    for v in names:
        if v == me:
            continue
        lo, hi = sorted((me, v))
        stream = prg.expand(key, f"evalmask\x00{context}\x00{digest}\x00{lo}\x00{hi}", len(values), 64)
        sign = -1 if v < me else 1
        out = [(x + sign * int(s)) % 2**64 for x, s in zip(out, stream, strict=True)]
    return out


def test_the_group_key_is_hkdf_sha256_of_the_he_secret_under_its_own_info() -> None:
    """Protects the key derivation: HKDF-SHA256, zero salt, info ``fedinfra/eval-mask/v1`` (RFC 5869)."""
    assert group.group_key(SECRET) == _hkdf_sha256(SECRET, b"fedinfra/eval-mask/v1")
    assert group.group_key(SECRET) != _hkdf_sha256(SECRET, b"")


def test_the_roster_digest_is_sha256_of_the_sorted_nul_separated_names() -> None:
    """Protects the roster binding: the digest is of the sorted names joined by NUL, whatever the order given."""
    expected = hashlib.sha256(b"alpha\x00beta\x00gamma").hexdigest()

    assert group.roster_digest(["gamma", "alpha", "beta"]) == expected
    assert group.roster_digest(["beta", "alpha"]) == hashlib.sha256(b"alpha\x00beta").hexdigest()


@pytest.mark.parametrize("me", ["a", "b", "c"])
def test_each_sites_mask_is_the_documented_sum_of_pairwise_streams(me: str) -> None:
    """Protects the labels and signs: context, roster digest and the ordered pair label each stream; later sites add."""
    key = group.group_key(SECRET)
    values = [5, 0, 2**64 - 1]
    roster = ["c", "a", "b"]

    got = group.mask(np.array(values, dtype=np.uint64), key, context=CONTEXT, me=me, roster=roster, floor=3)

    assert got.dtype == np.uint64
    assert got.tolist() == _expected_mask(values, key, me, roster, CONTEXT)


def test_a_mask_binds_the_context_and_the_roster() -> None:
    """Protects against reusing one site's masked figures: another context or roster gives another mask."""
    key = group.group_key(SECRET)
    values = np.array([1, 2], dtype=np.uint64)

    base = group.mask(values, key, context=CONTEXT, me="a", roster=["a", "b"], floor=2)
    other_context = group.mask(values, key, context=CONTEXT + "x", me="a", roster=["a", "b"], floor=2)
    b_alone = group.mask(values, key, context=CONTEXT, me="b", roster=["a", "b"], floor=2)
    wider = {me: group.mask(values, key, context=CONTEXT, me=me, roster=["a", "b", "c"], floor=2) for me in "abc"}

    assert base.tolist() != other_context.tolist()
    assert (base + b_alone).tolist() == [2, 4]  # uint64: modulo 2^64
    assert (wider["a"] + wider["b"] + wider["c"]).tolist() == [3, 6]
    # a's masked figures for the two-site roster do not stand in for its three-site ones.
    assert (base + wider["b"] + wider["c"]).tolist() != [3, 6]


def test_masking_leaves_the_callers_values_untouched_and_coerces_to_uint64() -> None:
    """Protects the copy: the site's own sums must not be overwritten by their masked form."""
    key = group.group_key(SECRET)
    values = np.array([7, 8, 9], dtype=np.uint64)

    masked = group.mask(values, key, context=CONTEXT, me="a", roster=["a", "b"], floor=2)
    from_ints = group.mask([7, 8, 9], key, context=CONTEXT, me="a", roster=["a", "b"], floor=2)  # type: ignore[arg-type]

    assert values.tolist() == [7, 8, 9]
    assert masked.tolist() != [7, 8, 9]
    assert from_ints.dtype == np.uint64
    assert from_ints.tolist() == masked.tolist()


def test_a_roster_naming_a_site_twice_is_refused() -> None:
    """Protects against a roster that double-counts one site (its masks would not cancel, or one would cancel twice)."""
    key = group.group_key(SECRET)

    with pytest.raises(CryptoError, match=r"^evaluation roster names a site twice$"):
        group.mask(np.zeros(1, dtype=np.uint64), key, context=CONTEXT, me="a", roster=["a", "b", "a"], floor=2)


def test_the_floor_is_the_larger_of_two_and_the_contributor_floor() -> None:
    """Protects the contributor floor: a roster below ``max(2, floor)`` is refused naming both numbers."""
    key = group.group_key(SECRET)
    zeros = np.zeros(1, dtype=np.uint64)

    with pytest.raises(CryptoError, match=r"^evaluation roster of 2 sites, fewer than the floor 3$"):
        group.mask(zeros, key, context=CONTEXT, me="a", roster=["a", "b"], floor=3)
    with pytest.raises(CryptoError, match=r"^evaluation roster of 1 sites, fewer than the floor 2$"):
        group.mask(zeros, key, context=CONTEXT, me="a", roster=["a"], floor=0)
    assert group.mask(zeros, key, context=CONTEXT, me="a", roster=["a", "b", "c"], floor=3).shape == (1,)


def test_a_roster_without_this_site_is_refused_by_name() -> None:
    """Protects against masking for a sum the site is not part of."""
    key = group.group_key(SECRET)

    with pytest.raises(CryptoError, match=r"^evaluation roster does not name this site$"):
        group.mask(np.zeros(1, dtype=np.uint64), key, context=CONTEXT, me="a", roster=["b", "c"], floor=2)


def test_the_wire_form_is_little_endian_whatever_the_input_byte_order() -> None:
    """Protects the wire form both ends agree on: 8 little-endian bytes per value."""
    values = np.array([1, 2**63 + 5], dtype=">u8")

    assert group.to_wire(values) == struct.pack("<QQ", 1, 2**63 + 5)


def test_the_group_sum_refuses_a_stranger_and_a_repeat_and_keeps_its_state() -> None:
    """Protects the coordinator's sum: a site outside the roster, or one already in, is refused and changes nothing."""
    total = group.GroupSum(["b", "a"], 1)
    total.add("a", struct.pack("<Q", 2**64 - 1))

    with pytest.raises(CryptoError, match=r"^masked evaluation from a site outside the roster, or twice$"):
        total.add("c", struct.pack("<Q", 1))
    with pytest.raises(CryptoError, match=r"^masked evaluation from a site outside the roster, or twice$"):
        total.add("a", struct.pack("<Q", 1))
    assert total.total() is None
    total.add("b", struct.pack("<Q", 3))
    assert total.roster == ["a", "b"]
    released = total.total()
    assert released is not None
    assert released.tolist() == [2]  # (2^64 - 1) + 3 modulo 2^64


@pytest.mark.parametrize("size", [15, 17, 0])
def test_the_group_sum_refuses_a_vector_of_the_wrong_length_naming_both_lengths(size: int) -> None:
    """Protects the length check: the refusal names the bytes received and the 8 bytes per value expected."""
    total = group.GroupSum(["a", "b"], 2)

    with pytest.raises(CryptoError, match=rf"^masked evaluation of {size} bytes, expected 16$"):
        total.add("a", bytes(size))
    total.add("a", bytes(16))  # the refused blob did not count the site in
