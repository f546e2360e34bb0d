"""Binary payloads travel as Flower arrays of at most :data:`SEGMENT_BYTES` (issue 17: big models).

Ciphertexts, masked updates and compressed updates used to ride in the ``config``
``ConfigRecord`` as one ``bytes`` value. Flower 1.41 pushes a ``ConfigRecord`` as *one* object
(one HTTP body, ``push-object``) and pulls it as one, so that value was capped by the largest
request body fedinfra's public proxy admits (``client_max_body_size`` 64 MiB,
:mod:`fedinfra.runtime.proxy`): a packed-BFV update of ~16.6M parameters no longer fit, and
the coordinator needed about four times a reply's size to pull and parse it (the object's
content, its body sliced out, the parsed record, the Python value: 158 MB for a 40 MB reply
of a 10M-parameter model, ``bench/big_model.py``).

Here a payload is cut into segments of at most :data:`SEGMENT_BYTES` (4 MiB, under Flower's
5 MiB array chunk, ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``), each an ``Array`` of ``uint8``
(``stype`` :data:`STYPE`) in an ``ArrayRecord`` named ``blob:<key>``. Each segment is one
Flower object of its own, so no request body grows with the model, and the coordinator
inflates a reply segment by segment: what it holds while pulling is bounded by about twice
the payload, not four times.

Everything here is read from the other side, so :func:`take` checks the record's shape
(segment names ``000000``, ``000001``, ... in order, ``uint8`` raw segments whose declared
shape is their length, none longer than :data:`SEGMENT_BYTES`, none empty) and the total
against the caller's bound *before* it joins the segments; a breach raises
:class:`BlobError` naming the record and the check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import Array, ArrayRecord

from fedinfra.errors import FedinfraError

#: Largest segment (one Flower object each): under Flower's 5 MiB array chunk, so a segment is never split again.
SEGMENT_BYTES = 4 * 1024 * 1024
#: ``Array.stype`` of a segment: raw bytes, not an ``.npy`` file (Flower never deserializes it).
STYPE = "fedinfra.bytes"
#: ``ArrayRecord`` name prefix of a payload.
PREFIX = "blob:"
#: Most segments one payload may have (4 TiB): names are six digits.
MAX_SEGMENTS = 1_000_000


class BlobError(FedinfraError, ValueError):
    """A payload's record is malformed or too long; ``check`` names it (``reply.<key>:<what>``)."""

    def __init__(self, check: str) -> None:
        super().__init__(check)
        self.check = check


def record_name(key: str, index: int | None = None) -> str:
    """The ``ArrayRecord`` name of payload ``key`` (``index``: the item of a list payload)."""
    return f"{PREFIX}{key}" if index is None else f"{PREFIX}{key}#{index}"


def to_record(data: bytes | bytearray | memoryview) -> ArrayRecord:
    """``data`` as segments of at most :data:`SEGMENT_BYTES` (views into ``data``, then one copy each into Flower)."""
    view = memoryview(data).cast("B")
    if not len(view):
        raise ValueError("an empty payload has no segments; send none instead")
    count = -(-len(view) // SEGMENT_BYTES)
    if count > MAX_SEGMENTS:
        raise ValueError(f"payload of {len(view)} bytes needs more than {MAX_SEGMENTS} segments")
    arrays: dict[str, Array] = {}
    for i in range(count):
        part = bytes(view[i * SEGMENT_BYTES : (i + 1) * SEGMENT_BYTES])
        arrays[f"{i:06d}"] = Array(dtype="uint8", shape=(len(part),), stype=STYPE, data=part)
    return ArrayRecord(arrays)


def put(records: dict[str, Any], key: str, data: bytes | bytearray | memoryview) -> None:
    """Add payload ``key`` to ``records`` (the record dict of a message being built)."""
    records[record_name(key)] = to_record(data)


def put_list(records: dict[str, Any], key: str, items: Sequence[bytes | bytearray | memoryview]) -> None:
    """Add the payloads ``items`` as ``key#0``, ``key#1``, ... (read back with :func:`take_list`)."""
    for i, data in enumerate(items):
        records[record_name(key, i)] = to_record(data)


def _segments(record: Any, name: str, limit: int) -> list[bytes]:
    """The segments of ``record`` in order, after every structural check and the bound."""
    check = f"reply.{name.removeprefix(PREFIX)}"
    if not isinstance(record, ArrayRecord):
        raise BlobError(f"{check}:malformed")
    names = list(record.keys())
    if not 0 < len(names) <= MAX_SEGMENTS or names != [f"{i:06d}" for i in range(len(names))]:
        raise BlobError(f"{check}:malformed")
    parts: list[bytes] = []
    total = 0
    for segment in record.values():
        data = segment.data
        if (
            segment.dtype != "uint8"
            or segment.stype != STYPE
            or not isinstance(data, bytes)
            or tuple(segment.shape) != (len(data),)
            or not 0 < len(data) <= SEGMENT_BYTES
        ):
            raise BlobError(f"{check}:malformed")
        total += len(data)
        if total > limit:
            raise BlobError(f"{check}:too_long")
        parts.append(data)
    return parts


def _joined(record: Any, name: str, limit: int) -> bytes:
    """The segments of ``record`` joined, after :func:`_segments`' checks (one segment: no copy)."""
    parts = _segments(record, name, limit)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def take(records: Mapping[str, Any], key: str, *, limit: int) -> bytes | None:
    """Payload ``key`` joined (``None`` if absent); :class:`BlobError` unless well formed and <= ``limit`` bytes."""
    name = record_name(key)
    return _joined(records[name], name, limit) if name in records else None


def take_list(records: Mapping[str, Any], key: str, *, limit: int, most: int) -> list[bytes]:
    """The list payload ``key`` (``key#0``, ``key#1``, ... until one is absent; at most ``most`` items)."""
    out: list[bytes] = []
    while record_name(key, len(out)) in records:
        if len(out) >= most:
            raise BlobError(f"reply.{key}:too_many")
        name = record_name(key, len(out))
        out.append(_joined(records[name], name, limit))
    return out


__all__ = [
    "MAX_SEGMENTS",
    "PREFIX",
    "SEGMENT_BYTES",
    "STYPE",
    "BlobError",
    "put",
    "put_list",
    "record_name",
    "take",
    "take_list",
    "to_record",
]
