"""Ed25519 signatures of encrypted updates (the HE codec's only use of ``cryptography``).

Each site signs its encrypted update (RFC 8032, Ed25519) so the coordinator, which holds
only the sites' public keys, can reject tampered, truncated or forged replies before it adds
them: BFV ciphertexts are malleable, so integrity cannot come from the encryption itself.
The signed message is a SHA-256 digest with a domain-separation label (hash-then-sign;
RFC 8032 section 5.1 signs any byte string, the digest keeps multi-megabyte updates cheap).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedinfra.errors import CryptoError

SIGNATURE_BYTES = 64
KEY_BYTES = 32


def new_signing_key() -> tuple[bytes, bytes]:
    """Return ``(private_raw, public_raw)`` of a fresh Ed25519 key pair (OS CSPRNG)."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes_raw(), key.public_key().public_bytes_raw()


def public_of(private_raw: bytes) -> bytes:
    """Return the raw public key of a raw private key."""
    return _private(private_raw).public_key().public_bytes_raw()


def sign(private_raw: bytes, digest: bytes) -> bytes:
    """Sign a 32-byte digest."""
    return _private(private_raw).sign(digest)


def verify(public_raw: bytes, digest: bytes, signature: bytes) -> None:
    """Raise :class:`CryptoError` unless ``signature`` is valid for ``digest``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, digest)
    except (InvalidSignature, ValueError) as exc:
        raise CryptoError("update rejected: signature or ciphertext invalid") from exc


def _private(private_raw: bytes) -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(private_raw)
    except ValueError as exc:
        raise CryptoError("signing key rejected: not a 32-byte Ed25519 key") from exc
