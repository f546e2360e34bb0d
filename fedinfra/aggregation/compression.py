"""Update compression for edge devices: clip, sparsify (optional), quantize, encode.

Order of operations (each step keeps the bound the privacy stack relies on):

1. **Clip** the flat update to L2 norm ``clip`` (McMahan et al. 2018, Alg. 1): the
   sensitivity bound of user-level DP and the range of the quantizer both come from here.
2. **Top-k with error feedback** (optional): the device adds its residual memory ``e`` to
   the clipped update, re-clips the sum to ``clip`` (so a transmitted vector never carries
   more than one clipped update's worth of signal: the DP sensitivity stays ``clip``), keeps
   the ``k`` largest-magnitude coordinates and remembers what it did not send,
   ``e <- p - C(p)`` ("memory", Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with
   Memory", NeurIPS; Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other
   Gradient Compression Schemes", ICML). Without error feedback top-k is biased.
3. **Unbiased stochastic quantization** to ``bits`` bits on a *shared* grid:
   ``step = clip / (2**(bits-1) - 1)``, each value ``v`` becomes ``floor(v/step)`` or
   ``floor(v/step) + 1`` with the probabilities that make ``E[q * step] = v`` (the
   stochastic rounding of QSGD, Alistarh et al. 2017, with a fixed rather than per-vector
   scale). A fixed scale is what lets quantized integers from different devices be summed
   directly - in plaintext or inside a packed-BFV ciphertext (BatchCrypt, Zhang et al.,
   USENIX ATC 2020): the integer form (:func:`integer_vector`, :func:`integer_tensors`) is
   signed in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, exactly the range the BFV packer
   offsets by ``2**(bits-1) - 1``; the sum of ``n`` of them times ``step`` is the sum of
   the updates, exact up to the quantization noise.
4. **Encode** to compact bytes (:func:`encode`); :func:`decode` validates untrusted bytes
   before anything is allocated from them.

Quantization is applied after clipping and after any noise the device adds, so it is
post-processing for DP, except that rounding can lengthen a vector by at most
``step * sqrt(k)`` (:func:`max_l2_norm`): calibrate central noise to that bound.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedinfra.errors import ConfigError
from fedinfra.types import NDArrays

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
#: Named tensor shapes in model order: what a compressed vector is unflattened into.
Layout = tuple[tuple[str, tuple[int, ...]], ...]

MAGIC = b"FQ"
VERSION = 1
_FLAG_SPARSE = 1
_FLAG_BITMAP = 2
#: magic, version, bits, flags, reserved, step (float64), dim, nnz, layout digest (8 bytes).
_HEADER = struct.Struct("<2sBBBxd II8s")
HEADER_BYTES = _HEADER.size
MAX_DIM = 2**31 - 1


# -- layouts ---------------------------------------------------------------------------
def layout_of(weights: NDArrays) -> Layout:
    """Return the layout (names and shapes, in order) of ``weights``."""
    return tuple((name, tuple(int(d) for d in np.shape(arr))) for name, arr in weights.items())


def layout_size(layout: Layout) -> int:
    """Return the number of coordinates in ``layout``."""
    return sum(math.prod(shape) for _, shape in layout)


def layout_digest(layout: Layout) -> bytes:
    """8-byte SHA-256 prefix of the layout: an update for another model is refused."""
    text = ";".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in layout)
    return hashlib.sha256(text.encode()).digest()[:8]


def flatten(update: NDArrays) -> F64:
    """Concatenate the tensors of ``update`` into one float64 vector (model order)."""
    parts = [np.asarray(a, dtype=np.float64).reshape(-1) for a in update.values()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def unflatten(flat: npt.NDArray[Any], layout: Layout) -> NDArrays:
    """Split ``flat`` back into named tensors of ``layout`` (views, dtype kept)."""
    if flat.size != layout_size(layout):
        raise ConfigError(f"vector of {flat.size} values does not fit a model of {layout_size(layout)}")
    out: NDArrays = {}
    at = 0
    for name, shape in layout:
        n = math.prod(shape)
        out[name] = flat[at : at + n].reshape(shape)
        at += n
    return out


# -- pure steps ------------------------------------------------------------------------
def clip_l2(flat: F64, clip: float) -> tuple[F64, float]:
    """Scale ``flat`` to L2 norm at most ``clip``; return (clipped, original norm)."""
    norm = float(np.linalg.norm(flat))
    if not math.isfinite(norm):
        raise ConfigError("update holds NaN or infinite values; refusing to compress it")
    if norm > clip:
        return flat * (clip / norm), norm
    return flat, norm


def top_k_indices(flat: F64, k: int) -> npt.NDArray[np.uint32]:
    """Sorted indices of the ``k`` largest-magnitude entries (ties broken by position)."""
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.uint32)
    idx = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
    return np.sort(idx).astype(np.uint32)


def stochastic_quantize(values: F64, *, step: float, levels: int, rng: np.random.Generator) -> I64:
    """Unbiased stochastic rounding of ``values / step`` to integers in ``[-levels, levels]``.

    ``E[result] * step == values`` for every ``|value| <= levels * step``.
    """
    scaled = values / step
    low = np.floor(scaled)
    q = low + (rng.random(values.shape) < (scaled - low))
    out: I64 = np.clip(q, -levels, levels).astype(np.int64)
    return out


# -- the compressed form ---------------------------------------------------------------
@dataclass(frozen=True)
class CompressedUpdate:
    """A quantized (possibly sparse) update: ``value[i] = values[j] * step`` at ``indices[j]``.

    ``indices`` is ``None`` for a dense update. ``values`` are signed integers within
    ``[-levels, levels]``.
    """

    bits: int
    step: float
    dim: int
    digest: bytes
    values: I64
    indices: npt.NDArray[np.uint32] | None = None

    @property
    def levels(self) -> int:
        """Largest integer magnitude: ``2**(bits-1) - 1``."""
        return levels_for(self.bits)


def levels_for(bits: int) -> int:
    """``2**(bits-1) - 1``: the symmetric integer range of a ``bits``-bit quantizer."""
    return (1 << (bits - 1)) - 1


def integer_vector(update: CompressedUpdate) -> I64:
    """Return the dense signed-integer form (zeros where nothing was sent): the BFV codec's input."""
    out = np.zeros(update.dim, dtype=np.int64)
    if update.indices is None:
        out[:] = update.values
    else:
        out[update.indices] = update.values
    return out


def offset_integers(update: CompressedUpdate) -> npt.NDArray[np.uint64]:
    """Return ``integer_vector + M`` as uint64 in ``[0, 2M]``: the packed-BFV lane input.

    This is the exact output format of :func:`fedinfra.crypto.quantize.quantize` on the same
    grid (``delta = clip / M``), so it goes straight to
    :func:`fedinfra.crypto.quantize.pack_lanes` without re-quantizing.
    """
    return (integer_vector(update) + update.levels).astype(np.uint64)


def integer_tensors(update: CompressedUpdate, layout: Layout) -> NDArrays:
    """:func:`integer_vector` split into named int64 tensors (for per-tensor codecs)."""
    _check_layout(update, layout)
    return unflatten(integer_vector(update), layout)


def dequantize(update: CompressedUpdate, layout: Layout) -> NDArrays:
    """Return the float32 update the integers stand for (``integers * step``), by ``layout``."""
    _check_layout(update, layout)
    dense = (integer_vector(update).astype(np.float64) * update.step).astype(np.float32)
    return unflatten(dense, layout)


def max_l2_norm(*, clip: float, bits: int, nnz: int) -> float:
    """Worst-case L2 norm of a dequantized update: ``clip + step * sqrt(nnz)``.

    Each sent coordinate moves by less than one ``step`` when rounded, so this - not
    ``clip`` - is the sensitivity to calibrate central Gaussian noise to.
    """
    return clip + clip / levels_for(bits) * math.sqrt(nnz)


def _check_layout(update: CompressedUpdate, layout: Layout) -> None:
    if update.dim != layout_size(layout) or update.digest != layout_digest(layout):
        raise ConfigError("compressed update is for a different model; resend it for the current model")


# -- the stateful device-side compressor ------------------------------------------------
class UpdateCompressor:
    """Compresses one device's successive updates; holds its error-feedback memory.

    Parameters are keyword-only and validated here. ``rng`` drives stochastic rounding:
    pass ``fedinfra.privacy.noise.secure_generator()`` in production, a seeded one in tests.
    ``residual`` restores the memory saved by a previous process (see :attr:`residual`).
    """

    def __init__(
        self,
        *,
        clip: float,
        bits: int = 8,
        topk_fraction: float | None = None,
        error_feedback: bool = True,
        rng: np.random.Generator,
        residual: F64 | None = None,
    ) -> None:
        if not (math.isfinite(clip) and clip > 0):
            raise ConfigError(f"clip must be a positive finite number (got {clip})")
        if not 2 <= bits <= 16:
            raise ConfigError(f"bits must be in 2-16 (got {bits})")
        if topk_fraction is not None and not 0 < topk_fraction <= 1:
            raise ConfigError(f"topk_fraction must be in (0, 1] (got {topk_fraction})")
        self.clip = float(clip)
        self.bits = bits
        self.topk_fraction = topk_fraction
        self.error_feedback = error_feedback and topk_fraction is not None
        self.step = self.clip / levels_for(bits)
        self._rng = rng
        self._residual = None if residual is None else np.asarray(residual, dtype=np.float64).copy()
        self.last_norm = 0.0

    @property
    def residual(self) -> F64 | None:
        """The error-feedback memory (a copy), to persist across restarts."""
        return None if self._residual is None else self._residual.copy()

    def compress(self, update: NDArrays) -> CompressedUpdate:
        """Clip, optionally sparsify with error feedback, and quantize ``update``."""
        layout = layout_of(update)
        flat, self.last_norm = clip_l2(flatten(update), self.clip)
        indices: npt.NDArray[np.uint32] | None = None
        if self.topk_fraction is not None:
            if self.error_feedback and self._residual is not None and self._residual.shape == flat.shape:
                flat, _ = clip_l2(flat + self._residual, self.clip)
            k = max(1, math.ceil(self.topk_fraction * flat.size))
            if k < flat.size:
                indices = top_k_indices(flat, k)
        chosen = flat if indices is None else flat[indices]
        values = stochastic_quantize(chosen, step=self.step, levels=levels_for(self.bits), rng=self._rng)
        out = CompressedUpdate(self.bits, self.step, flat.size, layout_digest(layout), values, indices)
        if self.error_feedback:
            self._residual = flat - integer_vector(out).astype(np.float64) * self.step
        return out


# -- bytes -----------------------------------------------------------------------------
def _value_dtype(bits: int) -> np.dtype[Any]:
    return np.dtype("<i1") if bits <= 8 else np.dtype("<i2")


def _index_dtype(dim: int) -> np.dtype[Any]:
    return np.dtype("<u2") if dim <= 1 << 16 else np.dtype("<u4")


def _bitmap_is_smaller(dim: int, nnz: int) -> bool:
    """Whether ``nnz`` positions among ``dim`` take a bitmap (strictly smaller) or an index list."""
    return (dim + 7) // 8 < nnz * _index_dtype(dim).itemsize


def encode(update: CompressedUpdate) -> bytes:
    """Serialise ``update``: a 30-byte header, the positions (if sparse), the integers.

    Positions are a bitmap or a list of 16/32-bit indices, whichever is smaller (the list on
    a tie; :func:`decode` refuses the other form); values are int8 up to 8 bits, int16 above.
    """
    flags = 0
    body = b""
    nnz = update.dim
    if update.indices is not None:
        nnz = int(update.indices.size)
        flags |= _FLAG_SPARSE
        if _bitmap_is_smaller(update.dim, nnz):
            flags |= _FLAG_BITMAP
            mask = np.zeros(update.dim, dtype=bool)
            mask[update.indices] = True
            body = np.packbits(mask, bitorder="little").tobytes()
        else:
            body = update.indices.astype(_index_dtype(update.dim)).tobytes()
    header = _HEADER.pack(MAGIC, VERSION, update.bits, flags, update.step, update.dim, nnz, update.digest)
    return header + body + update.values.astype(_value_dtype(update.bits)).tobytes()


def decode(data: bytes, *, max_dim: int = MAX_DIM) -> CompressedUpdate:
    """Parse bytes from :func:`encode`; every length and range is checked first.

    Raises
    ------
    ConfigError
        If the bytes are not a well-formed compressed update.
    """
    bad = "malformed compressed update; resend it"
    if len(data) < HEADER_BYTES:
        raise ConfigError(bad)
    magic, version, bits, flags, step, dim, nnz, digest = _HEADER.unpack_from(data)
    # The pad byte must be zero: one update, one encoding (found by tests/fuzz, issue 16).
    if magic != MAGIC or version != VERSION or not 2 <= bits <= 16 or flags & ~3 or data[5] != 0:
        raise ConfigError(bad)
    if not (math.isfinite(step) and step > 0) or dim > max_dim or nnz > dim:
        raise ConfigError(bad)
    sparse = bool(flags & _FLAG_SPARSE)
    if not sparse and (flags or nnz != dim):
        raise ConfigError(bad)
    vdt = _value_dtype(bits)
    at = HEADER_BYTES
    indices: npt.NDArray[np.uint32] | None = None
    if sparse:
        # One update, one encoding: the positions in the form encode() writes, never the other.
        if bool(flags & _FLAG_BITMAP) != _bitmap_is_smaller(dim, nnz):
            raise ConfigError(bad)
        if flags & _FLAG_BITMAP:
            nbytes = (dim + 7) // 8
            if len(data) < at + nbytes:
                raise ConfigError(bad)
            bitmap = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=at)
            bits_all = np.unpackbits(bitmap, bitorder="little")
            if np.any(bits_all[dim:]):  # padding bits past dim must be zero (one encoding; tests/fuzz)
                raise ConfigError(bad)
            mask = bits_all[:dim].astype(bool)
            indices = np.flatnonzero(mask).astype(np.uint32)
            if indices.size != nnz:
                raise ConfigError(bad)
        else:
            idt = _index_dtype(dim)
            nbytes = nnz * idt.itemsize
            if len(data) < at + nbytes:
                raise ConfigError(bad)
            indices = np.frombuffer(data, dtype=idt, count=nnz, offset=at).astype(np.uint32)
            if nnz and (indices[-1] >= dim or np.any(np.diff(indices.astype(np.int64)) <= 0)):
                raise ConfigError(bad)
        at += nbytes
    if len(data) != at + nnz * vdt.itemsize:
        raise ConfigError(bad)
    values = np.frombuffer(data, dtype=vdt, count=nnz, offset=at).astype(np.int64)
    if values.size and int(np.max(np.abs(values))) > levels_for(bits):
        raise ConfigError(bad)
    return CompressedUpdate(int(bits), float(step), int(dim), bytes(digest), values, indices)


def decompress(data: bytes, layout: Layout, *, clip: float, bits: int) -> NDArrays:
    """Coordinator side: bytes from a device -> the float32 update for ``layout``.

    ``clip`` and ``bits`` are the job's: a reply quantized on another grid (a device could
    otherwise claim a larger ``step`` and outweigh everyone) or longer than
    :func:`max_l2_norm` is refused. Feed the result to
    :meth:`fedinfra.aggregation.StreamingFedAvg.add`.

    Raises
    ------
    ConfigError
        If the bytes are malformed, for another model, on another grid or too long.
    """
    update = decode(data, max_dim=layout_size(layout))
    if update.bits != bits or not math.isclose(update.step, clip / levels_for(bits), rel_tol=1e-12):
        raise ConfigError("compressed update uses another quantization grid than the job's; refused")
    values = dequantize(update, layout)
    norm = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in values.values())))
    if norm > max_l2_norm(clip=clip, bits=bits, nnz=int(update.values.size)) * (1 + 1e-6):
        raise ConfigError("compressed update exceeds the job's clip bound; refused")
    return values


def dense_bytes(layout: Layout) -> int:
    """Bytes of the uncompressed float32 update (the baseline a device would send)."""
    return 4 * layout_size(layout)


__all__ = [
    "HEADER_BYTES",
    "CompressedUpdate",
    "Layout",
    "UpdateCompressor",
    "clip_l2",
    "decode",
    "decompress",
    "dense_bytes",
    "dequantize",
    "encode",
    "flatten",
    "integer_tensors",
    "integer_vector",
    "layout_digest",
    "layout_of",
    "layout_size",
    "levels_for",
    "max_l2_norm",
    "offset_integers",
    "stochastic_quantize",
    "top_k_indices",
    "unflatten",
]
