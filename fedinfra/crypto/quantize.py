"""Pure quantization and lane packing for packed BFV (no SEAL, no state).

Quantization (BatchCrypt, Zhang et al., USENIX ATC 2020, section 4): a value ``y`` with
``|y| <= clip`` maps to the integer ``q = floor(y / delta + u)`` with ``u ~ U[0, 1)`` and
``delta = clip / M``, ``M = 2^(b-1) - 1``. Stochastic rounding is unbiased
(``E[q * delta] = y``) and its error is below ``delta`` (Gupta et al., ICML 2015, "Deep
Learning with Limited Numerical Precision"). ``q + M`` lies in ``[0, 2^b - 2]``; the sum of
``n`` such values is below ``2^L`` with ``L = b + ceil(log2 n)``, so lanes never carry.

The uniform draws come from the caller's :class:`numpy.random.Generator`; production code
seeds it from the operating system's CSPRNG (:func:`secure_generator`).
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import numpy.typing as npt


def secure_generator() -> np.random.Generator:
    """Return a PCG64 generator seeded with 256 bits from the OS CSPRNG (``secrets``)."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(256)))


def quant_max(quant_bits: int) -> int:
    """``M = 2^(b-1) - 1``, the largest quantized magnitude.

    >>> quant_max(8), quant_max(20)
    (127, 524287)
    """
    return (1 << (quant_bits - 1)) - 1


def quantize(
    values: npt.NDArray[np.float64],
    *,
    clip: float,
    quant_bits: int,
    rng: np.random.Generator,
    weight: float = 1.0,
) -> npt.NDArray[np.uint64]:
    """Stochastically round ``weight * values`` to offset integers.

    ``values`` lie within ``[-clip, clip]`` and ``0 < weight <= 1``. Returns ``q + M`` as
    ``uint64`` in ``[0, 2M]``.

    >>> rng = np.random.default_rng(0)
    >>> quantize(np.array([-1.0, 0.0, 1.0]), clip=1.0, quant_bits=8, rng=rng).tolist()
    [0, 127, 254]
    """
    m = quant_max(quant_bits)
    scaled = values * (weight * m / clip)
    scaled += rng.random(values.shape[0])
    q = np.floor(scaled, out=scaled)
    np.clip(q, -m, m, out=q)
    q += m
    return q.astype(np.uint64)


def pack_lanes(offset_q: npt.NDArray[np.uint64], *, lane_bits: int, lanes: int) -> npt.NDArray[np.uint64]:
    """Pack ``lanes`` consecutive values per slot: slot = sum_j v[k*i + j] << (L*j).

    The input is zero-padded to a multiple of ``lanes``.

    >>> pack_lanes(np.array([1, 2, 3], dtype=np.uint64), lane_bits=4, lanes=2).tolist()
    [33, 3]
    """
    pad = (-offset_q.shape[0]) % lanes
    if pad:
        offset_q = np.concatenate([offset_q, np.zeros(pad, dtype=np.uint64)])
    grid = offset_q.reshape(-1, lanes)
    slots = grid[:, 0].copy()
    for j in range(1, lanes):
        slots |= grid[:, j] << np.uint64(lane_bits * j)
    return slots


def unpack_lanes(slots: npt.NDArray[np.uint64], *, lane_bits: int, lanes: int, count: int) -> npt.NDArray[np.float64]:
    """Inverse of :func:`pack_lanes` for summed slots: lane j = (s >> L*j) & (2^L - 1).

    Lanes come back as float64, which holds them exactly (a lane has at most 52 bits).

    >>> unpack_lanes(np.array([33, 3], dtype=np.uint64), lane_bits=4, lanes=2, count=3).tolist()
    [1.0, 2.0, 3.0]
    """
    mask = np.uint64((1 << lane_bits) - 1)
    out = np.empty((slots.shape[0], lanes), dtype=np.float64)
    scratch = np.empty_like(slots)
    for j in range(lanes):
        np.right_shift(slots, np.uint64(lane_bits * j), out=scratch)
        np.bitwise_and(scratch, mask, out=scratch)
        out[:, j] = scratch
    return out.reshape(-1)[:count]


def dequantize_sum(
    lane_sums: npt.NDArray[np.float64], *, sites: int, clip: float, quant_bits: int
) -> npt.NDArray[np.float64]:
    """Turn summed offset lanes of ``sites`` contributions back into the float sum (in place)."""
    m = quant_max(quant_bits)
    lane_sums -= float(sites * m)
    lane_sums *= clip / m
    return lane_sums


def flatten(update: Any) -> tuple[npt.NDArray[np.float64], list[tuple[str, tuple[int, ...]]]]:
    """Flatten a named-tensor dict (insertion order) or a vector into float64 plus its layout."""
    if isinstance(update, dict):
        layout = [(str(k), tuple(int(d) for d in np.shape(v))) for k, v in update.items()]
        parts = [np.asarray(v, dtype=np.float64).reshape(-1) for v in update.values()]
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
        return flat, layout
    arr = np.asarray(update, dtype=np.float64).reshape(-1)
    return arr, [("", (arr.shape[0],))]


def unflatten(vector: npt.NDArray[Any], layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, npt.NDArray[Any]]:
    """Split a flat vector back into named tensors following ``layout``."""
    out: dict[str, npt.NDArray[Any]] = {}
    pos = 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        out[name] = vector[pos : pos + size].reshape(shape)
        pos += size
    return out
