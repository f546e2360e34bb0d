"""Edge cases of fedinfra.aggregation.compression (issue 20, its mutation survivors).

What is protected here: one encoding per update (the positions in the form ``encode`` picks).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from fedinfra.aggregation.compression import CompressedUpdate, decode, encode
from fedinfra.errors import ConfigError

MALFORMED = "malformed compressed update; resend it"
# The documented header, spelled out here rather than imported: magic, version, bits, flags,
# a zero pad byte, step (float64), dim, nnz (uint32 each), the 8-byte layout digest.
HEADER = struct.Struct("<2sBBBxd II8s")
DIGEST = bytes(range(8))


def _blob(
    *,
    bits: int = 8,
    flags: int = 0,
    step: float = 0.5,
    dim: int = 4,
    nnz: int | None = None,
    positions: bytes = b"",
    values: bytes = b"",
    magic: bytes = b"FQ",
    version: int = 1,
    pad: int = 0,
) -> bytes:
    head = HEADER.pack(magic, version, bits, flags, step, dim, dim if nnz is None else nnz, DIGEST)
    return head[:5] + bytes([pad]) + head[6:] + positions + values


def _bitmap(dim: int, indices: list[int]) -> bytes:
    mask = np.zeros(dim, dtype=bool)
    mask[indices] = True
    return np.packbits(mask, bitorder="little").tobytes()


def _i8(values: list[int]) -> bytes:
    return np.array(values, dtype="<i1").tobytes()


def _refused(data: bytes, **kw: Any) -> None:
    with pytest.raises(ConfigError) as err:
        decode(data, **kw)
    assert str(err.value) == MALFORMED


def _update(dim: int, values: list[int], indices: list[int] | None = None, bits: int = 8) -> CompressedUpdate:
    idx = None if indices is None else np.array(indices, dtype=np.uint32)
    return CompressedUpdate(bits, 0.5, dim, DIGEST, np.array(values, dtype=np.int64), idx)


POSITIONS = [
    (16, [3], False),  # 2 bytes either way: the list
    (16, [3, 9], True),  # 2 < 4
    (8, [2], True),  # 1 < 2
    (9, [0, 8], True),  # 2 < 4, one padding byte mostly unused
    (128, [1, 3, 5, 7, 9, 11, 13, 127], False),  # 16 bytes either way: the list
    (128, [1, 3, 5, 7, 9, 11, 13, 15, 127], True),  # 16 < 18
    (64, [0, 1, 2, 3, 63], True),  # 8 < 10
    (100, [10, 11, 99], False),  # 6 < 13
]


@pytest.mark.parametrize(("dim", "indices", "bitmap"), POSITIONS)
def test_positions_take_the_smaller_form(dim, indices, bitmap):
    """Encode writes a bitmap only when it is smaller than the index list, and decode reads it back."""
    values = list(range(1, len(indices) + 1))
    blob = encode(_update(dim, values, indices))
    positions = _bitmap(dim, indices) if bitmap else np.array(indices, dtype="<u2").tobytes()
    expected = _blob(flags=3 if bitmap else 1, dim=dim, nnz=len(indices), positions=positions, values=_i8(values))
    assert blob == expected
    back = decode(blob)
    assert back.indices is not None
    assert back.indices.tolist() == indices
    assert back.values.tolist() == values


@pytest.mark.parametrize(("dim", "indices", "bitmap"), POSITIONS)
def test_the_other_positions_form_is_refused(dim, indices, bitmap):
    """One update, one encoding: the positions in the form encode would not write are refused.

    tests/fuzz asks every accepted blob to re-encode to itself (issue 16); decode used to accept
    both forms, and a blob in the other form re-encoded to different bytes.
    """
    values = list(range(1, len(indices) + 1))
    positions = np.array(indices, dtype="<u2").tobytes() if bitmap else _bitmap(dim, indices)
    _refused(_blob(flags=1 if bitmap else 3, dim=dim, nnz=len(indices), positions=positions, values=_i8(values)))
