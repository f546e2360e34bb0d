"""Poisson sampling of sites, its conditioned inclusion rate, and distributed noise shares.

The amplified user-level figure assumes each site is included independently with
probability exactly ``q`` (Mironov, Talwar & Zhang 2019); the redraw to ``min_sites`` raises
that to at most ``q / P(|S| >= m)``, which sites must use. The distributed share is
``z S / sqrt(min_survivors)`` (Kairouz, Liu & Steinke 2021), so a sum of at least
``min_survivors`` shares carries the whole noise. Each test pins one edge of those rules:
the rate and size bounds, a draw of exactly ``min_size``, a uniform equal to the rate, a
bound that would exceed 1, and every refused noise parameter with the message that names it.
"""

from __future__ import annotations

import doctest
import itertools
import math
import re

import pytest

from fedinfra.config.job import DISTRIBUTED_NOISE_MODES, DISTRIBUTED_NOISE_RULE
from fedinfra.errors import ConfigError
from fedinfra.privacy import distributed
from fedinfra.privacy.distributed import (
    check_distributed_noise_mode,
    site_share_std,
    surviving_noise_multiplier,
)
from fedinfra.privacy.sampling import MAX_DRAWS, conditioned_rate, poisson_sample

SITES = ["a", "b", "c", "d"]


def _never_drawn() -> float:
    raise AssertionError("no uniform may be drawn here")


# --- poisson_sample ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, 2.0, math.nan])
def test_a_rate_outside_zero_to_one_is_refused_naming_it(rate: float) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"sampling rate must be in (0, 1] (got {rate!r})")):
        poisson_sample(SITES, rate=rate, uniform=_never_drawn)


def test_at_rate_one_every_site_is_taken_in_order() -> None:
    assert poisson_sample(SITES, rate=1.0) == SITES
    assert poisson_sample(SITES, rate=1.0, min_size=len(SITES)) == SITES


def test_a_min_size_of_every_site_is_allowed_one_more_is_refused_naming_both() -> None:
    assert poisson_sample(SITES, rate=0.5, min_size=4, uniform=lambda: 0.0) == SITES
    with pytest.raises(ConfigError, match=r"^cannot sample 5 of 4 sites; lower sites.min_sites$"):
        poisson_sample(SITES, rate=0.5, min_size=5, uniform=_never_drawn)


def test_a_uniform_equal_to_the_rate_excludes_the_site() -> None:
    """Inclusion is ``u < q`` for u uniform on [0, 1): probability exactly q on the 53-bit grid."""
    draws = iter([0.5, 0.25, 0.5 - 2**-53, 0.75])

    assert poisson_sample(SITES, rate=0.5, uniform=lambda: next(draws)) == ["b", "c"]


def test_by_default_an_empty_draw_is_a_valid_sample() -> None:
    """Without a floor, Poisson sampling may pick nobody; that draw is not redrawn."""
    draws = iter([0.9] * len(SITES))

    assert poisson_sample(SITES, rate=0.5, uniform=lambda: next(draws)) == []


def test_a_draw_of_exactly_min_size_is_kept_a_shorter_one_is_redrawn() -> None:
    first = [0.9, 0.1, 0.9, 0.9]  # one site: below the floor of two, redrawn
    second = [0.1, 0.9, 0.9, 0.1]  # exactly two: kept
    draws = iter(first + second)  # a third draw would exhaust the iterator

    assert poisson_sample(SITES, rate=0.5, min_size=2, uniform=lambda: next(draws)) == ["a", "d"]


def test_a_floor_no_draw_reaches_is_refused_after_max_draws_naming_the_fix() -> None:
    calls = itertools.count()

    def nobody() -> float:
        next(calls)
        return 0.99

    with pytest.raises(
        ConfigError, match=r"^no Poisson draw at rate 0\.5 reached 1 of 4 sites; raise sites\.fraction$"
    ):
        poisson_sample(SITES, rate=0.5, min_size=1, uniform=nobody)
    assert next(calls) == MAX_DRAWS * len(SITES)


# --- conditioned_rate -------------------------------------------------------------------------


def test_a_floor_almost_always_met_leaves_the_rate_exactly_as_it_is() -> None:
    """P(|S| >= 1) = 1 - 0.8^100 is within 1e-9 of 1: the site's figure is taken at q itself."""
    assert conditioned_rate(rate=0.2, population=100, min_size=1) == 0.2
    assert conditioned_rate(rate=0.2, population=100, min_size=0) == 0.2


def test_the_conditioned_rate_is_q_over_the_probability_of_reaching_the_floor() -> None:
    p_ok = 1 - 0.8**20 - 20 * 0.2 * 0.8**19  # P(Binomial(20, 0.2) >= 2)

    assert conditioned_rate(rate=0.2, population=20, min_size=2) == pytest.approx(0.2 / p_ok, rel=1e-12)


def test_a_bound_above_one_is_capped_at_one() -> None:
    """q / P(|S| >= 4) = 0.5 / 0.0625 = 8 for four sites at q = 0.5: a probability is at most 1."""
    assert conditioned_rate(rate=0.5, population=4, min_size=4) == 1.0


@pytest.mark.parametrize(
    ("rate", "population", "min_size"),
    [(0.3, 3, 4), (1e-300, 10, 10)],
    ids=["floor-above-population", "tail-underflows-to-zero"],
)
def test_a_floor_that_is_never_reached_gives_the_worst_case_rate_one(
    rate: float, population: int, min_size: int
) -> None:
    assert conditioned_rate(rate=rate, population=population, min_size=min_size) == 1.0


# --- distributed noise ------------------------------------------------------------------------


def test_the_modules_doctests_run_and_hold() -> None:
    result = doctest.testmod(distributed)
    assert result.attempted >= 2
    assert result.failed == 0


@pytest.mark.parametrize("mode", sorted(DISTRIBUTED_NOISE_MODES))
def test_every_mode_that_hides_single_updates_takes_a_noise_share(mode: str) -> None:
    check_distributed_noise_mode(mode)


@pytest.mark.parametrize("mode", ["plain", "none", ""])
def test_a_mode_where_the_coordinator_sees_one_update_is_refused_with_the_rule(mode: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(DISTRIBUTED_NOISE_RULE)} \\(got {re.escape(repr(mode))}\\)$"):
        check_distributed_noise_mode(mode)


@pytest.mark.parametrize("z", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_a_noise_multiplier_that_is_not_positive_and_finite_is_refused(z: float) -> None:
    message = re.escape(f"noise_multiplier must be a positive finite number (got {z!r})")
    with pytest.raises(ConfigError, match=f"^{message}$"):
        site_share_std(noise_multiplier=z, clip=1.0, min_survivors=2)
    with pytest.raises(ConfigError, match=f"^{message}$"):
        surviving_noise_multiplier(noise_multiplier=z, survivors=4, min_survivors=2)


@pytest.mark.parametrize("m", [0, -3, 2.5, True, False])
def test_a_survivor_floor_that_is_not_a_whole_number_of_at_least_one_is_refused(m: object) -> None:
    message = re.escape(f"min_survivors must be a whole number >= 1 (got {m!r})")
    with pytest.raises(ConfigError, match=f"^{message}$"):
        site_share_std(noise_multiplier=1.0, clip=1.0, min_survivors=m)  # type: ignore[arg-type]


@pytest.mark.parametrize("clip", [0.0, -0.5, math.nan, math.inf])
def test_a_clip_that_is_not_positive_and_finite_is_refused(clip: float) -> None:
    message = re.escape(f"clip must be a positive finite number (got {clip!r})")
    with pytest.raises(ConfigError, match=f"^{message}$"):
        site_share_std(noise_multiplier=1.0, clip=clip, min_survivors=2)


def test_a_floor_of_one_site_gives_that_site_the_whole_noise() -> None:
    assert site_share_std(noise_multiplier=2.0, clip=0.5, min_survivors=1) == 1.0
    assert surviving_noise_multiplier(noise_multiplier=1.5, survivors=1, min_survivors=1) == 1.5


def test_exactly_the_floor_of_survivors_carries_exactly_the_planned_multiplier() -> None:
    assert surviving_noise_multiplier(noise_multiplier=1.5, survivors=5, min_survivors=5) == 1.5
    with pytest.raises(
        ConfigError, match=r"^4 contributions carry less than the full noise \(floor 5\); release nothing$"
    ):
        surviving_noise_multiplier(noise_multiplier=1.5, survivors=4, min_survivors=5)
