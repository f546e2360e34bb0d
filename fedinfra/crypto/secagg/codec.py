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

An optional third segment carries the site's **evaluation sums** (test loss sum, counts, the
task's metric sums; issue 14: "evaluation sums leave a site only inside the secure
aggregate"): non-negative fixed-point integers ``round(v * 2^16)`` modulo ``2^64``, masked
like the update, so the coordinator unmasks only their total over the survivors. A site
refuses a value above half of ``(2^64 - 1) / max_sites / 2^16`` (:func:`eval_limit`; the half
absorbs float rounding), so the sum of ``max_sites`` of them never wraps; the coordinator
refuses a total above ``sites`` times that bound (:func:`decode_eval`).
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

#: Lanes :func:`decode` turns into floats at a time (a 2 MiB float64 temporary).
DECODE_SLICE = 1 << 18


#: Bits of the evaluation segment, and the fixed-point scale of its values (2^-16 resolution).
EVAL_BITS = 64
EVAL_SCALE = 1 << 16


def widths(spec: SecureAggSpec, n_eval: int = 0) -> list[int]:
    """Moduli (in bits) of the segments: update lanes, trailer, and (``n_eval > 0``) evaluation sums."""
    return [lane_bits(spec.quant_bits, spec.max_sites), TRAILER_BITS] + ([EVAL_BITS] if n_eval else [])


def sizes(n_values: int, n_eval: int = 0) -> list[int]:
    """Lengths of the segments for an update of ``n_values`` values and ``n_eval`` evaluation sums."""
    return [n_values, 2] + ([n_eval] if n_eval else [])


def eval_bound(spec: SecureAggSpec) -> int:
    """The largest encoded evaluation value one site may send: ``max_sites`` of them fit in 64 bits."""
    return ((1 << EVAL_BITS) - 1) // spec.max_sites


def eval_limit(spec: SecureAggSpec) -> float:
    """The largest evaluation sum (before encoding) a site sends: half the bound, so rounding never crosses it."""
    return eval_bound(spec) / 2 / EVAL_SCALE


def encode_eval(
    values: npt.NDArray[np.float64], spec: SecureAggSpec, names: list[str] | None = None
) -> npt.NDArray[np.uint64]:
    """Fixed-point encode one site's evaluation sums (``round(v * 2^16)``) for the eval segment.

    Refuses, naming the value, a negative or non-finite sum or one above the range
    ``max_sites`` of which still sum below ``2^64`` (an over-range sum must not wrap: a
    wrapped total would be silently wrong, Bonawitz et al. 2017 sum modulo ``2^bits``).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    limit = eval_limit(spec)
    for i, x in enumerate(v):
        if not (math.isfinite(float(x)) and 0.0 <= float(x) <= limit):
            name = names[i] if names is not None and i < len(names) else f"#{i}"
            raise ConfigError(
                f"evaluation sum {name} = {float(x):.6g} is outside [0, {limit:.6g}], the range "
                f"secure_aggregation.max_sites={spec.max_sites} sites can sum without overflow; "
                "lower max_sites or evaluate a smaller test shard"
            )
    return np.rint(v * EVAL_SCALE).astype(np.uint64)


def decode_eval(total: npt.NDArray[Any], sites: int, spec: SecureAggSpec) -> npt.NDArray[np.float64]:
    """The unmasked evaluation total of ``sites`` contributions, as floats; refuses an impossible one."""
    t = np.asarray(total, dtype=np.uint64)
    if t.size and int(t.max()) > sites * eval_bound(spec):
        raise CryptoError("secure aggregation: the unmasked evaluation sum is inconsistent (out of range)")
    return t.astype(np.float64) / EVAL_SCALE


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
    """The unmasked sum -> ``(weighted mean as float32, total examples, contributions)``.

    Reads the update lanes and the trailer; an evaluation segment, if any, is
    :func:`decode_eval`'s.
    """
    lanes, trailer = total[0], total[1]
    examples, sites = int(trailer[0]), int(trailer[1])
    if not 1 <= sites <= spec.max_sites or not 1 <= examples <= sites * spec.example_cap:
        raise CryptoError("secure aggregation: the unmasked sum is inconsistent (trailer out of range)")
    if lanes.size and int(lanes.max()) > sites * 2 * quant_max(spec.quant_bits):
        raise CryptoError("secure aggregation: the unmasked sum is inconsistent (lane out of range)")
    # Slice by slice into the float32 result: the whole-vector float64 temporary was 80 MB
    # for a 10M-parameter model, twice the result (issue 17). Same operations per value.
    out = np.empty(lanes.shape[0], dtype=np.float32)
    scale = spec.example_cap / examples
    for start in range(0, lanes.shape[0], DECODE_SLICE):
        part = lanes[start : start + DECODE_SLICE].astype(np.float64)
        dequantize_sum(part, sites=sites, clip=spec.clip, quant_bits=spec.quant_bits)
        part *= scale
        out[start : start + DECODE_SLICE] = part
        del part  # before the next slice is made
    return out, examples, sites


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
