"""Signed app releases: a site runs a Flower App only if it approved that exact release.

Flower ships every run's app to the sites as a FAB (a zip Flower builds reproducibly, with
fixed timestamps). Whoever can submit a run decides what code the sites execute, so a site
that does not trust the coordinator must check the code itself. Flower 1.41's own switch
(``--trusted-entities``) accepts only FABs the Flower Hub vouched for, which a self-hosted,
offline consortium cannot use (``../shared/notes/flower-trust.md``).

A *release record* binds a FAB's SHA-256 digest to a consortium release key::

    {"format": "fedinfra-release/1", "app": "fedinfra/fedinfra-app", "version": "0.1.0",
     "fab_sha256": "<hex>", "signed_at": <unix s>, "key_id": "<hex 16>", "signature": "<hex>"}

``signature`` is Ed25519 (RFC 8032) over a domain label and the canonical JSON of every
other field (hash-then-sign: the digest covers the whole FAB). A site pins the release
key's public half in its kit (``[release] public_keys``) and keeps the records it approved
in ``<kit>/releases/``; a FAB runs only if its digest equals an approved record whose
signature verifies under a pinned key. An unsigned FAB, one signed by another key, a
modified FAB (another digest) or a record edited after signing all fail the same way, with
one message that does not say which check failed (STYLE.md: Fernet's ``InvalidToken``).

This module is pure: bytes and dicts in, records out; files are read by the callers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from fedinfra.crypto import _sign
from fedinfra.errors import CryptoError

RELEASE_FORMAT = "fedinfra-release/1"
_LABEL = b"fedinfra/app-release/v1\x00"
_FIELDS = ("format", "app", "version", "fab_sha256", "signed_at", "key_id")
REFUSED = "app release refused: not an approved release signed by a key this site pinned"


def key_id(public_raw: bytes) -> str:
    """Short id of a release public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def fab_digest(fab: bytes) -> str:
    """SHA-256 of a FAB, hex (the same digest Flower names the FAB by)."""
    return hashlib.sha256(fab).hexdigest()


def _message(record: Mapping[str, Any]) -> bytes:
    body = {k: record[k] for k in _FIELDS}
    return _LABEL + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_release(private_raw: bytes, fab: bytes, *, app: str, version: str, signed_at: int) -> dict[str, Any]:
    """Return the signed release record of ``fab``."""
    public = _sign.public_of(private_raw)
    record: dict[str, Any] = {
        "format": RELEASE_FORMAT,
        "app": app,
        "version": version,
        "fab_sha256": fab_digest(fab),
        "signed_at": int(signed_at),
        "key_id": key_id(public),
    }
    record["signature"] = _sign.sign(private_raw, hashlib.sha256(_message(record)).digest()).hex()
    return record


def verify_record(record: Mapping[str, Any], pinned: Iterable[bytes]) -> None:
    """Raise :class:`CryptoError` unless ``record`` is well formed and signed by a pinned key."""
    try:
        if record.get("format") != RELEASE_FORMAT:
            raise CryptoError(REFUSED)
        message = hashlib.sha256(_message(record)).digest()
        signature = bytes.fromhex(str(record["signature"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise CryptoError(REFUSED) from exc
    for public in pinned:
        if key_id(public) != record.get("key_id"):
            continue
        try:
            _sign.verify(public, message, signature)
        except CryptoError:
            continue
        return
    raise CryptoError(REFUSED)


def check_fab(fab: bytes, records: Iterable[Mapping[str, Any]], pinned: Iterable[bytes]) -> dict[str, Any]:
    """Return the approved record that covers ``fab``; raise :class:`CryptoError` if none does."""
    keys = list(pinned)
    digest = fab_digest(fab)
    for record in records:
        if record.get("fab_sha256") != digest:
            continue
        try:
            verify_record(record, keys)
        except CryptoError:
            continue
        return dict(record)
    raise CryptoError(REFUSED)


__all__ = ["REFUSED", "RELEASE_FORMAT", "check_fab", "fab_digest", "key_id", "sign_release", "verify_record"]
