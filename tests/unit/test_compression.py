import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedinfra.aggregation import StreamingFedAvg
from fedinfra.aggregation.compression import (
    HEADER_BYTES,
    UpdateCompressor,
    decode,
    decompress,
    dense_bytes,
    dequantize,
    encode,
    flatten,
    integer_vector,
    layout_of,
    max_l2_norm,
    offset_integers,
    stochastic_quantize,
)
from fedinfra.errors import ConfigError

LAYOUT_UPDATE = {"fc1.weight": np.zeros((32, 64), np.float32), "fc1.bias": np.zeros(32, np.float32)}


def _update(seed: int, scale: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape) * scale).astype(np.float32) for k, v in LAYOUT_UPDATE.items()}


def test_stochastic_quantization_is_unbiased():
    rng = np.random.default_rng(0)
    values = np.array([0.3, -0.71, 0.05, 0.999])
    draws = np.stack([stochastic_quantize(values, step=0.1, levels=127, rng=rng) for _ in range(20_000)])
    assert np.allclose(draws.mean(axis=0) * 0.1, values, atol=3e-3)


def test_clipping_happens_before_quantization():
    comp = UpdateCompressor(clip=1.0, rng=np.random.default_rng(1))
    big = _update(1, scale=10.0)
    out = comp.compress(big)
    assert comp.last_norm > 1.0
    assert np.linalg.norm(integer_vector(out) * out.step) <= max_l2_norm(clip=1.0, bits=8, nnz=out.dim)
    assert int(np.max(np.abs(out.values))) <= 127


def test_dense_round_trip_is_exact_and_small():
    comp = UpdateCompressor(clip=1.0, rng=np.random.default_rng(2))
    out = comp.compress(_update(2))
    blob = encode(out)
    assert len(blob) == HEADER_BYTES + out.dim  # one byte per coordinate
    assert len(blob) < dense_bytes(layout_of(LAYOUT_UPDATE)) / 3.9
    back = decode(blob)
    assert np.array_equal(back.values, out.values)
    assert back.step == out.step


def test_topk_sends_only_k_coordinates_and_error_feedback_keeps_the_rest():
    comp = UpdateCompressor(clip=1.0, topk_fraction=0.05, rng=np.random.default_rng(3))
    u = _update(3)
    out = comp.compress(u)
    assert out.indices is not None
    assert out.values.size == int(np.ceil(0.05 * out.dim))
    residual = comp.residual
    assert residual is not None
    sent = integer_vector(out) * out.step
    assert np.allclose(sent + residual, flatten(u), atol=1e-6)  # nothing is lost, only delayed
    assert len(encode(out)) < 0.2 * dense_bytes(layout_of(u))


def test_error_feedback_makes_repeated_topk_converge_to_the_mean():
    # Stich et al. 2018: with memory, the running sum of sent vectors tracks the true sum.
    # clip well above the memory's growth, so re-clipping p = u + e never binds here.
    comp = UpdateCompressor(clip=100.0, bits=16, topk_fraction=0.1, rng=np.random.default_rng(4))
    u = _update(4)
    total = np.zeros(flatten(u).size)
    rounds = 60
    for _ in range(rounds):
        total += integer_vector(out := comp.compress(u)) * out.step
    err = np.linalg.norm(total / rounds - flatten(u)) / np.linalg.norm(flatten(u))
    assert err < 0.1


def test_coordinator_decompresses_into_streaming_fedavg():
    layout = layout_of(LAYOUT_UPDATE)
    agg = StreamingFedAvg()
    truth = np.zeros(flatten(LAYOUT_UPDATE).size)
    for seed in range(50):
        u = _update(seed)
        blob = encode(UpdateCompressor(clip=1.0, rng=np.random.default_rng(100 + seed)).compress(u))
        agg.add(decompress(blob, layout, clip=1.0, bits=8), 1)
        truth += flatten(u)
    mean = flatten(agg.result())
    # Stochastic rounding adds independent noise of variance <= step^2 / 4 per coordinate.
    bound = 2 * np.sqrt(mean.size) * (1.0 / 127) / 2 / np.sqrt(50)
    assert np.linalg.norm(mean - truth / 50) < bound


def test_decompress_refuses_another_grid_or_model():
    blob = encode(UpdateCompressor(clip=4.0, rng=np.random.default_rng(5)).compress(_update(5)))
    with pytest.raises(ConfigError, match="grid"):
        decompress(blob, layout_of(LAYOUT_UPDATE), clip=1.0, bits=8)
    other = {"w": np.zeros(2080, np.float32)}
    with pytest.raises(ConfigError):
        decompress(blob, layout_of(other), clip=4.0, bits=8)


def test_offset_integers_are_the_bfv_lane_input():
    from fedinfra.crypto.quantize import pack_lanes, unpack_lanes

    outs = [UpdateCompressor(clip=1.0, rng=np.random.default_rng(s)).compress(_update(s)) for s in range(3)]
    lanes = [pack_lanes(offset_integers(o), lane_bits=10, lanes=4) for o in outs]
    summed = unpack_lanes(sum(lanes), lane_bits=10, lanes=4, count=outs[0].dim).astype(np.int64)
    assert np.array_equal(summed - 3 * 127, sum(integer_vector(o) for o in outs))


def test_dequantize_names_tensors_like_the_model():
    out = UpdateCompressor(clip=1.0, rng=np.random.default_rng(6)).compress(_update(6))
    back = dequantize(out, layout_of(LAYOUT_UPDATE))
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in LAYOUT_UPDATE.items()}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:10],
        lambda b: b"XX" + b[2:],
        lambda b: b + b"\x00",
        lambda b: b[:-1],
    ],
)
def test_decode_refuses_malformed_bytes(mutate):
    blob = encode(UpdateCompressor(clip=1.0, topk_fraction=0.3, rng=np.random.default_rng(7)).compress(_update(7)))
    with pytest.raises(ConfigError, match="malformed"):
        decode(mutate(blob))


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(1, 3000),
    frac=st.one_of(st.none(), st.floats(0.001, 1.0)),
    bits=st.integers(2, 16),
    seed=st.integers(0, 2**16),
)
def test_encode_decode_round_trips(dim, frac, bits, seed):
    rng = np.random.default_rng(seed)
    u = {"w": rng.standard_normal(dim).astype(np.float32)}
    out = UpdateCompressor(clip=1.0, bits=bits, topk_fraction=frac, rng=rng).compress(u)
    back = decode(encode(out))
    assert np.array_equal(integer_vector(back), integer_vector(out))
    norm = np.linalg.norm(integer_vector(back) * back.step)
    assert norm <= max_l2_norm(clip=1.0, bits=bits, nnz=out.values.size) + 1e-9


def test_invalid_parameters_fail_at_construction():
    with pytest.raises(ConfigError, match="clip"):
        UpdateCompressor(clip=0, rng=np.random.default_rng())
    with pytest.raises(ConfigError, match="bits"):
        UpdateCompressor(clip=1, bits=1, rng=np.random.default_rng())
    with pytest.raises(ConfigError, match="topk"):
        UpdateCompressor(clip=1, topk_fraction=1.5, rng=np.random.default_rng())
