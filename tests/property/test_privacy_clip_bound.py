"""Property: clipping bounds the global norm and never grows an update."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedinfra.privacy import clip_update, update_norm

arrays = hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e3, 1e3, width=32))


@settings(max_examples=100, deadline=None)
@given(arrays, arrays, st.floats(min_value=1e-3, max_value=1e3))
def test_clipped_norm_is_at_most_the_bound(a: np.ndarray, b: np.ndarray, clip: float) -> None:
    clipped, norm = clip_update({"a": a, "b": b}, clip)

    assert update_norm(clipped) <= clip * (1 + 1e-5)
    assert update_norm(clipped) <= norm * (1 + 1e-5) + 1e-12
