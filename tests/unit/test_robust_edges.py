"""The robust rules at their edges: bounds, exact messages, float32 range and precision, ties.

Every rule returns a float32 aggregate; means and middles are formed in float64, so two
values near float32's largest do not overflow to infinity and large and small values do
not lose the small ones, and squared norms and distances are summed in float64, so a row
with a huge norm is clipped to the bound (not zeroed) and seen as far from the others.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedinfra.aggregation import robust
from fedinfra.errors import ConfigError

BIG = 3.0e38  # finite in float32 (max 3.4e38); the sum of two is not


def _rows(*rows: list[float]) -> robust.F32:
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize(
    "updates",
    [np.zeros(3, dtype=np.float32), np.zeros((0, 3), dtype=np.float32), np.zeros((2, 2, 2), dtype=np.float32)],
    ids=["vector", "no-rows", "3-d"],
)
def test_the_coordinate_rules_need_a_non_empty_matrix(updates):
    for rule in (robust.coordinate_median, lambda u: robust.trimmed_mean(u, 0.1)):
        with pytest.raises(ConfigError, match=r"^robust aggregation needs a non-empty \(sites x values\) matrix$"):
            rule(updates)


def test_a_matrix_of_zero_values_has_an_empty_aggregate():
    empty = np.zeros((3, 0), dtype=np.float32)

    assert robust.coordinate_median(empty).shape == (0,)
    assert robust.trimmed_mean(empty, 0.2).shape == (0,)


@pytest.mark.parametrize(("n", "beta", "k"), [(3, 0.49, 1), (5, 0.4, 2), (7, 0.45, 3), (10, 0.2, 2), (4, 0.0, 0)])
def test_trim_count_is_floor_beta_n(n, beta, k):
    assert robust.trim_count(n, beta) == k


@pytest.mark.parametrize("beta", [0.5, 0.7, -0.01])
def test_a_trim_fraction_outside_0_to_a_half_is_refused(beta):
    with pytest.raises(ConfigError, match=rf"^trim_fraction must be in \[0, 0.5\) \(got {beta}\)$"):
        robust.trim_count(4, beta)


def test_median_and_trimmed_mean_are_float32_and_finite_for_rows_near_the_float32_limit():
    x = _rows([BIG, -BIG], [BIG, -BIG], [1.0, 2.0], [BIG, -BIG])

    median = robust.coordinate_median(x)  # even count: the mean of the two middle values (BIG, BIG)
    trimmed = robust.trimmed_mean(x, 0.25)  # keeps the two middle values of each sorted column

    for out in (median, trimmed):
        assert out.dtype == np.float32
        assert out.tolist() == [np.float32(BIG), np.float32(-BIG)]


def test_the_multi_krum_mean_of_identical_rows_is_that_row():
    # Six rows of 0.9 (and one far away): summed in float32 their mean is 0.90000004.
    x = _rows([2.0**24], *[[0.9]] * 6)

    mean, chosen = robust.multi_krum(x, byzantine=0, select=6)

    assert chosen == [1, 2, 3, 4, 5, 6]
    assert mean.dtype == np.float32
    assert mean.tolist() == [np.float32(0.9)]


def test_without_trimming_the_trimmed_mean_is_the_mean_in_arrival_order():
    # 1e30 - 1e30 + 1 in arrival order keeps the 1; sorted first (-1e30 + 1 + 1e30) it is lost.
    x = _rows([1e30], [-1e30], [1.0])

    assert robust.trimmed_mean(x, 0.0).tolist() == [np.float32(1 / 3)]


def test_squared_distances_are_exact_for_integer_rows_and_zero_on_the_diagonal():
    x = _rows([0, 0], [3, 4], [3, 4], [-1, 0])

    d = robust.pairwise_sq_distances(x)

    assert d.dtype == np.float64
    assert d.tolist() == [[0, 25, 25, 1], [25, 0, 0, 32], [25, 0, 0, 32], [1, 32, 32, 0]]


def test_identical_rows_are_at_distance_zero_despite_float32_rounding():
    # |a|^2 in float64 and a.a in float32 differ in the last bits: the difference is clamped at 0.
    row = np.random.default_rng(0).normal(size=7).astype(np.float32)
    x = np.vstack([row, row])

    assert robust.pairwise_sq_distances(x).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_squared_norms_are_summed_in_float64():
    # |a|^2 = 4096^2 + 1 = 2^24 + 1 is not a float32: summed in float32 the distance 1 would be 0.
    x = _rows([4096, 1], [4096, 0])

    assert robust.pairwise_sq_distances(x)[0, 1] == 1.0


def test_a_row_with_a_huge_norm_is_far_from_the_others():
    # Gram entries near 2e38 are finite in float32; twice them is not: formed in float64.
    x = _rows([1.5e19], [1.4e19])

    assert robust.pairwise_sq_distances(x)[0, 1] == pytest.approx(1e36, rel=1e-4)  # the rows are float32-rounded


def test_large_rows_that_nearly_agree_keep_their_distance():
    """A float32 Gram matrix cancelled the difference away: [4097, 1] vs [4097, 0] came out 3 apart, not 1."""
    assert robust.pairwise_sq_distances(_rows([4097, 1], [4097, 0]))[0, 1] == 1.0
    # Five rows of norm ~950 differing by 0.01 per coordinate: old errors up to 0.31 against a true 0.20.
    rng = np.random.default_rng(3)
    base = rng.normal(size=2000).astype(np.float32) * 21
    x = np.vstack([base + np.float32(0.01) * rng.normal(size=2000).astype(np.float32) for _ in range(5)])
    exact = ((x[:, None, :].astype(np.float64) - x[None, :, :].astype(np.float64)) ** 2).sum(axis=2)
    np.testing.assert_allclose(robust.pairwise_sq_distances(x), exact, rtol=1e-6, atol=1e-9)


def test_rows_one_float32_step_apart_are_never_at_a_negative_distance():
    """|a|^2 + |b|^2 - 2 a.b rounds below zero for rows 1 ulp apart (-9.5e-7 here): clamped at 0."""
    rng = np.random.default_rng(0)
    k = int(rng.integers(50, 3000))
    row = (rng.normal(size=k) * 1000).astype(np.float32)
    near = row.copy()
    i = rng.integers(0, k)
    near[i] = np.nextafter(near[i], np.float32(np.inf))

    d = robust.pairwise_sq_distances(np.vstack([row, near]))

    assert d.min() >= 0.0


def test_the_gram_matrix_is_summed_over_column_blocks(monkeypatch: pytest.MonkeyPatch):
    """Blocks of 3 columns (the last one short) give the distances one block gives."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 10)).astype(np.float32)
    whole = robust.pairwise_sq_distances(x)
    monkeypatch.setattr(robust, "GRAM_COLUMNS", 3)
    np.testing.assert_allclose(robust.pairwise_sq_distances(x), whole, rtol=1e-12, atol=1e-12)


def test_krum_scores_sum_the_n_minus_f_minus_2_nearest_squared_distances():
    x = _rows([0], [1], [3], [7], [15])

    # f = 0: the 3 nearest others. Row 0: 1, 9, 49; row 1: 1, 4, 36; row 2: 4, 9, 16; row 3: 16, 36, 49;
    # row 4: 64, 144, 196.
    assert robust.krum_scores(x, 0).tolist() == [59, 41, 29, 101, 404]
    # f = 1: the 2 nearest others.
    assert robust.krum_scores(x, 1).tolist() == [10, 5, 13, 52, 208]


def test_krum_needs_2f_plus_3_updates_and_says_how_many():
    with pytest.raises(
        ConfigError,
        match=r"^Krum with byzantine=2 needs at least 7 updates, got 6; "
        r"lower aggregation\.byzantine or raise sites\.min_sites$",
    ):
        robust.krum_scores(np.zeros((6, 3), dtype=np.float32), 2)
    assert robust.krum_scores(np.zeros((7, 3), dtype=np.float32), 2).shape == (7,)


def test_krum_selects_one_update_by_default_and_up_to_all():
    x = _rows([0], [1], [3], [7], [15])

    assert robust.krum_select(x, 0) == [2]
    assert robust.multi_krum(x, 0)[1] == [2]
    assert robust.krum_select(x, 0, select=5) == [2, 1, 0, 3, 4]
    for bad in (0, 6):
        with pytest.raises(ConfigError, match=rf"^multi-Krum selects 1\.\.5 updates, not {bad}$"):
            robust.krum_select(x, 0, select=bad)


def test_krum_ties_go_to_the_lowest_index():
    # 30 rows at 0 and 20 at 1, interleaved: every row at 0 scores 19, every row at 1 scores 29.
    pattern = [0.0, 1.0, 1.0, 0.0, 0.0] * 10
    x = np.array(pattern, dtype=np.float32)[:, None]
    zeros = [i for i, v in enumerate(pattern) if v == 0.0]

    assert robust.krum_select(x, 0, select=30) == zeros
    assert robust.krum_select(x, 0, select=12) == zeros[:12]


def test_clip_factor_needs_a_positive_clip_and_leaves_a_vector_at_the_bound():
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match=rf"^clip must be > 0 \(got {bad}\)$"):
            robust.clip_factor(1.0, bad)
    assert robust.clip_factor(2.0, 2.0) == 1.0
    assert robust.clip_factor(4.0, 2.0) == 0.5
