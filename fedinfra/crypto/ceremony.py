"""Keys born where they are used: key requests and the HE secret key sealed to sites.

The old ``keys init`` generated every site's secrets on the operator's host, so the
coordinator's operator could decrypt every update and speak as any site. The ceremony
here keeps each secret where it is used:

1. ``keys request`` (each site): a SuperNode key (EC P-384, what Flower authenticates),
   an update-signing key (Ed25519, RFC 8032) and a key-agreement key (X25519, RFC 7748).
   The request holds the three *public* keys, signed with the new signing key (proof of
   possession, as a PKCS#10 request is signed by its subject key, RFC 2986 section 3).
2. ``keys issue`` (operator): turns requests into the consortium's kits; it never sees a
   site secret.
3. The HE secret key is made by one site and sent to each other site *sealed* with HPKE
   (RFC 9180, base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) to that
   site's X25519 key, with the consortium, the HE parameter id and both site names bound
   in HPKE's ``info``, and signed by the sender's signing key: the coordinator relays the
   envelopes and can neither open one nor substitute a key of its own.

What the operator still controls is the directory of public keys it hands out; sites
compare each other's request fingerprints out of band (:func:`fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedinfra.crypto import _sign
from fedinfra.crypto.tls import generate_node_auth_key
from fedinfra.errors import CryptoError

REQUEST_FORMAT = "fedinfra-key-request/1"
SEALED_FORMAT = "fedinfra-sealed-he-key/1"
_REQUEST_LABEL = b"fedinfra/key-request/v1\x00"
_SEAL_LABEL = b"fedinfra/he-key/v1\x00"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_REQUEST_FIELDS = ("format", "site", "consortium", "node_public_key", "signing_public_key", "kex_public_key")
SEAL_REFUSED = "sealed HE key rejected: not from the named site, not for this site, or altered"


#: Request fields signed and fingerprinted when present (older requests lack them).
_OPTIONAL_FIELDS = ("cosigner_public_key",)


def _canonical(doc: Mapping[str, Any], fields: tuple[str, ...]) -> bytes:
    signed = {k: doc[k] for k in fields}
    if fields == _REQUEST_FIELDS:
        signed.update({k: doc[k] for k in _OPTIONAL_FIELDS if k in doc})
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()


def make_request(
    site: str, consortium: str, *, cosigner_public_key: str = ""
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A site's key request (public keys only) and its secrets ``{file name: bytes}``.

    ``cosigner_public_key`` (the site's C2SP tlog-cosignature key text, made by the caller)
    is signed with the rest, so ``keys issue`` can pin it in the coordinator kit.
    """
    node = generate_node_auth_key()
    signing, signing_public = _sign.new_signing_key()
    kex = X25519PrivateKey.generate()
    doc: dict[str, Any] = {
        "format": REQUEST_FORMAT,
        "site": site,
        "consortium": consortium,
        "node_public_key": node.public.decode().strip(),
        "signing_public_key": signing_public.hex(),
        "kex_public_key": kex.public_key().public_bytes_raw().hex(),
    }
    if cosigner_public_key:
        doc["cosigner_public_key"] = cosigner_public_key
    digest = hashlib.sha256(_REQUEST_LABEL + _canonical(doc, _REQUEST_FIELDS)).digest()
    doc["signature"] = _sign.sign(signing, digest).hex()
    secrets = {
        "supernode_auth.key": node.private,
        "supernode_auth.pub": node.public,
        "update_signing.key": signing,
        "kex.key": kex.private_bytes_raw(),
    }
    return doc, secrets


def verify_request(doc: Mapping[str, Any]) -> None:
    """Raise :class:`CryptoError` unless ``doc`` is a well-formed request signed by its own key."""
    try:
        if doc.get("format") != REQUEST_FORMAT:
            raise CryptoError("key request rejected: not a fedinfra key request")
        message = hashlib.sha256(_REQUEST_LABEL + _canonical(doc, _REQUEST_FIELDS)).digest()
        public = bytes.fromhex(str(doc["signing_public_key"]))
        _sign.verify(public, message, bytes.fromhex(str(doc["signature"])))
        if len(bytes.fromhex(str(doc["kex_public_key"]))) != 32:
            raise CryptoError("key request rejected: bad key-agreement key")
    except (KeyError, ValueError, TypeError) as exc:
        raise CryptoError("key request rejected: malformed or not signed by its own key") from exc


def fingerprint(doc: Mapping[str, Any]) -> str:
    """SHA-256 over the request's public keys: what sites compare out of band."""
    return hashlib.sha256(_canonical(doc, _REQUEST_FIELDS)).hexdigest()


def kex_public(private_raw: bytes) -> bytes:
    """The X25519 public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private_raw).public_key().public_bytes_raw()


def _info(consortium: str, param_id: str, sender: str, recipient: str) -> bytes:
    ctx = {"consortium": consortium, "param_id": param_id, "from": sender, "to": recipient}
    return _SEAL_LABEL + json.dumps(ctx, sort_keys=True, separators=(",", ":")).encode()


def seal_he_key(
    he_secret: bytes,
    *,
    consortium: str,
    param_id: str,
    sender: str,
    sender_signing_key: bytes,
    recipient: str,
    recipient_kex_public: bytes,
) -> dict[str, Any]:
    """Encrypt ``he_secret`` to ``recipient``'s X25519 key (HPKE) and sign the envelope."""
    info = _info(consortium, param_id, sender, recipient)
    enc = _SUITE.encrypt(he_secret, X25519PublicKey.from_public_bytes(recipient_kex_public), info=info)
    signature = _sign.sign(sender_signing_key, hashlib.sha256(info + enc).digest())
    return {
        "format": SEALED_FORMAT,
        "consortium": consortium,
        "param_id": param_id,
        "from": sender,
        "to": recipient,
        "ciphertext": enc.hex(),
        "signature": signature.hex(),
    }


def open_he_key(
    envelope: Mapping[str, Any],
    *,
    consortium: str,
    param_id: str,
    me: str,
    kex_private: bytes,
    sender_signing_public: Mapping[str, bytes],
) -> bytes:
    """Open an envelope sealed to ``me``; the sender's signature must verify first."""
    try:
        if envelope.get("format") != SEALED_FORMAT or envelope.get("to") != me:
            raise CryptoError(SEAL_REFUSED)
        sender = str(envelope["from"])
        info = _info(consortium, param_id, sender, me)
        enc = bytes.fromhex(str(envelope["ciphertext"]))
        public = sender_signing_public.get(sender)
        if public is None or sender == me:
            raise CryptoError(SEAL_REFUSED)
        _sign.verify(public, hashlib.sha256(info + enc).digest(), bytes.fromhex(str(envelope["signature"])))
        return _SUITE.decrypt(enc, X25519PrivateKey.from_private_bytes(kex_private), info=info)
    except CryptoError:
        raise
    except Exception as exc:  # InvalidTag, ValueError, KeyError: one message, no oracle
        raise CryptoError(SEAL_REFUSED) from exc


__all__ = [
    "REQUEST_FORMAT",
    "SEALED_FORMAT",
    "SEAL_REFUSED",
    "fingerprint",
    "kex_public",
    "make_request",
    "open_he_key",
    "seal_he_key",
    "verify_request",
]
