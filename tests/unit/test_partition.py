"""The Dirichlet label-skew partitioner (Hsu, Qi & Brown 2019)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fedinfra.data import dirichlet_partition
from fedinfra.errors import DataError


def _labels(n: int = 400, classes: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == n
    assert np.array_equal(np.sort(joined), np.arange(n))


def test_same_seed_gives_the_same_partition() -> None:
    y = _labels()

    a = dirichlet_partition(y, num_sites=5, alpha=0.5, seed=11)
    b = dirichlet_partition(y, num_sites=5, alpha=0.5, seed=11)

    assert len(a) == len(b) == 5
    for pa, pb in zip(a, b, strict=True):
        assert np.array_equal(pa, pb)


def test_different_seeds_give_different_partitions() -> None:
    y = _labels()

    a = dirichlet_partition(y, num_sites=5, alpha=0.5, seed=1)
    b = dirichlet_partition(y, num_sites=5, alpha=0.5, seed=2)

    assert any(not np.array_equal(pa, pb) for pa, pb in zip(a, b, strict=True))


def test_every_example_is_used_exactly_once() -> None:
    y = _labels(n=569, classes=2)

    parts = dirichlet_partition(y, num_sites=4, alpha=0.5, seed=0)

    _assert_exact_cover(parts, 569)


def test_no_site_is_empty_or_below_min_size() -> None:
    y = _labels(n=300, classes=2)

    parts = dirichlet_partition(y, num_sites=6, alpha=0.5, seed=3, min_size=5)

    assert min(p.size for p in parts) >= 5


def test_indices_are_sorted_int64() -> None:
    parts = dirichlet_partition(_labels(), num_sites=3, alpha=1.0, seed=0)

    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    y = _labels(n=3000, classes=2, seed=5)

    def mean_skew(alpha: float) -> float:
        parts = dirichlet_partition(y, num_sites=6, alpha=alpha, seed=9)
        return float(np.mean([abs(np.mean(y[p]) - np.mean(y)) for p in parts]))

    assert mean_skew(0.1) > 3 * mean_skew(100.0)


def test_single_site_gets_everything() -> None:
    parts = dirichlet_partition(_labels(n=50), num_sites=1, alpha=0.5, seed=0)

    assert len(parts) == 1
    assert np.array_equal(parts[0], np.arange(50))


@pytest.mark.parametrize("num_sites", [0, -1])
def test_non_positive_site_count_raises_data_error(num_sites: int) -> None:
    with pytest.raises(DataError, match="num_sites"):
        dirichlet_partition(_labels(), num_sites=num_sites, alpha=0.5, seed=0)


@pytest.mark.parametrize("alpha", [0.0, -0.5])
def test_non_positive_alpha_raises_data_error(alpha: float) -> None:
    with pytest.raises(DataError, match="alpha"):
        dirichlet_partition(_labels(), num_sites=2, alpha=alpha, seed=0)


def test_more_sites_than_examples_allow_raises_and_says_how_many_fit() -> None:
    with pytest.raises(DataError, match="use at most 5 sites"):
        dirichlet_partition(_labels(n=10), num_sites=6, alpha=0.5, seed=0)


def test_unreachable_min_size_after_max_tries_raises_data_error() -> None:
    # 2 examples per site on average and a tiny alpha: a draw with every site >= 2 is rare.
    y = np.zeros(8, dtype=np.int64)

    with pytest.raises(DataError, match="fewer sites or a larger alpha"):
        dirichlet_partition(y, num_sites=4, alpha=0.01, seed=0, max_tries=3)


def test_data_error_is_a_value_error_with_exit_code_2() -> None:
    with pytest.raises(ValueError) as info:
        dirichlet_partition(_labels(n=3), num_sites=2, alpha=0.5, seed=0)

    assert isinstance(info.value, DataError)
    assert info.value.exit_code == 2


@st.composite
def _partition_cases(draw: st.DrawFn) -> tuple[list[int], int, float, int]:
    """Cases the partitioner can serve (5+ examples per site, alpha >= 0.3): examples reach the property."""
    num_sites = draw(st.integers(min_value=1, max_value=12))
    labels = draw(st.lists(st.integers(min_value=0, max_value=4), min_size=5 * num_sites, max_size=300))
    alpha = draw(st.floats(min_value=0.3, max_value=100.0))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    return labels, num_sites, alpha, seed


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=23),
    num_sites=st.integers(min_value=12, max_value=20),
)
def test_too_few_examples_for_two_per_site_is_a_data_error(labels: list[int], num_sites: int) -> None:
    with pytest.raises(DataError, match="use at most"):
        dirichlet_partition(labels, num_sites=num_sites, alpha=1.0, seed=0)


@settings(max_examples=60, deadline=None)
@given(case=_partition_cases())
def test_any_partition_covers_every_example_once_and_fills_every_site(
    case: tuple[list[int], int, float, int],
) -> None:
    labels, num_sites, alpha, seed = case
    n = len(labels)
    try:
        parts = dirichlet_partition(labels, num_sites=num_sites, alpha=alpha, seed=seed, max_tries=200)
    except DataError as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        # Allowed only when the bounded redraws ran out, and then it says so.
        event("bounded redraws ran out")
        assert "after 200 draws" in message
        return

    event("reached the cover assertion")
    assert len(parts) == num_sites
    _assert_exact_cover(parts, n)
    assert min(p.size for p in parts) >= 2
    again = dirichlet_partition(labels, num_sites=num_sites, alpha=alpha, seed=seed, max_tries=200)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
