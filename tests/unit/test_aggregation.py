"""Streaming FedAvg and zero-copy reading of Flower ArrayRecords."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedinfra.aggregation import StreamingFedAvg, array_view, arrays_from_record
from fedinfra.aggregation.fedavg import CHUNK
from fedinfra.errors import ConfigError


def _updates(shapes: dict[str, tuple[int, ...]], k: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()} for _ in range(k)]


def _reference(updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    total = float(sum(weights))
    return {
        name: sum(np.float64(w) * u[name].astype(np.float64) for u, w in zip(updates, weights, strict=True)) / total
        for name in updates[0]
    }


def _aggregate(updates: list[dict[str, np.ndarray]], weights: list[float]) -> StreamingFedAvg:
    agg = StreamingFedAvg()
    for u, w in zip(updates, weights, strict=True):
        agg.add(u, w)
    return agg


SHAPES = {"fc.weight": (7, 5), "fc.bias": (7,), "scalar": ()}


def test_result_matches_numpy_weighted_mean() -> None:
    updates, weights = _updates(SHAPES, 4), [10.0, 1.0, 3.5, 120.0]

    result = _aggregate(updates, weights).result()

    ref = _reference(updates, weights)
    assert result.keys() == ref.keys()
    for name in ref:
        assert result[name].dtype == np.float32
        assert result[name].shape == ref[name].shape
        np.testing.assert_allclose(result[name], ref[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_chunk_boundaries_do_not_change_the_result(size: int) -> None:
    updates, weights = _updates({"w": (size,)}, 3, seed=size), [2.0, 5.0, 1.0]

    result = _aggregate(updates, weights).result()

    np.testing.assert_allclose(result["w"], _reference(updates, weights)["w"], rtol=1e-5, atol=1e-6)


def test_count_and_total_weight_track_the_replies() -> None:
    updates = _updates(SHAPES, 3)

    agg = _aggregate(updates, [1, 2, 3])

    assert agg.count == 3
    assert agg.total_weight == 6.0


def test_fresh_aggregator_is_empty_and_result_raises() -> None:
    agg = StreamingFedAvg()

    assert agg.count == 0
    assert agg.total_weight == 0.0
    with pytest.raises(ConfigError, match="no replies"):
        agg.result()


def test_single_reply_result_is_that_reply() -> None:
    (update,) = _updates(SHAPES, 1)

    result = _aggregate([update], [42.0]).result()

    for name, value in update.items():
        np.testing.assert_allclose(result[name], value, rtol=1e-6)


def test_inputs_are_not_modified() -> None:
    updates = _updates(SHAPES, 3)
    copies = [{k: v.copy() for k, v in u.items()} for u in updates]

    _aggregate(updates, [1.0, 2.0, 3.0]).result()

    for u, c in zip(updates, copies, strict=True):
        for name in u:
            assert np.array_equal(u[name], c[name])


def test_result_is_a_snapshot_not_a_live_view() -> None:
    a, b = _updates({"w": (4,)}, 2)
    agg = _aggregate([a], [1.0])
    first = agg.result()

    agg.add(b, 1.0)

    np.testing.assert_allclose(first["w"], a["w"], rtol=1e-6)
    np.testing.assert_allclose(agg.result()["w"], (a["w"] + b["w"]) / 2, rtol=1e-5, atol=1e-6)


def test_float64_and_integer_inputs_are_averaged_as_float32() -> None:
    agg = StreamingFedAvg()
    agg.add({"w": np.array([1.0, 2.0], dtype=np.float64)}, 1.0)
    agg.add({"w": np.array([3, 4], dtype=np.int64)}, 1.0)

    result = agg.result()["w"]

    assert result.dtype == np.float32
    assert result.tolist() == [2.0, 3.0]


def test_non_contiguous_inputs_are_read_correctly() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    agg = StreamingFedAvg()
    agg.add({"w": base.T}, 1.0)
    agg.add({"w": np.asfortranarray(base.T)}, 1.0)

    np.testing.assert_array_equal(agg.result()["w"], base.T)


def test_mismatched_tensor_names_raise_and_leave_the_sum_unchanged() -> None:
    agg = _aggregate(_updates({"a": (3,)}, 1), [1.0])

    with pytest.raises(ConfigError, match="do not match"):
        agg.add({"b": np.zeros(3, dtype=np.float32)}, 1.0)
    with pytest.raises(ConfigError, match="do not match"):
        agg.add({"a": np.zeros(3, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}, 1.0)

    assert agg.count == 1
    assert agg.total_weight == 1.0


def test_mismatched_shape_raises_before_any_tensor_is_folded() -> None:
    first = {"a": np.ones(3, dtype=np.float32), "b": np.ones((2, 2), dtype=np.float32)}
    agg = _aggregate([first], [1.0])

    with pytest.raises(ConfigError, match=r"tensor 'b' has shape \(4,\), expected \(2, 2\)"):
        agg.add({"a": np.full(3, 9.0, dtype=np.float32), "b": np.ones(4, dtype=np.float32)}, 1.0)

    assert agg.count == 1
    np.testing.assert_array_equal(agg.result()["a"], np.ones(3, dtype=np.float32))


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_weight_raises(weight: float) -> None:
    agg = StreamingFedAvg()

    with pytest.raises(ConfigError, match="positive finite"):
        agg.add({"w": np.ones(2, dtype=np.float32)}, weight)

    assert agg.count == 0


@settings(max_examples=50, deadline=None)
@given(
    data=st.data(),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=9),
    k=st.integers(min_value=1, max_value=6),
)
def test_any_weighted_mean_matches_numpy(data: st.DataObject, shape: tuple[int, ...], k: int) -> None:
    elements = st.floats(min_value=-1e3, max_value=1e3, width=32)
    updates = [{"w": data.draw(hnp.arrays(np.float32, shape, elements=elements))} for _ in range(k)]
    weights = [data.draw(st.floats(min_value=1e-3, max_value=1e4)) for _ in range(k)]

    result = _aggregate(updates, weights).result()["w"]

    assert result.shape == shape
    np.testing.assert_allclose(result, _reference(updates, weights)["w"], rtol=1e-4, atol=1e-3)


# --- ArrayRecord reading ------------------------------------------------------------


def _record(arrays: dict[str, np.ndarray]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        np.array(2.5, dtype=np.float32),
        np.zeros((0, 5), dtype=np.float32),
        np.arange(6, dtype=">i2"),
        np.zeros(3, dtype=[("x", "<i4"), ("y", "<f8")]),
    ],
    ids=["f32-2d", "f64-fortran", "scalar", "empty", "big-endian", "structured"],
)
def test_record_views_equal_flowers_own_decoding(value: np.ndarray) -> None:
    record = _record({"t": value})

    view = arrays_from_record(record)["t"]

    expected = record["t"].numpy()
    assert view.dtype == expected.dtype
    assert view.shape == expected.shape
    assert np.array_equal(view, expected)


def test_record_views_do_not_copy_the_payload() -> None:
    record = _record({"t": np.arange(1000, dtype=np.float32)})

    view = arrays_from_record(record)["t"]

    base = view
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is record["t"].data
    assert not view.flags.writeable


def test_streaming_fedavg_on_records_matches_flowers_fedavg() -> None:
    from flwr.app import MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    updates, weights = _updates(SHAPES, 5, seed=3), [5, 50, 7, 1, 12]
    contents = [
        RecordDict({"arrays": _record(u), "metrics": MetricRecord({"num-examples": w})})
        for u, w in zip(updates, weights, strict=True)
    ]

    agg = StreamingFedAvg()
    for c in contents:
        agg.add(arrays_from_record(c["arrays"]), float(c["metrics"]["num-examples"]))
    ours = agg.result()
    theirs = aggregate_arrayrecords(contents, "num-examples")

    for name in SHAPES:
        np.testing.assert_allclose(ours[name], theirs[name].numpy(), rtol=1e-5, atol=1e-6)


def _raw_array(
    data: bytes, *, dtype: str = "float32", shape: tuple[int, ...] = (2,), stype: str = "numpy.ndarray"
) -> Any:
    from flwr.app import Array

    return Array(dtype=dtype, shape=shape, stype=stype, data=data)


def _npy(header: str, payload: bytes = b"", version: int = 1) -> bytes:
    text = header.encode("latin1")
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(text)) + text + payload


GOOD_HEADER = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n"


def test_version_2_header_is_read() -> None:
    array = _raw_array(_npy(GOOD_HEADER, np.array([1, 2], dtype="<f4").tobytes(), version=2))

    assert array_view("t", array).tolist() == [1.0, 2.0]


OBJECT_HEADER = "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }\n"


@pytest.mark.parametrize(
    ("data", "fields", "match"),
    [
        (b"", {"stype": "torch.Tensor"}, "unsupported serialisation"),
        (b"not a npy file at all", {}, "malformed"),
        (_npy(GOOD_HEADER, b"\0" * 8, version=9), {}, "malformed"),
        (_npy("{'descr': '<f4', 'shape': (2,)}\n", b"\0" * 8), {}, "malformed"),
        (_npy("__import__('os')\n", b"\0" * 8), {}, "malformed"),
        (_npy(OBJECT_HEADER, b"\0" * 16), {"dtype": "object"}, "object arrays"),
        (_npy(GOOD_HEADER, b"\0" * 8), {"shape": (3,)}, "record says"),
        (_npy(GOOD_HEADER, b"\0" * 8), {"dtype": "float64"}, "record says"),
        (_npy(GOOD_HEADER, b"\0" * 7), {}, "payload length"),
        (_npy(GOOD_HEADER, b"\0" * 12), {}, "payload length"),
    ],
    ids=["stype", "magic", "version", "keys", "code", "object", "shape", "dtype", "short", "long"],
)
def test_malformed_arrays_are_refused(data: bytes, fields: dict[str, object], match: str) -> None:
    array = _raw_array(data, **fields)  # type: ignore[arg-type]

    with pytest.raises(ConfigError, match=match) as info:
        array_view("t", array)

    assert "'t'" in str(info.value)


def test_a_layout_fixes_names_and_shapes_before_the_first_reply() -> None:
    layout = [("w", (2, 3)), ("b", (3,))]

    for bad in (
        {"w": np.zeros(6, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)},  # same size, other shape
        {"w": np.zeros((2, 3), dtype=np.float32)},  # a tensor missing
    ):
        agg = StreamingFedAvg(layout=layout)
        with pytest.raises(ConfigError, match=r"tensor 'w' has shape \(6,\)|do not match"):
            agg.add(bad, 1.0)
        assert agg.count == 0

    agg = StreamingFedAvg(layout=layout)
    agg.add({"w": np.full((2, 3), 2.0, dtype=np.float32), "b": np.ones(3, dtype=np.float32)}, 3.0)
    result = agg.result()
    assert result["w"].shape == (2, 3)
    assert result["w"].dtype == np.float32
    np.testing.assert_array_equal(result["w"], np.full((2, 3), 2.0, dtype=np.float32))


def test_a_laid_out_aggregator_without_replies_has_no_result() -> None:
    agg = StreamingFedAvg(layout=[("w", (2,))])

    with pytest.raises(ConfigError, match=r"^no replies to aggregate$"):
        agg.result()
