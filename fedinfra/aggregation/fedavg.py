"""Streaming weighted FedAvg over named float32 tensors.

FedAvg is McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data". Replies are folded into one running weighted sum as they arrive, so
the coordinator holds O(model) memory however many sites reply, not O(sites x model).

Aggregation is memory-bandwidth bound, so each reply costs one pass over its bytes: the
fold is BLAS ``saxpy`` (``acc <- w * x + acc``, in place, no temporary), where a plain
numpy ``acc += w * x`` reads and writes every value twice and allocates a model-sized
temporary. The sum stays float32, as the updates are; the result is exact up to float32
rounding of each multiply-add (see ``bench/aggregation.py`` for the measured cost).

``saxpy`` runs on chunks of :data:`CHUNK` values. OpenBLAS hands an axpy of more than
10,000 values to its thread pool; on a busy coordinator (the measured case: a 2-core host
with other work running) those threads wait on each other and one fold took 10x the
single-threaded time. Chunks at or below that size stay on the calling thread, fit in the
L1 cache, and cost about the same as ``numpy.add`` over the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from fedinfra.errors import ConfigError
from fedinfra.types import NDArrays

F32 = npt.NDArray[np.float32]

#: Values per ``saxpy`` call: at most OpenBLAS's single-thread axpy size (10,000).
CHUNK = 8192


@cache
def _saxpy() -> Callable[..., Any]:
    """Return BLAS ``saxpy``; scipy is imported on first use to keep imports light."""
    from scipy.linalg.blas import saxpy

    return saxpy  # type: ignore[no-any-return]


def _as_flat_f32(value: npt.ArrayLike) -> F32:
    """View ``value`` as a contiguous 1-D float32 array (copying only if it must)."""
    arr = np.ascontiguousarray(value, dtype=np.float32)
    return arr.reshape(-1)


def _axpy_chunked(x: F32, acc: F32, w: float) -> F32:
    """Return ``acc + w * x``, computed in place in ``acc`` chunk by chunk (see module doc)."""
    saxpy = _saxpy()
    n = x.size
    for start in range(0, n, CHUNK):
        # saxpy(x, y, n, a, offx, incx, offy, incy) overwrites ``acc`` in place (float32,
        # contiguous); keep the returned array anyway so a copy, should BLAS make one, is
        # not lost.
        acc = saxpy(x, acc, min(CHUNK, n - start), w, start, 1, start, 1)
    return acc


class StreamingFedAvg:
    """Running example-weighted mean of named float32 tensors.

    >>> agg = StreamingFedAvg()
    >>> agg.add({"w": np.array([1.0, 2.0], dtype=np.float32)}, 1)
    >>> agg.add({"w": np.array([4.0, 5.0], dtype=np.float32)}, 2)
    >>> agg.result()["w"].tolist(), agg.count, agg.total_weight
    ([3.0, 4.0], 2, 3.0)
    """

    def __init__(self, *, layout: Iterable[tuple[str, tuple[int, ...]]] | None = None) -> None:
        self._sum: dict[str, F32] | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._total_weight = 0.0
        self.count = 0
        if layout is not None:
            # Fixed from the model before any reply: a malformed first reply cannot set it.
            self._shapes = {name: tuple(shape) for name, shape in layout}
            self._sum = {name: np.zeros(math.prod(shape), dtype=np.float32) for name, shape in self._shapes.items()}

    @property
    def total_weight(self) -> float:
        """Sum of the weights folded in so far."""
        return self._total_weight

    def add(self, update: NDArrays, weight: float) -> None:
        """Fold one reply in; names, shapes and the weight are checked before anything changes.

        Raises
        ------
        ConfigError
            If ``weight`` is not a positive finite number, or the reply's tensor names or
            shapes differ from the first reply's.
        """
        w = float(weight)
        if not (w > 0 and math.isfinite(w)):
            raise ConfigError(f"reply weight must be a positive finite number (got {weight})")
        if self._sum is None:
            self._start(update, w)
        else:
            self._fold(update, w)
        self._total_weight += w
        self.count += 1

    def _start(self, update: NDArrays, w: float) -> None:
        sums: dict[str, F32] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for name, value in update.items():
            arr = np.asarray(value)
            shapes[name] = tuple(arr.shape)
            sums[name] = np.multiply(_as_flat_f32(arr), np.float32(w), dtype=np.float32)
        self._sum, self._shapes = sums, shapes

    def _fold(self, update: NDArrays, w: float) -> None:
        assert self._sum is not None
        if update.keys() != self._sum.keys():
            raise ConfigError(f"reply tensors {sorted(update)} do not match the model's {sorted(self._sum)}")
        flats: dict[str, F32] = {}
        for name, value in update.items():
            arr = np.asarray(value)
            if tuple(arr.shape) != self._shapes[name]:
                raise ConfigError(f"tensor {name!r} has shape {arr.shape}, expected {self._shapes[name]}")
            flats[name] = _as_flat_f32(arr)
        for name, x in flats.items():
            self._sum[name] = _axpy_chunked(x, self._sum[name], w)

    def result(self) -> NDArrays:
        """Return the weighted mean of everything added (fresh arrays); raises if nothing was."""
        if self._sum is None or self.count == 0:
            raise ConfigError("no replies to aggregate")
        inv = np.float32(1.0 / self._total_weight)
        return {k: np.multiply(v, inv).reshape(self._shapes[k]) for k, v in self._sum.items()}
