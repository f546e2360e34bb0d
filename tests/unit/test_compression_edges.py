"""Edge cases of fedinfra.aggregation.compression (issue 20, its mutation survivors).

What is protected here: the wire format byte for byte (header, 16/32-bit index lists, the
bitmap, int8/int16 values), one encoding per update (the positions in the form ``encode``
picks), every refusal of ``decode`` and ``decompress`` with its exact message, the clip
bound ``max_l2_norm`` at its edge, and the known answers of quantisation and top-k.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

import numpy as np
import pytest

from fedinfra.aggregation.compression import (
    HEADER_BYTES,
    CompressedUpdate,
    UpdateCompressor,
    clip_l2,
    decode,
    decompress,
    dense_bytes,
    dequantize,
    encode,
    flatten,
    integer_tensors,
    integer_vector,
    layout_digest,
    levels_for,
    max_l2_norm,
    stochastic_quantize,
    top_k_indices,
    unflatten,
)
from fedinfra.errors import ConfigError

MALFORMED = "malformed compressed update; resend it"
OTHER_MODEL = "compressed update is for a different model; resend it for the current model"
OTHER_GRID = "compressed update uses another quantization grid than the job's; refused"
TOO_LONG = "compressed update exceeds the job's clip bound; refused"
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


# -- the wire format, byte for byte ----------------------------------------------------------
def test_dense_encoding_is_the_header_then_int8_values():
    """A dense update of <= 8 bits is the 30-byte header and one signed byte per coordinate."""
    assert HEADER.size == HEADER_BYTES == 30
    update = _update(4, [1, -2, 127, -127])
    blob = encode(update)
    assert blob == _blob(values=_i8([1, -2, 127, -127]))
    back = decode(blob)
    assert (back.bits, back.step, back.dim, back.digest, back.indices) == (8, 0.5, 4, DIGEST, None)
    assert back.values.dtype == np.int64
    assert back.values.tolist() == [1, -2, 127, -127]


@pytest.mark.parametrize("bits", [9, 12, 16])
def test_values_above_8_bits_are_int16(bits):
    """From 9 bits on each value takes two little-endian bytes (255 does not fit an int8)."""
    top = levels_for(bits)
    update = _update(3, [top, -top, 3], bits=bits)
    blob = encode(update)
    assert blob == _blob(bits=bits, dim=3, values=np.array([top, -top, 3], dtype="<i2").tobytes())
    assert decode(blob).values.tolist() == [top, -top, 3]


@pytest.mark.parametrize(("dim", "width"), [(100, "<u2"), (1 << 16, "<u2"), ((1 << 16) + 1, "<u4"), (1 << 17, "<u4")])
def test_index_list_is_16_bit_up_to_65536_coordinates_then_32_bit(dim, width):
    """Positions are uint16 while every index fits (dim <= 65536), uint32 beyond."""
    indices = [0, 7, dim - 1]
    blob = encode(_update(dim, [5, -6, 7], indices))
    assert blob == _blob(
        flags=1, dim=dim, nnz=3, positions=np.array(indices, dtype=width).tobytes(), values=_i8([5, -6, 7])
    )
    back = decode(blob)
    assert back.indices is not None
    assert back.indices.dtype == np.uint32
    assert back.indices.tolist() == indices
    assert integer_vector(back)[indices].tolist() == [5, -6, 7]


# (dim, indices, bitmap?): the bitmap takes ceil(dim / 8) bytes, the list 2 bytes an index;
# the bitmap only when strictly smaller, the list on a tie.
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
    """encode writes a bitmap only when it is smaller than the index list, and decode reads it back."""
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


def test_empty_updates_are_the_bare_header():
    """A model without coordinates and a sparse update that sends none are the 30-byte header alone and decode."""
    empty = encode(_update(0, []))
    assert empty == _blob(dim=0)
    back = decode(empty)
    assert (back.dim, back.values.size, back.indices) == (0, 0, None)
    none_sent = encode(_update(10, [], []))
    assert none_sent == _blob(flags=1, dim=10, nnz=0)
    back = decode(none_sent)
    assert back.indices is not None
    assert back.indices.size == 0
    assert integer_vector(back).tolist() == [0] * 10


# -- decode refuses, by field ----------------------------------------------------------------
def test_the_base_blobs_of_the_refusal_cases_decode():
    """The valid blobs the refusal cases below change one field of are accepted as they are."""
    assert decode(_blob(values=_i8([1, 2, 3, 4]))).values.tolist() == [1, 2, 3, 4]
    list_blob = _blob(flags=1, dim=100, nnz=3, positions=np.array([1, 2, 99], "<u2").tobytes(), values=_i8([1, 1, 1]))
    assert decode(list_blob).values.tolist() == [1, 1, 1]
    bitmap_blob = _blob(flags=3, dim=17, nnz=3, positions=_bitmap(17, [0, 8, 16]), values=_i8([1, 1, 1]))
    assert decode(bitmap_blob).indices.tolist() == [0, 8, 16]  # type: ignore[union-attr]


DENSE = _i8([1, 2, 3, 4])


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(_blob(values=DENSE)[: HEADER_BYTES - 1], id="shorter-than-header"),
        pytest.param(_blob(magic=b"FR", values=DENSE), id="magic"),
        pytest.param(_blob(version=0, values=DENSE), id="version-0"),
        pytest.param(_blob(version=2, values=DENSE), id="version-2"),
        pytest.param(_blob(bits=0, values=DENSE), id="bits-0"),
        pytest.param(_blob(bits=1, values=_i8([0, 0, 0, 0])), id="bits-1"),
        pytest.param(_blob(bits=17, values=np.array([1, 2, 3, 4], "<i2").tobytes()), id="bits-17"),
        pytest.param(_blob(bits=255, values=np.array([1, 2, 3, 4], "<i2").tobytes()), id="bits-255"),
        pytest.param(_blob(flags=4, values=DENSE), id="flag-4-dense"),
        pytest.param(
            _blob(flags=5, dim=100, nnz=3, positions=np.array([1, 2, 99], "<u2").tobytes(), values=_i8([1, 1, 1])),
            id="flag-4-on-sparse",
        ),
        pytest.param(_blob(flags=128, values=DENSE), id="flag-128"),
        pytest.param(_blob(flags=2, values=DENSE), id="bitmap-without-sparse"),
        pytest.param(_blob(pad=1, values=DENSE), id="pad-byte"),
        pytest.param(_blob(step=0.0, values=DENSE), id="step-0"),
        pytest.param(_blob(step=-0.5, values=DENSE), id="step-negative"),
        pytest.param(_blob(step=math.nan, values=DENSE), id="step-nan"),
        pytest.param(_blob(step=math.inf, values=DENSE), id="step-inf"),
        pytest.param(_blob(step=-math.inf, values=DENSE), id="step-minus-inf"),
        pytest.param(_blob(nnz=3, values=_i8([1, 2, 3])), id="dense-with-fewer-values"),
        pytest.param(_blob(nnz=5, values=_i8([1, 2, 3, 4, 5])), id="dense-with-more-values"),
        pytest.param(_blob(values=_i8([1, 2, 3, 8]))[:-1] + bytes([128]), id="value-minus-128"),
        pytest.param(_blob(bits=4, values=_i8([1, 2, 3, 8])), id="value-above-levels"),
        pytest.param(_blob(bits=4, values=_i8([-8, 2, 3, 7])), id="value-below-levels"),
        pytest.param(_blob(values=DENSE + b"\x00"), id="trailing-byte"),
    ],
)
def test_decode_refuses_a_malformed_header_or_body(blob):
    """Each field out of range is refused with the one malformed message (never a numpy error)."""
    _refused(blob)


def test_decode_refuses_more_coordinates_than_max_dim():
    """``max_dim`` bounds dim itself: one coordinate more than allowed is refused."""
    blob = _blob(values=DENSE)
    assert decode(blob, max_dim=4).dim == 4
    _refused(blob, max_dim=3)


LIST_DIM = 100


def _list(indices: list[int], nnz: int | None = None, values: bytes | None = None) -> bytes:
    n = len(indices) if nnz is None else nnz
    vals = _i8([1] * n) if values is None else values
    return _blob(flags=1, dim=LIST_DIM, nnz=n, positions=np.array(indices, "<u2").tobytes(), values=vals)


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(_list([1, 2, 100]), id="last-index-equals-dim"),
        pytest.param(_list([1, 2, 3, 4000]), id="last-index-past-dim"),
        pytest.param(_list([5, 1, 2]), id="unsorted"),
        pytest.param(_list([1, 9, 3, 50]), id="unsorted-in-the-middle"),
        pytest.param(_list([2, 2, 5]), id="duplicate"),
        pytest.param(_list([3])[: HEADER_BYTES + 1], id="list-cut-short"),
        pytest.param(_list([3, 7, 9, 11, 13])[: HEADER_BYTES + 3], id="list-cut-mid-index"),
    ],
)
def test_decode_refuses_a_bad_index_list(blob):
    """Indices must be strictly increasing and below dim, and all there."""
    _refused(blob)


def test_decode_accepts_neighbouring_indices_and_index_zero():
    """Consecutive positions (a difference of 1) and position 0 are valid."""
    back = decode(_list([0, 1, 2, 99], values=_i8([4, -3, 2, -1])))
    assert integer_vector(back)[[0, 1, 2, 99]].tolist() == [4, -3, 2, -1]
    assert int(np.count_nonzero(integer_vector(back))) == 4


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(_blob(flags=3, dim=64, nnz=5, positions=_bitmap(64, [0, 1, 2, 3, 63])[:3]), id="bitmap-cut-short"),
        pytest.param(
            _blob(flags=3, dim=17, nnz=3, positions=_bitmap(17, [0, 8, 16])[:2] + bytes([0b11]), values=_i8([1, 1, 1])),
            id="bitmap-padding-bit",
        ),
        pytest.param(
            _blob(flags=3, dim=64, nnz=5, positions=_bitmap(64, [0, 1, 2, 3]), values=_i8([1] * 5)), id="bitmap-count"
        ),
    ],
)
def test_decode_refuses_a_bad_bitmap(blob):
    """A bitmap must be whole, its padding bits zero, and its count nnz."""
    _refused(blob)


# -- decompress: the job's grid and clip bound -------------------------------------------------
SQUARE = (("w", (4,)),)


def _reply(values: list[int], *, clip: float, bits: int, layout: Any = SQUARE, step: float | None = None) -> bytes:
    dim = sum(math.prod(shape) for _, shape in layout)
    update = CompressedUpdate(
        bits,
        clip / levels_for(bits) if step is None else step,
        dim,
        layout_digest(layout),
        np.array(values, dtype=np.int64),
    )
    return encode(update)


def test_decompress_accepts_an_update_exactly_at_the_clip_bound():
    """max_l2_norm is tight: at 16 bits, (32767, 256, 256, 0) has norm (levels + sqrt(4)) * step
    = max_l2_norm exactly, and is accepted; the tolerance only widens the bound."""
    levels = levels_for(16)
    assert levels**2 + 2 * 256**2 == (levels + 2) ** 2
    out = decompress(_reply([levels, 256, 256, 0], clip=1.0, bits=16), SQUARE, clip=1.0, bits=16)
    step = 1.0 / levels
    assert out["w"].tolist() == np.array([levels * step, 256 * step, 256 * step, 0.0], dtype=np.float32).tolist()
    norm = float(np.linalg.norm(out["w"].astype(np.float64)))
    assert math.isclose(norm, max_l2_norm(clip=1.0, bits=16, nnz=4), rel_tol=1e-6)


def test_decompress_refuses_an_update_over_the_clip_bound():
    """(32767, 32767, 0, 0) is sqrt(2) times clip, 1.41 times max_l2_norm: refused by name."""
    levels = levels_for(16)
    with pytest.raises(ConfigError) as err:
        decompress(_reply([levels, levels, 0, 0], clip=1.0, bits=16), SQUARE, clip=1.0, bits=16)
    assert str(err.value) == TOO_LONG


def test_decompress_bound_holds_at_a_tiny_clip():
    """The norm is taken in float64: at clip 1e-30 the float32 squares underflow to zero, and an
    update of twice the clip must still be refused."""
    clip = 1e-30
    with pytest.raises(ConfigError) as err:
        decompress(_reply([127, 127, 127, 127], clip=clip, bits=8), SQUARE, clip=clip, bits=8)
    assert str(err.value) == TOO_LONG
    ok = decompress(_reply([127, 0, 0, 0], clip=clip, bits=8), SQUARE, clip=clip, bits=8)
    assert float(ok["w"][0]) == pytest.approx(clip, rel=1e-6)


def test_decompress_refuses_a_step_off_the_grid_by_one_part_in_ten_billion():
    """The step must be the job's to 1e-12: a device cannot claim a slightly larger step."""
    step = 1.0 / 127 * (1 + 1e-10)
    with pytest.raises(ConfigError) as err:
        decompress(_reply([1, 2, 3, 4], clip=1.0, bits=8, step=step), SQUARE, clip=1.0, bits=8)
    assert str(err.value) == OTHER_GRID
    with pytest.raises(ConfigError) as err:
        decompress(_reply([1, 2, 3, 4], clip=1.0, bits=8), SQUARE, clip=1.0, bits=7)
    assert str(err.value) == OTHER_GRID


def test_decompress_refuses_a_reply_for_a_bigger_model_as_malformed():
    """decode is bounded by the job's model size: five coordinates for a four-coordinate model
    are malformed before anything is dequantized."""
    bigger = (("w", (5,)),)
    blob = _reply([1, 2, 3, 4, 5], clip=1.0, bits=8, layout=bigger)
    with pytest.raises(ConfigError) as err:
        decompress(blob, SQUARE, clip=1.0, bits=8)
    assert str(err.value) == MALFORMED


def test_another_model_is_refused_by_name():
    """Same size, other tensor names: dequantize and integer_tensors refuse with the resend message."""
    update = decode(_reply([1, 2, 3, 4], clip=1.0, bits=8))
    other = (("v", (4,)),)
    for call in (dequantize, integer_tensors):
        with pytest.raises(ConfigError) as err:
            call(update, other)
        assert str(err.value) == OTHER_MODEL
    assert integer_tensors(update, SQUARE)["w"].tolist() == [1, 2, 3, 4]


# -- known answers ------------------------------------------------------------------------------
def test_layout_digest_is_the_sha256_of_the_documented_text():
    """``name:AxB`` joined by ``;``: the text other implementations must hash the same way."""
    layout = (("fc1.weight", (32, 64)), ("fc1.bias", (32,)))
    assert layout_digest(layout) == hashlib.sha256(b"fc1.weight:32x64;fc1.bias:32").digest()[:8]


def test_dense_bytes_and_max_l2_norm_known_answers():
    """Four bytes a float32 coordinate; the bound is clip + clip / levels * sqrt(nnz)."""
    assert dense_bytes((("a", (2, 3)), ("b", (4,)))) == 40
    assert max_l2_norm(clip=2.0, bits=8, nnz=9) == 2.0 + 2.0 / 127 * 3
    assert max_l2_norm(clip=1.0, bits=2, nnz=4) == 3.0


def test_flatten_is_float64_in_model_order():
    """A float32 (or integer) model's update becomes one float64 vector, so clipping and the
    error-feedback memory are computed in float64; no tensors is an empty float64 vector."""
    flat = flatten({"a": np.array([[1.5, 2.25]], dtype=np.float32), "b": np.array([3, 4], dtype=np.float32)})
    assert flat.dtype == np.float64
    assert flat.tolist() == [1.5, 2.25, 3.0, 4.0]
    counts = flatten({"n": np.array([[1], [2]], dtype=np.int16)})
    assert counts.dtype == np.float64
    assert counts.tolist() == [1.0, 2.0]
    empty = flatten({})
    assert empty.dtype == np.float64
    assert empty.shape == (0,)


def test_unflatten_names_both_sizes_when_they_differ():
    """A vector of the wrong size is refused with both sizes in the message."""
    with pytest.raises(ConfigError) as err:
        unflatten(np.zeros(5), (("a", (2, 3)),))
    assert str(err.value) == "vector of 5 values does not fit a model of 6"


def test_integer_vector_is_int64_with_zeros_where_nothing_was_sent():
    """The BFV codec's input is signed int64, dense or sparse."""
    dense = integer_vector(_update(3, [1, -2, 3]))
    sparse = integer_vector(_update(5, [7, -7], [1, 4]))
    assert dense.dtype == sparse.dtype == np.int64
    assert dense.tolist() == [1, -2, 3]
    assert sparse.tolist() == [0, 7, 0, 0, -7]


def test_clip_l2_refuses_nan_by_name():
    """A NaN or infinite update is refused with the message that says so."""
    for bad in (np.array([1.0, np.nan]), np.array([np.inf, 0.0])):
        with pytest.raises(ConfigError) as err:
            clip_l2(bad, 1.0)
        assert str(err.value) == "update holds NaN or infinite values; refusing to compress it"


def test_top_k_indices_known_answers():
    """The k largest magnitudes, sorted, as uint32; k >= size is every index."""
    flat = np.array([0.1, -5.0, 0.2, 4.0, -0.3])
    got = top_k_indices(flat, 2)
    assert got.dtype == np.uint32
    assert got.tolist() == [1, 3]
    for k in (5, 6):
        every = top_k_indices(flat, k)
        assert every.dtype == np.uint32
        assert every.tolist() == [0, 1, 2, 3, 4]
    assert top_k_indices(np.zeros(0), 0).tolist() == []


class _Draws:
    """A stand-in for ``Generator.random`` that returns one fixed draw in [0, 1) everywhere."""

    def __init__(self, draw: float) -> None:
        self.draw = draw

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.full(shape, self.draw)


def test_stochastic_quantize_on_the_grid_is_exact_for_every_draw():
    """A value on the grid rounds to itself even for the draws 0.0 and the largest below 1."""
    values = np.array([0.0, 0.5, -1.5, 2.0])
    for draw in (0.0, 0.5, np.nextafter(1.0, 0.0)):
        got = stochastic_quantize(values, step=0.5, levels=127, rng=_Draws(draw))  # type: ignore[arg-type]
        assert got.tolist() == [0, 1, -3, 4]
    # off the grid the draw decides: 0.25 is a quarter of the way from 0 to 1 step
    quarter = np.array([0.125])
    assert stochastic_quantize(quarter, step=0.5, levels=127, rng=_Draws(0.0)).tolist() == [1]  # type: ignore[arg-type]
    assert stochastic_quantize(quarter, step=0.5, levels=127, rng=_Draws(0.25)).tolist() == [0]  # type: ignore[arg-type]


def test_stochastic_quantize_draws_once_per_coordinate():
    """Each coordinate rounds independently (the noise bound of the aggregate assumes it): 1000
    values half a step above the grid round both ways (all one way: probability 2**-999)."""
    got = stochastic_quantize(np.full(1000, 0.25), step=0.5, levels=127, rng=np.random.default_rng(0))
    assert got.dtype == np.int64
    assert set(got.tolist()) == {0, 1}
    assert 400 < int(got.sum()) < 600  # binomial(1000, 1/2): 6.3 standard deviations either side


def test_stochastic_quantize_saturates_at_plus_and_minus_levels():
    """Values beyond the grid are held to [-levels, levels]."""
    got = stochastic_quantize(np.array([-100.0, 100.0, 3.0]), step=1.0, levels=7, rng=np.random.default_rng(0))
    assert got.tolist() == [-7, 7, 3]


# -- the compressor ------------------------------------------------------------------------------
def test_compressor_parameter_edges():
    """bits 16 and topk_fraction 1 are allowed; bits 17 and topk_fraction 0 are refused by name."""
    rng = np.random.default_rng(0)
    assert UpdateCompressor(clip=1.0, bits=16, rng=rng).step == 1.0 / 32767
    with pytest.raises(ConfigError) as err:
        UpdateCompressor(clip=1.0, bits=17, rng=rng)
    assert str(err.value) == "bits must be in 2-16 (got 17)"
    with pytest.raises(ConfigError) as err:
        UpdateCompressor(clip=1.0, topk_fraction=0.0, rng=rng)
    assert str(err.value) == "topk_fraction must be in (0, 1] (got 0.0)"


def _vector(dim: int, seed: int) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).standard_normal(dim).astype(np.float32) * 0.01}


def test_topk_sends_at_least_one_coordinate_and_all_of_them_densely():
    """A tiny fraction still sends the single largest coordinate; a fraction of 1 is the dense form."""
    u = _vector(100, 1)
    one = UpdateCompressor(clip=1.0, topk_fraction=0.001, rng=np.random.default_rng(0)).compress(u)
    assert one.indices is not None
    assert one.indices.tolist() == [int(np.argmax(np.abs(u["w"])))]
    assert one.values.size == 1
    every = UpdateCompressor(clip=1.0, topk_fraction=1.0, rng=np.random.default_rng(0)).compress(u)
    assert every.indices is None
    assert every.values.size == 100
    assert encode(every)[4] == 0  # the dense flags


def test_error_feedback_is_kept_only_when_asked_for_with_topk():
    """Dense compression keeps no memory, nor does top-k with error_feedback=False: then the
    same update with the same draws compresses to the same bytes every time."""
    u = _vector(50, 2)
    dense = UpdateCompressor(clip=1.0, rng=np.random.default_rng(0))
    assert dense.last_norm == 0.0
    assert dense.residual is None
    dense.compress(u)
    assert not dense.error_feedback
    assert dense.residual is None
    assert dense.last_norm == pytest.approx(float(np.linalg.norm(flatten(u))))
    forgetful = UpdateCompressor(clip=1.0, topk_fraction=0.1, error_feedback=False, rng=np.random.default_rng(0))
    assert not forgetful.error_feedback
    sent = [forgetful.compress(u).indices for _ in range(3)]
    assert forgetful.residual is None
    assert all(s is not None and s.tolist() == sent[0].tolist() for s in sent)  # type: ignore[union-attr]


def test_a_restored_residual_continues_exactly_where_the_old_process_stopped():
    """``residual=`` restores the memory: a new compressor given the old one's residual (and the
    same draws) sends exactly what the old one would have sent next; without it, something else."""
    u1, u2 = _vector(200, 3), _vector(200, 4)
    gen = np.random.default_rng(5)
    old = UpdateCompressor(clip=1.0, topk_fraction=0.05, rng=gen)
    old.compress(u1)
    saved = old.residual
    assert saved is not None
    assert saved.dtype == np.float64

    def same_draws() -> np.random.Generator:
        g = np.random.default_rng()
        g.bit_generator.state = gen.bit_generator.state
        return g

    restored = UpdateCompressor(clip=1.0, topk_fraction=0.05, rng=same_draws(), residual=saved)
    fresh = UpdateCompressor(clip=1.0, topk_fraction=0.05, rng=same_draws())
    assert fresh.residual is None
    np.testing.assert_array_equal(restored.residual, saved)
    expected = encode(old.compress(u2))
    assert encode(restored.compress(u2)) == expected
    assert encode(fresh.compress(u2)) != expected


def test_residual_is_stored_as_a_float64_copy():
    """The memory is copied in and out as float64 (a float32 file or a list is accepted)."""
    given32 = np.array([0.5, -0.25, 0.125], dtype=np.float32)
    comp = UpdateCompressor(clip=1.0, topk_fraction=0.5, rng=np.random.default_rng(0), residual=given32)
    given32[0] = 9.0
    kept = comp.residual
    assert kept is not None
    assert kept.dtype == np.float64
    assert kept.tolist() == [0.5, -0.25, 0.125]
    kept[1] = 9.0
    assert comp.residual.tolist() == [0.5, -0.25, 0.125]  # type: ignore[union-attr]
    from_list = UpdateCompressor(clip=1.0, topk_fraction=0.5, rng=np.random.default_rng(0), residual=[1, 2])  # type: ignore[arg-type]
    assert from_list.residual.dtype == np.float64  # type: ignore[union-attr]
