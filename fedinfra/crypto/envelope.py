"""The wire format of encrypted updates and aggregates (pure, no SEAL).

All integers big-endian::

    magic "FIHE" | version u8 | kind u8 (1 update, 2 aggregate) | scheme u8 (1 bfv, 2 ckks)
    param_id 32 | run_id (u16 length + UTF-8) | round u64 | n_values u64 | layout 32
    nonce 16 | site count u32 | site ids (u16 length + UTF-8 each)
    ciphertext count u32 | ciphertexts (u32 length + SEAL serialization each)
    trailer: update -> Ed25519 signature (64) over D; aggregate -> D (32)
    where D = SHA-256(label || everything before the trailer)

The header binds each ciphertext to its kit (``param_id``), run, round, site and a fresh
nonce: a reply from another kit, an earlier round or run, or a second copy is detected
from the header alone, and the site's signature covers header and ciphertexts together.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from fedinfra.errors import CryptoError

MAGIC = b"FIHE"
VERSION = 1
KIND_UPDATE = 1
KIND_AGGREGATE = 2
SCHEME_CODES = {"bfv": 1, "ckks": 2}
SCHEME_NAMES = {v: k for k, v in SCHEME_CODES.items()}
LABELS = {KIND_UPDATE: b"fedinfra/he-update/v1\x00", KIND_AGGREGATE: b"fedinfra/he-aggregate/v1\x00"}
TRAILER_BYTES = {KIND_UPDATE: 64, KIND_AGGREGATE: 32}
NONCE_BYTES = 16
MAX_ID_BYTES = 256
MAX_SITES = 100_000
MAX_CIPHERTEXTS = 1 << 20

MALFORMED = "encrypted message malformed or truncated; it was not produced by a fedinfra kit"


@dataclass(frozen=True)
class Header:
    """Public metadata of one encrypted update or aggregate."""

    kind: int
    scheme: str
    param_id: bytes
    run_id: str
    round_id: int
    n_values: int
    layout: bytes
    nonce: bytes
    sites: tuple[str, ...]


def layout_digest(layout: list[tuple[str, tuple[int, ...]]]) -> bytes:
    """SHA-256 of a tensor layout (names and shapes, in order)."""
    text = json.dumps([[name, list(shape)] for name, shape in layout], separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


def _str(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > MAX_ID_BYTES:
        raise CryptoError(f"identifier longer than {MAX_ID_BYTES} bytes")
    return struct.pack(">H", len(raw)) + raw


def encode(header: Header, blobs: list[bytes]) -> bytes:
    """Serialize header and ciphertexts (without the trailer)."""
    out = io.BytesIO()
    write(out, header, blobs, count=len(blobs))
    return out.getvalue()


def write(out: BinaryIO, header: Header, blobs: Iterable[bytes | memoryview], *, count: int) -> None:
    """Write what :func:`encode` returns to ``out``, taking the ``count`` ciphertexts one at a time.

    A caller that produces ciphertexts one by one (a sum being serialized) never holds
    them all as separate ``bytes`` next to the joined message (issue 17: 80 MB for a
    10M-parameter aggregate). Raises :class:`CryptoError` if ``blobs`` yields another number.
    """
    out.write(MAGIC)
    out.write(struct.pack(">BBB", VERSION, header.kind, SCHEME_CODES[header.scheme]))
    out.write(header.param_id)
    out.write(_str(header.run_id))
    out.write(struct.pack(">QQ", header.round_id, header.n_values))
    out.write(header.layout)
    out.write(header.nonce)
    out.write(struct.pack(">I", len(header.sites)))
    for site in header.sites:
        out.write(_str(site))
    out.write(struct.pack(">I", count))
    written = 0
    for blob in blobs:
        out.write(struct.pack(">I", len(blob)))
        out.write(blob)
        written += 1
    if written != count:
        raise CryptoError(f"encrypted message: {written} ciphertexts written, {count} announced")


def digest(kind: int, prefix: bytes | memoryview) -> bytes:
    """Return the digest the trailer covers."""
    h = hashlib.sha256(LABELS[kind])
    h.update(prefix)
    return h.digest()


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise CryptoError(MALFORMED)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def text(self) -> str:
        (n,) = self.unpack(">H")
        if n > MAX_ID_BYTES:
            raise CryptoError(MALFORMED)
        try:
            return bytes(self.take(n)).decode()
        except UnicodeDecodeError as exc:
            raise CryptoError(MALFORMED) from exc


def decode(data: bytes, *, kind: int) -> tuple[Header, list[memoryview], memoryview, bytes]:
    """Parse ``data`` of the given kind into ``(header, blobs, signed_prefix, trailer)``.

    Only the framing is checked here; the caller verifies the trailer and the values. The
    ciphertexts are read-only views into ``data``, not copies: a 10M-parameter update is
    40 MB, and the coordinator parses them one at a time (issue 17).
    """
    view = memoryview(data)
    trailer_len = TRAILER_BYTES[kind]
    if len(view) < len(MAGIC) + trailer_len:
        raise CryptoError(MALFORMED)
    prefix, trailer = view[:-trailer_len], bytes(view[-trailer_len:])
    r = _Reader(prefix)
    if bytes(r.take(4)) != MAGIC:
        raise CryptoError(MALFORMED)
    version, got_kind, scheme = r.unpack(">BBB")
    if version != VERSION or got_kind != kind or scheme not in SCHEME_NAMES:
        raise CryptoError(MALFORMED)
    param_id = bytes(r.take(32))
    run_id = r.text()
    round_id, n_values = r.unpack(">QQ")
    layout = bytes(r.take(32))
    nonce = bytes(r.take(NONCE_BYTES))
    (n_sites,) = r.unpack(">I")
    if n_sites > MAX_SITES:
        raise CryptoError(MALFORMED)
    sites = tuple(r.text() for _ in range(n_sites))
    (n_ct,) = r.unpack(">I")
    if n_ct > MAX_CIPHERTEXTS:
        raise CryptoError(MALFORMED)
    blobs: list[memoryview] = []
    for _ in range(n_ct):
        (length,) = r.unpack(">I")
        blobs.append(r.take(length))
    if r.pos != len(prefix):
        raise CryptoError(MALFORMED)
    header = Header(got_kind, SCHEME_NAMES[scheme], param_id, run_id, round_id, n_values, layout, nonce, sites)
    return header, blobs, prefix, trailer
