"""Read the tensors of a Flower ``ArrayRecord`` without copying them.

Flower 1.41 carries each tensor as the bytes of a ``.npy`` file (``Array.data``);
``Array.numpy()`` decodes it with ``numpy.load``, which copies every byte into a fresh
array before aggregation reads it once more. Here the ``.npy`` header (a Python literal, read with
``ast.literal_eval``: no pickle, no code) is parsed and the payload is viewed in place
with ``numpy.frombuffer``: the aggregator reads each reply's bytes exactly once.

The views are read-only and alias the reply's buffer; they are meant to be folded into a
:class:`~fedinfra.aggregation.StreamingFedAvg` and dropped.

Untrusted bytes: object dtypes are refused (they would need pickle, the reason
``numpy.load`` defaults to ``allow_pickle=False``), and the declared shape, dtype and
payload length must agree before any view is made.
"""

from __future__ import annotations

import ast
import functools
import math
import re
import struct
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from numpy.lib import format as npy_format

from fedinfra.errors import ConfigError
from fedinfra.types import NDArrays

#: ``Array.stype`` of tensors serialised as ``.npy`` bytes (``flwr.common.constant.SType.NUMPY``).
NUMPY_STYPE = "numpy.ndarray"
_MAX_HEADER = 10_000
_MAGIC = b"\x93NUMPY"
#: The header ``numpy.save`` writes for a non-structured dtype, e.g.
#: ``{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 900), }`` padded with spaces.
_SIMPLE_HEADER = re.compile(
    r"\{'descr': '([<>|=]?[a-zA-Z][0-9]*)', 'fortran_order': (True|False), "
    r"'shape': \(((?:[0-9]+, ?)*[0-9]*)\), \} *\n"
)


class ArrayLike(Protocol):
    """The fields of ``flwr.app.Array`` read here."""

    dtype: str
    shape: tuple[int, ...]
    stype: str
    data: bytes


class _BadHeader(ValueError):
    """A ``.npy`` header field this module refuses.

    Its text is quoted in the refusal so the sender can see which field is wrong: a fixed text
    of this module, at most with the version number as an integer - never the sender's header.
    """


@functools.lru_cache(maxsize=256)
def _dtype_name(dtype: np.dtype[Any]) -> str:
    """``str(dtype)``, as ``flwr.app.Array.dtype`` holds it (cached: ``str`` costs ~7 µs)."""
    return str(dtype)


def _parse_npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Parse a ``.npy`` header (format versions 1.0, 2.0 and 3.0, as numpy documents it).

    numpy's own reader re-tokenises the header for Python 2 compatibility (~100 µs per
    tensor). The header numpy writes for a simple dtype is matched exactly by a regular
    expression; anything else (structured dtypes) is a Python literal read with
    ``ast.literal_eval``, which never executes code. Returns shape, Fortran order, dtype
    and data offset.
    """
    if data[:6] != _MAGIC or len(data) < 10 or data[7] != 0:  # minor version 0, as numpy (tests/fuzz)
        raise _BadHeader("not a .npy payload")
    major = data[6]
    if major == 1:
        length_format, start = "<H", 10
    elif major in (2, 3):
        length_format, start = "<I", 12
    else:
        raise _BadHeader(f"unsupported .npy version {major}")
    if len(data) < start:  # the header length itself is cut short
        raise _BadHeader("not a .npy payload")
    (hlen,) = struct.unpack_from(length_format, data, 8)
    if hlen > _MAX_HEADER or start + hlen > len(data):
        raise _BadHeader("bad .npy header length")
    text = bytes(data[start : start + hlen]).decode("utf-8" if major == 3 else "latin1")
    simple = _SIMPLE_HEADER.fullmatch(text)
    if simple is not None:
        descr, order, dims = simple.groups()
        shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
        return shape, order == "True", np.dtype(descr), start + hlen
    header = ast.literal_eval(text)
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _BadHeader("bad .npy header keys")
    shape, fortran_order, descr = header["shape"], header["fortran_order"], header["descr"]
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _BadHeader("bad .npy shape")
    if not isinstance(fortran_order, bool):
        raise _BadHeader("bad .npy fortran_order")
    dtype = npy_format.descr_to_dtype(descr)
    return shape, fortran_order, dtype, start + hlen


def array_view(name: str, array: ArrayLike) -> np.ndarray[Any, np.dtype[Any]]:
    """Return a read-only view of one Flower ``Array``'s tensor, without copying.

    Raises
    ------
    ConfigError
        If the array is not ``.npy``-serialised, holds objects, or its header, declared
        shape or payload length disagree.
    """
    if array.stype != NUMPY_STYPE:
        raise ConfigError(f"tensor {name!r}: unsupported serialisation {array.stype!r}; send numpy arrays")
    data = array.data
    try:
        shape, fortran_order, dtype, offset = _parse_npy_header(data)
    except _BadHeader as exc:
        raise ConfigError(f"tensor {name!r}: malformed .npy payload ({exc}); resend the update") from exc
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        # numpy's and ast's texts may quote the sender's header: not echoed
        raise ConfigError(f"tensor {name!r}: malformed .npy payload (unreadable header); resend the update") from exc
    if dtype.hasobject:
        raise ConfigError(f"tensor {name!r}: object arrays are refused; send numeric arrays")
    if tuple(shape) != tuple(array.shape) or _dtype_name(dtype) != array.dtype:
        declared = f"{array.dtype}{tuple(array.shape)}"
        raise ConfigError(f"tensor {name!r}: header says {dtype}{tuple(shape)}, record says {declared}")
    count = math.prod(shape)
    if dtype.itemsize == 0 or len(data) - offset != count * dtype.itemsize:
        raise ConfigError(f"tensor {name!r}: payload length does not match {dtype}{tuple(shape)}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def arrays_from_record(record: Mapping[str, ArrayLike]) -> NDArrays:
    """Return zero-copy views of every tensor of a Flower ``ArrayRecord``, by name."""
    return {name: array_view(name, array) for name, array in record.items()}
