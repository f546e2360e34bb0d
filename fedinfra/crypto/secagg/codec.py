"""The integer update that SecAgg masks: no float is ever masked, the sum is exact.

Same clip, unbiased stochastic rounding and lane width as the packed-BFV codec
(:mod:`fedinfra.crypto.quantize`; BatchCrypt, Zhang et al., USENIX ATC 2020): a site with
``n`` examples quantizes ``(n / example_cap) * x`` to ``b = quant_bits`` bits, offset to be
non-negative, so the sum of ``max_sites`` of them stays below ``2^L``,
``L = b + ceil(log2 max_sites)``; masking is modulo ``2^L``, so the unmasked sum is the true
integer sum. A two-value trailer ``(n, 1)`` modulo ``2^64`` carries the example total and
the number of contributions, masked like the rest: the coordinator learns only the sums.

On the wire each value takes ``ceil(L / 8)`` bytes (3 bytes for 20-bit values and up to 16
sites: 3.0 bytes per parameter against float32's 4.0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from fedinfra.config.secagg import SecureAggSpec, lane_bits
from fedinfra.crypto.quantize import dequantize_sum, quant_max, quantize
from fedinfra.crypto.secagg.protocol import Segments
from fedinfra.errors import ConfigError, CryptoError

#: Bits of the trailer segment (example total, contribution count).
TRAILER_BITS = 64


def widths(spec: SecureAggSpec) -> list[int]:
    """Moduli (in bits) of the two segments: the update lanes and the trailer."""
    return [lane_bits(spec.quant_bits, spec.max_sites), TRAILER_BITS]


def sizes(n_values: int) -> list[int]:
    """Lengths of the two segments for an update of ``n_values`` values."""
    return [n_values, 2]


def encode(
    values: npt.NDArray[np.float64], num_examples: int, spec: SecureAggSpec, rng: np.random.Generator
) -> Segments:
    """Clip to ``spec.clip``, quantize ``(n / example_cap) * values``; append the trailer."""
    if not 1 <= num_examples <= spec.example_cap:
        raise ConfigError(
            f"num_examples={num_examples} must be in [1, secure_aggregation.example_cap={spec.example_cap}]"
        )
    if values.size and not math.isfinite(float(np.max(np.abs(values)))):
        raise ConfigError("update contains NaN or infinity; check the training step")
    clipped = np.clip(values, -spec.clip, spec.clip)
    q = quantize(clipped, clip=spec.clip, quant_bits=spec.quant_bits, rng=rng, weight=num_examples / spec.example_cap)
    return [q, np.array([num_examples, 1], dtype=np.uint64)]


def decode(total: Segments, spec: SecureAggSpec) -> tuple[npt.NDArray[np.float32], int, int]:
    """The unmasked sum -> ``(weighted mean as float32, total examples, contributions)``."""
    lanes, trailer = total
    examples, sites = int(trailer[0]), int(trailer[1])
    if not 1 <= sites <= spec.max_sites or not 1 <= examples <= sites * spec.example_cap:
        raise CryptoError("secure aggregation: the unmasked sum is inconsistent (trailer out of range)")
    if lanes.size and int(lanes.max()) > sites * 2 * quant_max(spec.quant_bits):
        raise CryptoError("secure aggregation: the unmasked sum is inconsistent (lane out of range)")
    weighted = dequantize_sum(lanes.astype(np.float64), sites=sites, clip=spec.clip, quant_bits=spec.quant_bits)
    weighted *= spec.example_cap / examples
    return weighted.astype(np.float32), examples, sites


def _nbytes(bits: int) -> int:
    return (bits + 7) // 8


def wire_size(n_sizes: list[int], bits: list[int]) -> int:
    """The exact length in bytes of :func:`to_wire`'s output for segments of these sizes and widths."""
    return sum(n * _nbytes(b) for n, b in zip(n_sizes, bits, strict=True))


def to_wire(segments: Segments, bits: list[int]) -> bytes:
    """Little-endian, ``ceil(bits / 8)`` bytes per value, segments back to back."""
    parts = []
    for seg, b in zip(segments, bits, strict=True):
        width = _nbytes(b)
        raw = np.ascontiguousarray(seg, dtype="<u8").view(np.uint8).reshape(-1, 8)
        parts.append(raw[:, :width].tobytes())
    return b"".join(parts)


def from_wire(data: bytes, n_sizes: list[int], bits: list[int]) -> list[npt.NDArray[Any]]:
    """Inverse of :func:`to_wire`, read modulo ``2^bits``; a wrong length raises :class:`CryptoError`.

    Segments of at most 32 bits come back as a strided uint32 view of the bytes (no
    decoding pass): each word holds its value in the low ``8 * width`` bits and the next
    value's first bytes above them, which the reduction modulo ``2^bits`` drops
    (:class:`~fedinfra.crypto.secagg.protocol.Unmasker` sums them in uint32).
    """
    expected = wire_size(n_sizes, bits)
    if len(data) != expected:
        raise CryptoError(f"secure aggregation: masked input of {len(data)} bytes, expected {expected}")
    out: list[npt.NDArray[Any]] = []
    pos = 0
    for n, b in zip(n_sizes, bits, strict=True):
        width = _nbytes(b)
        if b <= 32:
            if pos + n * width + 4 - width <= len(data):  # the bytes after it pad the last word
                out.append(np.ndarray(shape=(n,), dtype="<u4", buffer=data, offset=pos, strides=(width,)))
            else:
                buf = data[pos : pos + n * width] + bytes(4)
                out.append(np.ndarray(shape=(n,), dtype="<u4", buffer=buf, offset=0, strides=(width,)))
        else:
            grid = np.zeros((n, 8), dtype=np.uint8)
            grid[:, :width] = np.frombuffer(data, dtype=np.uint8, count=n * width, offset=pos).reshape(n, width)
            seg: Any = grid.view("<u8").reshape(-1).astype(np.uint64)
            if b < 64:
                seg &= np.uint64((1 << b) - 1)
            out.append(seg)
        pos += n * width
    return out
