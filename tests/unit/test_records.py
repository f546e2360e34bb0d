"""Reading a Flower ``Array`` as a view (``fedinfra.aggregation.records``): every header field is checked.

The ``.npy`` header comes from a site, so magic, version, header length, keys, shape and
order are checked before a view is made, and a refusal names the tensor.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import pytest

from fedinfra.aggregation.records import array_view, arrays_from_record
from fedinfra.errors import ConfigError


@dataclass
class _Arr:
    dtype: str
    shape: tuple[int, ...]
    data: bytes
    stype: str = "numpy.ndarray"


def _npy(value: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, value, version=version, allow_pickle=False)
    return buf.getvalue()


def _raw(header: str, body: bytes, major: int = 1) -> bytes:
    """A hand-written ``.npy`` payload: ``header`` (padded to 16 bytes with its newline) and ``body``."""
    start = 10 if major == 1 else 12
    text = header + " " * (-(start + len(header) + 1) % 16) + "\n"
    raw = text.encode("utf-8" if major == 3 else "latin1")
    size = struct.pack("<H", len(raw)) if major == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes([major, 0]) + size + raw + body


def _view(data: bytes, dtype: str = "float32", shape: tuple[int, ...] = (2,)) -> np.ndarray:
    return array_view("w", _Arr(dtype=dtype, shape=shape, data=data))


def _refused(data: bytes, dtype: str = "float32", shape: tuple[int, ...] = (2,)) -> str:
    with pytest.raises(ConfigError) as info:
        _view(data, dtype, shape)
    return str(info.value)


def _malformed(reason: str) -> str:
    return f"tensor 'w': malformed .npy payload ({reason}); resend the update"


BODY = np.array([1.5, -2.0], dtype=np.float32).tobytes()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_npy_format_version_is_read(version: tuple[int, int]) -> None:
    value = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    view = _view(_npy(value, version), shape=(2, 3))
    assert view.tolist() == value.tolist()


def test_a_version_3_header_is_utf8() -> None:
    dt = np.dtype([("é", "<f4")])
    data = _raw("{'descr': [('é', '<f4')], 'fortran_order': False, 'shape': (2,), }", BODY, major=3)
    view = _view(data, dtype=str(dt))
    assert view.dtype.names == ("é",)
    assert view["é"].tolist() == [1.5, -2.0]


def test_one_byte_tensors_are_read() -> None:
    assert _view(_npy(np.array([7, 255], dtype=np.uint8)), dtype="uint8").tolist() == [7, 255]


@pytest.mark.parametrize(
    "data",
    [
        b"\x93NUMPX" + _npy(np.zeros(2, np.float32))[6:],  # magic
        _npy(np.zeros(2, np.float32))[:9],  # shorter than the fixed prefix
        _npy(np.zeros(2, np.float32))[:7] + b"\x01" + _npy(np.zeros(2, np.float32))[8:],  # minor version 1
        b"\x93NUMPY\x04\x00" + _npy(np.zeros(2, np.float32), (2, 0))[8:],  # version 4
        _raw("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }" + " " * 10_000, BODY, major=2),  # too long
        _npy(np.zeros(2, np.float32))[:40],  # the header runs past the payload
        _raw("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", BODY),  # a key too many
        _raw("{'shape': [2], 'fortran_order': False, 'descr': '<f4'}", BODY),  # shape not a tuple
        _raw("{'shape': (-2,), 'fortran_order': False, 'descr': '<f4'}", BODY),  # negative dimension
        _raw("{'shape': (2,), 'fortran_order': 0, 'descr': '<f4'}", BODY),  # order not a bool
    ],
    ids=["magic", "short", "minor", "version", "header-too-long", "truncated", "keys", "list", "negative", "order"],
)
def test_a_malformed_header_is_refused_naming_the_tensor(data: bytes, request: pytest.FixtureRequest) -> None:
    reason = {
        "magic": "not a .npy payload",
        "short": "not a .npy payload",
        "minor": "not a .npy payload",
        "version": "unsupported .npy version 4",
        "header-too-long": "bad .npy header length",
        "truncated": "bad .npy header length",
        "keys": "bad .npy header keys",
        "list": "bad .npy shape",
        "negative": "bad .npy shape",
        "order": "bad .npy fortran_order",
    }[request.node.callspec.id]
    assert _refused(data) == _malformed(reason)


def test_a_header_that_is_not_a_literal_is_refused_without_echoing_it() -> None:
    assert _refused(_raw("{'descr': __import__('os')}", BODY)) == _malformed("unreadable header")
    assert _refused(_raw("{'descr': '<zz9', 'fortran_order': False, 'shape': (2,)}", BODY)) == _malformed(
        "unreadable header"
    )


def test_a_header_of_the_largest_allowed_length_is_read() -> None:
    header = "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}"
    text = header + " " * (10_000 - 1 - len(header)) + "\n"  # exactly 10,000 bytes
    data = b"\x93NUMPY\x02\x00" + struct.pack("<I", len(text)) + text.encode("latin1") + BODY
    assert _view(data).tolist() == [1.5, -2.0]


def test_the_header_path_that_is_not_numpys_own_layout_reads_the_same_fields() -> None:
    zero = _raw("{'shape': (0,), 'fortran_order': False, 'descr': '<f4'}", b"")
    assert _view(zero, shape=(0,)).shape == (0,)
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    data = _raw("{'shape': (2, 3), 'fortran_order': True, 'descr': '<f4'}", fortran.tobytes(order="F"))
    assert _view(data, shape=(2, 3)).tolist() == fortran.tolist()


def test_a_disagreement_between_header_and_record_is_named() -> None:
    message = _refused(_npy(np.zeros(3, np.float32)), shape=(2,))
    assert message == "tensor 'w': header says float32(3,), record says float32(2,)"


def test_arrays_from_record_names_each_tensor() -> None:
    record = {"w": _Arr("float32", (2,), _npy(np.array([1, 2], np.float32))), "b": _Arr("float32", (1,), b"bad")}
    with pytest.raises(ConfigError, match=r"^tensor 'b': malformed \.npy payload"):
        arrays_from_record(record)
    del record["b"]
    assert {k: v.tolist() for k, v in arrays_from_record(record).items()} == {"w": [1.0, 2.0]}


def test_a_version_1_or_2_header_is_latin1() -> None:
    data = _raw("{'descr': [('é', '<f4')], 'fortran_order': False, 'shape': (2,), }", BODY, major=1)
    assert b"\xe9" in data  # latin1, not valid utf-8
    view = _view(data, dtype=str(np.dtype([("é", "<f4")])))
    assert view["é"].tolist() == [1.5, -2.0]


def test_a_header_claiming_more_bytes_than_the_payload_holds_is_malformed() -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + 100) + header.encode("latin1")
    assert _refused(data, shape=(0,)) == _malformed("bad .npy header length")


@pytest.mark.parametrize("major", [1, 2])
def test_a_header_length_field_is_unsigned_so_its_top_bit_means_a_long_header(major: int) -> None:
    """The header length is an unsigned little-endian integer (numpy's format: ``<H``, ``<I``): a field
    with the top bit set is a header longer than the 10,000-byte limit, refused as malformed. Read as
    signed it would be negative, and the header would be sliced from the end of the payload: here the
    bytes before the 88 bytes of padding form a valid header, which a signed reader accepts."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }\n".encode("latin1")
    start = 10 if major == 1 else 12
    negative = -100  # the field's value read as signed
    field = struct.pack("<H", 2**16 + negative) if major == 1 else struct.pack("<I", 2**32 + negative)
    data = b"\x93NUMPY" + bytes([major, 0]) + field + header + b" " * (-negative - start)
    assert data[start : start + negative] == header  # what a signed reader would parse
    assert _refused(data, shape=(0,)) == _malformed("bad .npy header length")


def test_a_payload_of_exactly_the_ten_byte_prefix_is_read_as_an_empty_header() -> None:
    """Ten bytes hold magic, version and a zero header length: a complete prefix whose empty header
    is then refused as unreadable (nine bytes are not a .npy payload at all)."""
    assert _refused(b"\x93NUMPY\x01\x00\x00\x00") == _malformed("unreadable header")
    assert _refused(b"\x93NUMPY\x01\x00\x00") == _malformed("not a .npy payload")
    assert _refused(b"\x93NUMPY\x02\x00\x00\x00\x00\x00") == _malformed("unreadable header")  # version 2: 12 bytes


@pytest.mark.parametrize("size", [10, 11])
@pytest.mark.parametrize("major", [2, 3])
def test_a_version_2_or_3_payload_cut_inside_its_header_length_is_malformed(major: int, size: int) -> None:
    """Versions 2 and 3 keep a 4-byte header length at bytes 8-11: a payload that ends inside it is refused
    as malformed (it used to escape as a struct.error, which no caller of array_view catches)."""
    data = (b"\x93NUMPY" + bytes([major, 0]) + b"\x00" * 4)[:size]
    assert _refused(data) == _malformed("not a .npy payload")
