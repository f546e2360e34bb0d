"""Accounting: published known answers, validation and planning."""

from __future__ import annotations

import math

import pytest

from fedinfra.errors import ConfigError
from fedinfra.privacy import (
    compute_epsilon,
    epsilon_of_history,
    plan_noise_multiplier,
    resolve_noise_multiplier,
)

# Known answers: Opacus' own test values (sigma 1.5, q 0.04) and the TF Privacy MNIST
# tutorial (q = 256/60000, sigma 1.12, 60 epochs = 14062 steps), which reports 2.92 with
# the classic RDP conversion; the tight (Balle et al. 2020) conversion gives 2.519.
KNOWN_ANSWERS = [
    pytest.param(1.5, 0.04, 2250, 1e-5, "rdp", 7.32911117143, 1e-9, id="opacus-rdp"),
    pytest.param(1.5, 0.04, 2249, 1e-5, "prv", 6.77739571, 1e-6, id="opacus-prv"),
    pytest.param(1.12, 256 / 60000, 14062, 1e-5, "rdp", 2.519, 5e-4, id="tf-privacy-rdp"),
    pytest.param(1.12, 256 / 60000, 14062, 1e-5, "rdp-classic", 2.92, 5e-3, id="tf-privacy-classic"),
]


@pytest.mark.parametrize(("sigma", "q", "steps", "delta", "accountant", "expected", "tol"), KNOWN_ANSWERS)
def test_epsilon_matches_published_values(
    sigma: float, q: float, steps: int, delta: float, accountant: str, expected: float, tol: float
) -> None:
    eps = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant)

    assert eps == pytest.approx(expected, abs=tol)


def test_zero_steps_spend_nothing() -> None:
    assert compute_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5) == 0.0


def test_history_in_pieces_equals_one_stretch() -> None:
    whole = compute_epsilon(noise_multiplier=1.0, sample_rate=0.02, steps=300, delta=1e-5, accountant="rdp")

    pieces = epsilon_of_history([(1.0, 0.02, 100), (1.0, 0.02, 200)], delta=1e-5, accountant="rdp")

    assert pieces == pytest.approx(whole, rel=1e-12)


def test_more_steps_never_cost_less() -> None:
    eps = [
        compute_epsilon(noise_multiplier=1.0, sample_rate=0.05, steps=t, delta=1e-5, accountant="rdp")
        for t in (10, 100, 1000)
    ]

    assert eps == sorted(eps)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": math.nan}, "noise_multiplier"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"steps": -1}, "steps"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "gdp"}, "accountant"),
    ],
)
def test_bad_parameters_are_refused_with_the_field_named(kwargs: dict[str, object], field: str) -> None:
    params: dict[str, object] = {
        "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10, "delta": 1e-5, "accountant": "rdp",
    }
    params.update(kwargs)

    with pytest.raises(ConfigError, match=field):
        compute_epsilon(**params)  # type: ignore[arg-type]


def test_planned_noise_meets_the_target() -> None:
    z = plan_noise_multiplier(target_epsilon=3.0, delta=1e-5, sample_rate=0.04, steps=2250, accountant="rdp")

    eps = compute_epsilon(noise_multiplier=z, sample_rate=0.04, steps=2250, delta=1e-5, accountant="rdp")
    assert 3.0 * 0.98 <= eps <= 3.0


def test_unreachable_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="out of reach"):
        plan_noise_multiplier(target_epsilon=1e-4, delta=1e-5, sample_rate=1.0, steps=100_000, accountant="rdp")


def test_a_noise_multiplier_below_the_target_is_refused_before_training() -> None:
    with pytest.raises(ConfigError, match=r"noise_multiplier=0\.5"):
        resolve_noise_multiplier(
            target_epsilon=1.0, noise_multiplier=0.5, delta=1e-5, sample_rate=0.04, steps=1000, accountant="rdp"
        )


def test_a_sufficient_noise_multiplier_is_used_as_given() -> None:
    z = resolve_noise_multiplier(
        target_epsilon=10.0, noise_multiplier=2.0, delta=1e-5, sample_rate=0.04, steps=100, accountant="rdp"
    )

    assert z == 2.0


def test_delta_at_or_above_one_over_n_is_refused() -> None:
    from fedinfra.privacy import check_delta

    with pytest.raises(ConfigError, match="1/n"):
        check_delta(1e-3, dataset_size=1000)


def test_prv_refuses_a_grid_that_would_not_fit_in_memory() -> None:
    with pytest.raises(ConfigError, match="use accountant 'rdp'"):
        compute_epsilon(noise_multiplier=0.3, sample_rate=1.0, steps=10_000, delta=1e-5, accountant="prv")


@pytest.mark.parametrize("q", [0.01, 0.37, 1.0])
@pytest.mark.parametrize("sigma", [0.5, 4.25])
@pytest.mark.parametrize("steps", [1, 7, 3000])
def test_the_cached_one_step_rdp_curve_times_steps_is_opacus_curve_exactly(q: float, sigma: float, steps: int) -> None:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    from fedinfra.privacy.accounting import _rdp_curve

    orders = [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]
    expected = [float(v) for v in rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)]
    for _ in range(2):  # computed, then from the cache
        assert _rdp_curve([(sigma, q, steps)]) == (orders, expected)
