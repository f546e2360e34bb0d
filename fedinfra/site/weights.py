"""Conversion between named numpy weights and Flower ``ArrayRecord``s."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fedinfra.types import NDArrays


def weights_to_arrays(weights: NDArrays) -> ArrayRecord:
    """Wrap named arrays into an ``ArrayRecord`` (names kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def arrays_to_weights(record: ArrayRecord) -> NDArrays:
    """Unwrap an ``ArrayRecord`` into named float32 numpy arrays."""
    return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in record.items()}
