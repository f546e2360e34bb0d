"""Validating a big plaintext update needs no model-sized temporary (issue 17).

On the old code ``check_update`` squared each whole tensor in float64: a 64 MiB temporary
for a 4096 x 2048 layer (8M values, 32 MiB as float32), on top of the reply itself.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fedinfra.aggregation.rounds import UpdateRejected, check_update

LAYOUT = (("fc1.weight", (2048, 4096)), ("fc1.bias", (2048,)))


def _update() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.normal(0.0, 0.01, shape).astype(np.float32) for name, shape in LAYOUT}


def test_checking_an_8m_value_tensor_allocates_a_few_mib_at_most() -> None:
    update = _update()
    tracemalloc.start()

    check_update(update, LAYOUT, max_norm=1e6)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert peak < 8 * 1024 * 1024, peak  # old code: >= 64 MiB


def test_a_non_finite_value_in_a_late_slice_is_still_refused() -> None:
    update = _update()
    update["fc1.weight"][-1, -1] = np.inf

    with pytest.raises(UpdateRejected) as info:
        check_update(update, LAYOUT)

    assert info.value.check == "finite"


def test_the_norm_bound_covers_every_slice_of_a_fortran_ordered_tensor() -> None:
    update = _update()
    update["fc1.weight"] = np.asfortranarray(np.full((2048, 4096), 0.01, dtype=np.float32))
    norm = float(np.sqrt(2048 * 4096 * 0.01**2 + np.sum(np.square(update["fc1.bias"], dtype=np.float64))))

    check_update(update, LAYOUT, max_norm=norm * 1.001)
    with pytest.raises(UpdateRejected) as info:
        check_update(update, LAYOUT, max_norm=norm * 0.999)

    assert info.value.check == "bound"


def test_a_fortran_ordered_tensor_is_checked_where_it_is_without_a_copy() -> None:
    update = _update()
    update["fc1.weight"] = np.asfortranarray(update["fc1.weight"])  # 32 MiB, read in memory order
    tracemalloc.start()

    check_update(update, LAYOUT, max_norm=1e6)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert peak < 8 * 1024 * 1024, peak  # a C-order copy alone is 32 MiB
