"""The wire format of encrypted updates and aggregates, byte by byte (no SEAL needed).

The framing is what binds a ciphertext to its kit, run, round, site and nonce; a reader that
accepts a frame the writer could not have produced (a wrong kind or version, a count with
its top bit set, a truncation) or refuses one it did produce (an identifier at the length
limit, an empty blob, the largest u64 round) breaks that binding or the run. Expected bytes
are written out from the format in the module docstring, not produced by ``encode``.
"""

from __future__ import annotations

import hashlib
import io
import struct

import pytest

from fedinfra.crypto import envelope
from fedinfra.crypto.envelope import Header, decode, digest, encode, layout_digest
from fedinfra.errors import CryptoError

MALFORMED = "^encrypted message malformed or truncated; it was not produced by a fedinfra kit$"
SIGNATURE = bytes(range(64))  # an update's trailer: the framing does not check it, the codec does


def _header(**changes: object) -> Header:
    fields: dict[str, object] = {
        "kind": envelope.KIND_UPDATE,
        "scheme": "bfv",
        "param_id": b"\x11" * 32,
        "run_id": "run-1",
        "round_id": 3,
        "n_values": 10,
        "layout": b"\x22" * 32,
        "nonce": b"\x33" * 16,
        "sites": ("hospital-a",),
        **changes,
    }
    return Header(**fields)  # type: ignore[arg-type]


def _frame(header: Header, blobs: list[bytes]) -> bytes:
    return encode(header, blobs) + SIGNATURE


def _counts_at(header: Header) -> tuple[int, int]:
    """Offsets of the site count and the ciphertext count in ``encode(header, [])``."""
    sites = 4 + 3 + 32 + 2 + len(header.run_id.encode()) + 16 + 32 + 16
    return sites, sites + 4 + sum(2 + len(s.encode()) for s in header.sites)


def test_an_update_is_framed_exactly_as_the_format_says() -> None:
    body = encode(_header(scheme="ckks", sites=("a", "bc")), [b"xyz", b""])

    expected = (
        b"FIHE"
        + bytes([1, 1, 2])  # version 1, kind 1 (update), scheme 2 (ckks)
        + b"\x11" * 32
        + b"\x00\x05run-1"
        + (3).to_bytes(8, "big")
        + (10).to_bytes(8, "big")
        + b"\x22" * 32
        + b"\x33" * 16
        + b"\x00\x00\x00\x02"
        + b"\x00\x01a"
        + b"\x00\x02bc"
        + b"\x00\x00\x00\x02"
        + b"\x00\x00\x00\x03xyz"
        + b"\x00\x00\x00\x00"
    )
    assert body == expected
    assert digest(envelope.KIND_UPDATE, body) == hashlib.sha256(b"fedinfra/he-update/v1\x00" + expected).digest()


def test_the_layout_digest_is_the_sha256_of_compact_json() -> None:
    """Sites and the aggregator compare this digest: its text must not depend on separators."""
    got = layout_digest([("w", (2, 3)), ("b", (3,))])

    assert got == hashlib.sha256(b'[["w",[2,3]],["b",[3]]]').digest()


@pytest.mark.parametrize(
    "header",
    [
        _header(run_id="r" * 256, sites=("s" * 256,)),  # identifiers at the 256-byte limit
        _header(run_id="", sites=()),  # empty: zero-length reads are not errors
        _header(round_id=2**64 - 1, n_values=2**64 - 1),  # u64, not i64
        _header(kind=envelope.KIND_UPDATE, scheme="ckks", sites=tuple(f"s{i}" for i in range(3))),
    ],
    ids=["ids-at-limit", "empty", "largest-u64", "three-sites"],
)
def test_what_encode_writes_decode_reads_back(header: Header) -> None:
    blobs = [b"", b"ciphertext", bytes(300)]

    got, got_blobs, prefix, trailer = decode(_frame(header, blobs), kind=envelope.KIND_UPDATE)

    assert (got, got_blobs, trailer) == (header, blobs, SIGNATURE)
    assert bytes(prefix) == encode(header, blobs)


def test_an_identifier_one_byte_over_the_limit_is_refused_when_written() -> None:
    with pytest.raises(CryptoError, match=r"^identifier longer than 256 bytes$"):
        encode(_header(run_id="é" * 128 + "x"), [])  # 257 bytes in UTF-8


def _replace(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def test_an_identifier_length_over_the_limit_is_refused_when_read() -> None:
    """A 257-byte run id, framed consistently (its length and all its bytes): only the limit refuses it."""
    body = encode(_header(run_id="r" * 256), [])
    at = 4 + 3 + 32
    longer = body[:at] + struct.pack(">H", 257) + b"r" * 257 + body[at + 2 + 256 :]

    with pytest.raises(CryptoError, match=MALFORMED):
        decode(longer + SIGNATURE, kind=envelope.KIND_UPDATE)


def test_an_identifier_that_is_not_utf8_is_refused() -> None:
    body = encode(_header(run_id="ab"), [])

    with pytest.raises(CryptoError, match=MALFORMED):
        decode(_replace(body, 4 + 3 + 32 + 2, b"\xff\xfe") + SIGNATURE, kind=envelope.KIND_UPDATE)


@pytest.mark.parametrize(
    ("at", "value"),
    [(4, 2), (5, envelope.KIND_AGGREGATE), (6, 3), (6, 0)],
    ids=["version-2", "aggregate-kind", "unknown-scheme", "scheme-zero"],
)
def test_a_frame_of_another_version_kind_or_scheme_is_refused(at: int, value: int) -> None:
    """An aggregate's frame with an update-sized trailer is still not an update."""
    frame = _frame(_header(), [b"ct"])

    with pytest.raises(CryptoError, match=MALFORMED):
        decode(_replace(frame, at, bytes([value])), kind=envelope.KIND_UPDATE)


@pytest.mark.parametrize("which", [0, 1], ids=["site-count", "ciphertext-count"])
def test_a_count_with_its_top_bit_set_is_refused_not_read_as_negative(which: int) -> None:
    header = _header(sites=())
    body = encode(header, [])
    at = _counts_at(header)[which]

    with pytest.raises(CryptoError, match=MALFORMED):
        decode(_replace(body, at, b"\xff\xff\xff\xff") + SIGNATURE, kind=envelope.KIND_UPDATE)


def test_up_to_max_sites_site_ids_are_read_one_more_is_refused() -> None:
    header = _header(sites=tuple(f"{i}" for i in range(envelope.MAX_SITES)))
    frame = _frame(header, [b"ct"])

    assert decode(frame, kind=envelope.KIND_UPDATE)[0].sites == header.sites
    over = _replace(frame, _counts_at(header)[0], struct.pack(">I", envelope.MAX_SITES + 1))
    with pytest.raises(CryptoError, match=MALFORMED):
        decode(over, kind=envelope.KIND_UPDATE)


def test_up_to_max_ciphertexts_are_read_one_more_is_refused() -> None:
    header = _header()
    frame = _frame(header, [b""] * envelope.MAX_CIPHERTEXTS)

    assert len(decode(frame, kind=envelope.KIND_UPDATE)[1]) == envelope.MAX_CIPHERTEXTS
    over = _replace(frame, _counts_at(header)[1], struct.pack(">I", envelope.MAX_CIPHERTEXTS + 1))
    with pytest.raises(CryptoError, match=MALFORMED):
        decode(over, kind=envelope.KIND_UPDATE)


def test_every_truncation_and_any_trailing_byte_is_refused_as_malformed() -> None:
    frame = _frame(_header(sites=("a", "b")), [b"one", b"", b"three"])

    for cut in range(len(frame)):
        with pytest.raises(CryptoError, match=MALFORMED):
            decode(frame[:cut], kind=envelope.KIND_UPDATE)
    with pytest.raises(CryptoError, match=MALFORMED):
        decode(encode(_header(), [b"ct"]) + b"\x00" + SIGNATURE, kind=envelope.KIND_UPDATE)


@pytest.mark.parametrize(("yielded", "announced"), [(2, 3), (3, 2), (0, 1)])
def test_write_refuses_a_ciphertext_count_other_than_announced_and_names_both(yielded: int, announced: int) -> None:
    """A sum serialized ciphertext by ciphertext must yield exactly the count in its header.

    Otherwise the frame announces one count and carries another; the error says which
    numbers disagree so the caller can tell a short iterator from a miscounted one.
    """
    blobs = (b"ct" for _ in range(yielded))

    with pytest.raises(CryptoError, match=f"^encrypted message: {yielded} ciphertexts written, {announced} announced$"):
        envelope.write(io.BytesIO(), _header(), blobs, count=announced)


def test_write_streams_the_same_bytes_encode_returns() -> None:
    header, blobs = _header(sites=("a", "b")), [b"one", b"", b"three"]
    out = io.BytesIO()

    envelope.write(out, header, (memoryview(b) for b in blobs), count=len(blobs))

    assert out.getvalue() == encode(header, blobs)
