"""The integer update that SecAgg masks (:mod:`fedinfra.crypto.secagg.codec`): the sum is exact.

A site clips, weighs by ``n / example_cap`` and stochastically rounds its update to ``b``-bit
offset integers (BatchCrypt, Zhang et al., USENIX ATC 2020), adds a trailer ``(n, 1)``, and
masks everything modulo ``2^L`` (Bonawitz et al., CCS 2017): the coordinator unmasks only the
integer sum and decodes the weighted mean from it. These tests pin the segment layout, the
boundaries every range check draws (at, just inside, just outside), the fixed-point
evaluation sums and the wire form at every width class.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedinfra.config.secagg import SecureAggSpec
from fedinfra.crypto.quantize import quant_max
from fedinfra.crypto.secagg import codec
from fedinfra.errors import ConfigError, CryptoError


def _spec(**change: object) -> SecureAggSpec:
    fields: dict[str, object] = {
        "mode": "secagg",
        "quant_bits": 8,
        "max_sites": 4,
        "clip": 2.0,
        "example_cap": 100,
        "min_contributors": 2,
    }
    fields.update(change)
    return SecureAggSpec.model_validate(fields)


# -- the segments -------------------------------------------------------------------------------


def test_the_segments_are_update_lanes_trailer_and_optional_evaluation_sums():
    spec = _spec(quant_bits=20, max_sites=10)  # L = 20 + ceil(log2 10) = 24

    assert codec.widths(spec) == [24, 64]
    assert codec.widths(spec, 3) == [24, 64, 64]
    assert codec.sizes(1000) == [1000, 2]
    assert codec.sizes(1000, 3) == [1000, 2, 3]


def test_the_wire_size_is_whole_bytes_per_value_per_segment():
    assert codec.wire_size([1000, 2], [24, 64]) == 1000 * 3 + 2 * 8
    assert codec.wire_size([5, 2, 3], [9, 64, 64]) == 5 * 2 + 16 + 24
    assert codec.wire_size([7], [8]) == 7
    assert codec.wire_size([7], [1]) == 7
    with pytest.raises(ValueError):
        codec.wire_size([7, 2], [8])


# -- encode / decode ------------------------------------------------------------------------------


def _sum(segments: list[list[np.ndarray]], bits: list[int]) -> list[np.ndarray]:
    """The coordinator's unmasked total: each segment summed modulo its width."""
    out = []
    for i, b in enumerate(bits):
        total = np.zeros_like(segments[0][i])
        for seg in segments:
            total = total + seg[i]
        out.append(total & np.uint64((1 << b) - 1) if b < 64 else total)
    return out


def test_the_decoded_sum_is_the_example_weighted_mean_within_quantization_error():
    spec = _spec(quant_bits=16, max_sites=4, clip=1.0, example_cap=100)
    rng = np.random.default_rng(3)
    updates = [rng.uniform(-0.9, 0.9, size=500) for _ in range(3)]
    counts = [10, 30, 60]
    encoded = [codec.encode(u, n, spec, rng) for u, n in zip(updates, counts, strict=True)]

    mean, examples, sites = codec.decode(_sum(encoded, codec.widths(spec)), spec)

    expected = sum(n * u for n, u in zip(counts, updates, strict=True)) / sum(counts)
    assert (examples, sites) == (100, 3)
    assert mean.dtype == np.float32
    # Each site's stochastic rounding is off by less than one step clip / M in weight * value units;
    # three of them, scaled by example_cap / examples = 1: within 3 steps everywhere.
    step = spec.clip / quant_max(spec.quant_bits)
    assert np.max(np.abs(mean - expected)) < 3 * step


def test_a_site_encodes_its_trailer_as_its_example_count_and_one():
    spec = _spec()
    lanes, trailer = codec.encode(np.zeros(4), 37, spec, np.random.default_rng(0))

    assert trailer.dtype == np.uint64
    assert trailer.tolist() == [37, 1]
    assert lanes.tolist() == [quant_max(8)] * 4  # zero sits at the offset M


def test_an_update_is_clipped_before_it_is_quantized():
    spec = _spec(clip=2.0, example_cap=10)
    big = codec.encode(np.array([50.0, -50.0, 2.0]), 10, spec, np.random.default_rng(1))[0]
    at_clip = codec.encode(np.array([2.0, -2.0, 2.0]), 10, spec, np.random.default_rng(1))[0]

    assert big.tolist() == at_clip.tolist() == [2 * quant_max(8), 0, 2 * quant_max(8)]


def test_an_update_is_clipped_before_it_is_weighed():
    # Weight 0.1: a value of +/-50 is first cut to +/-clip, then weighed to +/-0.1 clip (not to the
    # full quantization range, which a clip after weighing would give).
    spec = _spec(clip=2.0, example_cap=100, quant_bits=16)
    m = quant_max(16)
    big = codec.encode(np.array([50.0, -50.0] * 500), 10, spec, np.random.default_rng(4))[0].astype(np.float64)
    at_clip = codec.encode(np.array([2.0, -2.0] * 500), 10, spec, np.random.default_rng(4))[0].astype(np.float64)

    assert big.tolist() == at_clip.tolist()
    assert abs(float(np.mean(big[0::2])) - (m + 0.1 * m)) < 1.0
    assert abs(float(np.mean(big[1::2])) - (m - 0.1 * m)) < 1.0


def test_an_update_is_weighed_by_its_share_of_the_example_cap():
    spec = _spec(clip=1.0, example_cap=100, quant_bits=16)
    lanes = codec.encode(np.full(2000, 1.0), 25, spec, np.random.default_rng(2))[0]
    m = quant_max(16)

    assert abs(float(np.mean(lanes.astype(np.float64))) - m - 0.25 * m) < 1.0


@pytest.mark.parametrize("n", [0, -1, 101])
def test_an_example_count_outside_one_to_the_cap_is_refused(n):
    with pytest.raises(ConfigError, match=rf"num_examples={n} must be in \[1, secure_aggregation.example_cap=100\]"):
        codec.encode(np.zeros(3), n, _spec(), np.random.default_rng(0))


@pytest.mark.parametrize("n", [1, 100])
def test_an_example_count_at_either_end_is_accepted(n):
    assert codec.encode(np.zeros(3), n, _spec(), np.random.default_rng(0))[1].tolist() == [n, 1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_an_update_with_nan_or_infinity_is_refused(bad):
    with pytest.raises(ConfigError, match=r"^update contains NaN or infinity; check the training step$"):
        codec.encode(np.array([0.5, bad, 0.1]), 5, _spec(), np.random.default_rng(0))


def test_an_empty_update_encodes_to_an_empty_segment():
    lanes, trailer = codec.encode(np.zeros(0), 5, _spec(), np.random.default_rng(0))

    assert lanes.shape == (0,)
    assert trailer.tolist() == [5, 1]


def _total(lanes: list[int], examples: int, sites: int) -> list[np.ndarray]:
    return [np.array(lanes, dtype=np.uint64), np.array([examples, sites], dtype=np.uint64)]


@pytest.mark.parametrize(
    ("examples", "sites"),
    [(1, 1), (400, 4), (100, 1), (4, 4)],  # the extremes the trailer may hold
)
def test_a_trailer_within_range_decodes(examples, sites):
    spec = _spec()  # max_sites 4, example_cap 100
    m = quant_max(8)

    mean, got_examples, got_sites = codec.decode(_total([sites * m], examples, sites), spec)

    assert (got_examples, got_sites) == (examples, sites)
    assert mean.tolist() == [0.0]


@pytest.mark.parametrize(
    ("examples", "sites"),
    [(1, 0), (10, 5), (0, 2), (201, 2), (101, 1)],
)
def test_an_impossible_trailer_is_refused(examples, sites):
    with pytest.raises(
        CryptoError, match=r"^secure aggregation: the unmasked sum is inconsistent \(trailer out of range\)$"
    ):
        codec.decode(_total([0], examples, sites), _spec())


def test_a_lane_above_what_the_sites_can_sum_is_refused_and_the_bound_itself_is_not():
    spec = _spec()
    m = quant_max(8)
    top = 3 * 2 * m  # three sites, each at most 2M

    mean, _, _ = codec.decode(_total([top, 0], 300, 3), spec)
    assert mean.tolist() == pytest.approx([spec.clip * 3 * 100 / 300, -spec.clip * 3 * 100 / 300])
    with pytest.raises(
        CryptoError, match=r"^secure aggregation: the unmasked sum is inconsistent \(lane out of range\)$"
    ):
        codec.decode(_total([top + 1, 0], 300, 3), spec)


def test_the_mean_is_rescaled_from_the_cap_to_the_examples_that_took_part():
    spec = _spec(clip=1.0, example_cap=100)
    m = quant_max(8)
    # Two sites of 50 examples each sent weight 0.5 * value: lanes 2M + 2 * round(0.5 * v * M).
    lanes = [2 * m + m]  # sum of weighted values = 1.0 -> mean over 100 of 100 possible examples = 1.0

    mean, _, _ = codec.decode(_total(lanes, 100, 2), spec)
    assert mean.tolist() == pytest.approx([1.0])
    mean, _, _ = codec.decode(_total(lanes, 50, 2), spec)
    assert mean.tolist() == pytest.approx([2.0])


@pytest.mark.parametrize("width", [4, 5])
def test_a_sum_longer_than_a_decode_slice_decodes_every_value(width: int, monkeypatch: pytest.MonkeyPatch):
    # decode works DECODE_SLICE lanes at a time: the values on both sides of each cut and in the
    # short last slice must come out as the whole-vector formula (same float operations per value),
    # whatever the slice width (small widths make every cut cheap to reach).
    monkeypatch.setattr(codec, "DECODE_SLICE", width)
    spec = _spec(clip=1.5, example_cap=100)
    m = quant_max(8)
    n = 2 * width + 3
    lanes = (np.arange(n, dtype=np.uint64) * np.uint64(7919)) % np.uint64(3 * 2 * m + 1)

    mean, _, _ = codec.decode(_total(lanes.tolist(), 170, 3), spec)

    expected = ((lanes.astype(np.float64) - 3 * m) * (spec.clip / m) * (100 / 170)).astype(np.float32)
    assert mean.shape == (n,)
    assert np.array_equal(mean, expected)


def test_an_empty_sum_decodes_to_an_empty_mean():
    mean, examples, sites = codec.decode(_total([], 5, 1), _spec())

    assert mean.shape == (0,)
    assert (examples, sites) == (5, 1)


# -- evaluation sums ------------------------------------------------------------------------------


def test_the_evaluation_bound_lets_max_sites_values_sum_below_two_to_the_64():
    spec = _spec(max_sites=4)

    assert codec.eval_bound(spec) == (2**64 - 1) // 4
    assert 4 * codec.eval_bound(spec) <= 2**64 - 1
    assert codec.eval_limit(spec) == codec.eval_bound(spec) / 2 / 2**16
    # 5 divides 2^64 - 1: five values at the bound sum to exactly 2^64 - 1, the largest that fits.
    assert codec.eval_bound(_spec(max_sites=5)) == (2**64 - 1) // 5
    assert 5 * codec.eval_bound(_spec(max_sites=5)) == 2**64 - 1


def test_evaluation_sums_are_fixed_point_with_a_resolution_of_two_to_the_minus_16():
    values = np.array([0.0, 1.0, 2.5, 1 / 3, 12345.678])

    encoded = codec.encode_eval(values, _spec())

    assert encoded.dtype == np.uint64
    assert encoded.tolist() == [0, 65536, 163840, 21845, round(12345.678 * 65536)]
    assert codec.decode_eval(encoded, 1, _spec()).tolist() == pytest.approx(values.tolist(), abs=2**-17)


def test_evaluation_sums_in_any_shape_are_encoded_flat_in_order():
    grid = np.array([[1.0, 2.0], [3.0, 4.0]])

    assert codec.encode_eval(grid, _spec()).tolist() == [65536, 131072, 196608, 262144]
    assert codec.encode_eval(np.float64(0.5), _spec()).tolist() == [32768]


def test_an_evaluation_sum_at_the_limit_is_accepted_and_one_above_is_refused():
    spec = _spec(max_sites=4)
    limit = codec.eval_limit(spec)

    assert int(codec.encode_eval(np.array([limit]), spec)[0]) <= codec.eval_bound(spec)
    with pytest.raises(ConfigError, match=r"evaluation sum loss_sum = .* is outside"):
        codec.encode_eval(np.array([np.nextafter(limit, np.inf)]), spec, ["loss_sum"])


@pytest.mark.parametrize("bad", [-1e-9, np.nan, np.inf])
def test_a_negative_or_non_finite_evaluation_sum_is_refused_naming_it(bad):
    spec = _spec(max_sites=4)

    with pytest.raises(
        ConfigError,
        match=r"^evaluation sum correct = \S+ is outside \[0, \S+\], the range secure_aggregation.max_sites=4 sites "
        r"can sum without overflow; lower max_sites or evaluate a smaller test shard$",
    ):
        codec.encode_eval(np.array([1.0, bad]), spec, ["count", "correct"])


def test_an_unnamed_evaluation_sum_is_named_by_its_position():
    with pytest.raises(ConfigError, match="evaluation sum #2 = -1 is outside"):
        codec.encode_eval(np.array([1.0, 2.0, -1.0]), _spec(), ["count"])
    with pytest.raises(ConfigError, match="evaluation sum #1 = -1 is outside"):  # the first value without a name
        codec.encode_eval(np.array([1.0, -1.0]), _spec(), ["count"])
    with pytest.raises(ConfigError, match="evaluation sum #0 = -1 is outside"):
        codec.encode_eval(np.array([-1.0]), _spec())


def test_an_evaluation_total_above_what_the_sites_can_send_is_refused():
    spec = _spec(max_sites=4)
    bound = codec.eval_bound(spec)

    assert codec.decode_eval(np.array([2 * bound], np.uint64), 2, spec).tolist() == [2 * bound / 2**16]
    with pytest.raises(
        CryptoError, match=r"^secure aggregation: the unmasked evaluation sum is inconsistent \(out of range\)$"
    ):
        codec.decode_eval(np.array([5, 2 * bound + 1], np.uint64), 2, spec)
    assert codec.decode_eval(np.zeros(0, np.uint64), 2, spec).shape == (0,)


# -- the wire form ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 8, 9, 16, 20, 24, 25, 32, 33, 40, 56, 63, 64])
@pytest.mark.parametrize("where", ["first", "last"])
def test_every_width_round_trips_through_the_wire_modulo_two_to_the_bits(bits, where):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**64 - 1, size=257, dtype=np.uint64, endpoint=True)
    trailer = np.array([2**64 - 1, 3], np.uint64)
    segs, widths, sizes = [values, trailer], [bits, 64], [257, 2]
    if where == "last":
        segs, widths, sizes = segs[::-1], widths[::-1], sizes[::-1]

    wire = codec.to_wire(segs, widths)
    back = codec.from_wire(wire, sizes, widths)

    assert len(wire) == codec.wire_size(sizes, widths)
    low = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    seg = back[0 if where == "first" else 1]
    if bits <= 32:  # uint32 words, the bytes of the next value above bit 8 * width (the Unmasker reduces)
        assert seg.dtype == np.uint32
        assert (seg.astype(np.uint64) & low).tolist() == (values & low).tolist()
    else:  # read modulo 2^bits
        assert seg.dtype == np.uint64
        assert seg.tolist() == (values & low).tolist()
    assert back[1 if where == "first" else 0].astype(np.uint64).tolist() == trailer.tolist()


def test_the_wire_form_is_little_endian_whole_bytes_per_value():
    wire = codec.to_wire([np.array([0x0A0B0C, 0x010203], np.uint64), np.array([5, 1], np.uint64)], [20, 64])

    assert wire == bytes([0x0C, 0x0B, 0x0A, 0x03, 0x02, 0x01]) + (5).to_bytes(8, "little") + (1).to_bytes(8, "little")


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_masked_input_of_the_wrong_length_is_refused(delta):
    wire = codec.to_wire([np.arange(10, dtype=np.uint64), np.array([1, 1], np.uint64)], [20, 64])

    with pytest.raises(CryptoError, match=f"masked input of {len(wire) + delta} bytes, expected {len(wire)}"):
        codec.from_wire(wire + b"\x00" if delta > 0 else wire[:-1], [10, 2], [20, 64])


def test_three_segments_round_trip_each_from_its_own_offset():
    rng = np.random.default_rng(11)
    segs = [
        rng.integers(0, 2**20, size=300, dtype=np.uint64),
        np.array([1234, 3], np.uint64),
        rng.integers(0, 2**64 - 1, size=5, dtype=np.uint64, endpoint=True),
    ]
    widths, sizes = [20, 64, 64], [300, 2, 5]

    back = codec.from_wire(codec.to_wire(segs, widths), sizes, widths)

    assert (back[0].astype(np.uint64) & np.uint64(2**20 - 1)).tolist() == segs[0].tolist()
    assert back[1].tolist() == [1234, 3]
    assert back[2].tolist() == segs[2].tolist()


def test_segments_and_widths_must_pair_up():
    segs = [np.arange(4, dtype=np.uint64), np.array([4, 1], np.uint64)]

    with pytest.raises(ValueError):
        codec.to_wire(segs, [20])
    with pytest.raises(ValueError):
        codec.to_wire(segs[:1], [20, 64])


@pytest.mark.parametrize("dtype", [np.uint32, np.int64, ">u8"])
def test_a_segment_of_any_integer_dtype_goes_on_the_wire_as_its_values(dtype):
    values = np.array([0x0A0B0C, 0x010203, 7], dtype=np.uint64)

    wire = codec.to_wire([values.astype(dtype), np.array([5, 1], dtype=dtype)], [20, 64])

    assert wire == codec.to_wire([values, np.array([5, 1], np.uint64)], [20, 64])
