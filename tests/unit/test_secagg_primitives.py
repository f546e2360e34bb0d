"""X25519 agreement and the share channel of :mod:`fedinfra.crypto.secagg._primitives`, by known answers.

The keystream and HKDF are checked against NIST SP 800-38A and RFC 5869 in test_secagg_prg.py
and test_secagg_crypto.py; here the key agreement is checked against RFC 7748 section 6.1
(both directions), and every refusal of a malformed key or a misdirected share against the
message the protocol surfaces (the share channel's refusal is what a site reports when the
coordinator hands it someone else's share).
"""

from __future__ import annotations

import pytest

from fedinfra.crypto.secagg import _primitives
from fedinfra.errors import CryptoError

# RFC 7748, section 6.1.
ALICE_SK = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PK = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SK = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PK = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

BAD_PRIVATE = r"^secure aggregation: not an X25519 private key$"
BAD_PUBLIC = r"^secure aggregation: invalid X25519 public key$"
REJECTED = r"^secure aggregation: share rejected \(not sealed for this site, run and round\)$"


def test_x25519_public_keys_and_agreement_match_rfc_7748_section_6_1() -> None:
    """Protects the pairwise seeds: X25519 public keys and shared secret equal RFC 7748's, both directions."""
    assert _primitives.public_of(ALICE_SK) == ALICE_PK
    assert _primitives.public_of(BOB_SK) == BOB_PK
    assert _primitives.agree(ALICE_SK, BOB_PK) == SHARED
    assert _primitives.agree(BOB_SK, ALICE_PK) == SHARED


def test_a_fresh_keypair_is_a_matching_raw_x25519_pair() -> None:
    """Protects key generation: 32 raw bytes each, the public half is the private's, and two pairs differ."""
    sk, pk = _primitives.new_keypair()
    sk2, pk2 = _primitives.new_keypair()

    assert (len(sk), len(pk)) == (32, 32)
    assert _primitives.public_of(sk) == pk
    assert sk != sk2
    assert pk != pk2
    assert _primitives.agree(sk, pk2) == _primitives.agree(sk2, pk)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_a_private_key_of_the_wrong_size_is_refused_by_name(size: int) -> None:
    """Protects against a truncated or padded private key: refused as not an X25519 key, not a ValueError."""
    with pytest.raises(CryptoError, match=BAD_PRIVATE):
        _primitives.public_of(bytes(range(size)))


@pytest.mark.parametrize("peer", [bytes(31), bytes(33), bytes(32)], ids=["short", "long", "low-order"])
def test_a_malformed_or_low_order_peer_key_is_refused_by_name(peer: bytes) -> None:
    """Protects the agreement: a wrong-size key, or the all-zero low-order point (RFC 7748 section 6.1), is refused."""
    with pytest.raises(CryptoError, match=BAD_PUBLIC):
        _primitives.agree(ALICE_SK, peer)


def test_a_sealed_share_opens_only_with_its_key_and_associated_data() -> None:
    """Protects the share channel: the tag binds key and AAD (sender, recipient, run, round); a forgery is refused."""
    key = _primitives.hkdf(SHARED, b"share channel")
    aad = b"s1\x00s2\x00run\x001"
    sealed = _primitives.seal(key, b"a shamir share", aad)

    assert len(sealed) == len(b"a shamir share") + 16  # Poly1305 tag
    assert b"a shamir share" not in sealed
    assert _primitives.open_sealed(key, sealed, aad) == b"a shamir share"
    with pytest.raises(CryptoError, match=REJECTED):
        _primitives.open_sealed(key, sealed, b"s1\x00s3\x00run\x001")
    with pytest.raises(CryptoError, match=REJECTED):
        _primitives.open_sealed(_primitives.hkdf(SHARED, b"another channel"), sealed, aad)
    with pytest.raises(CryptoError, match=REJECTED):
        _primitives.open_sealed(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad)
