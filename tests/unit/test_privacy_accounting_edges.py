"""Accounting edges: exact refusals, the PRV figure and grid equal to Opacus' own, small epsilons
reported as they are, and a planned noise multiplier within its tolerance of the target."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

from fedinfra.errors import ConfigError
from fedinfra.privacy.accounting import (
    _prv_grid_points,
    check_delta,
    compute_epsilon,
    epsilon_of_history,
    plan_noise_multiplier,
    resolve_noise_multiplier,
)

RDP = {"delta": 1e-5, "sample_rate": 0.04, "steps": 100, "accountant": "rdp"}


def _exactly(msg: str) -> str:
    return f"^{re.escape(msg)}$"


# --- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [2.5, True])
def test_steps_must_be_a_whole_number_not_a_fraction_or_a_bool(steps: object) -> None:
    with pytest.raises(ConfigError, match=_exactly(f"steps must be a whole number >= 0 (got {steps!r})")):
        compute_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=steps, delta=1e-5, accountant="rdp")  # type: ignore[arg-type]


@pytest.mark.parametrize("sigma", [0.0, math.nan, math.inf])
def test_a_noise_multiplier_that_is_not_positive_and_finite_is_refused_by_name(sigma: float) -> None:
    msg = f"noise_multiplier must be a positive finite number (got {sigma!r})"
    with pytest.raises(ConfigError, match=_exactly(msg)):
        compute_epsilon(noise_multiplier=sigma, sample_rate=0.1, steps=10, delta=1e-5, accountant="rdp")


def test_delta_not_below_one_over_n_is_refused_with_the_bound_and_an_example() -> None:
    msg = "delta=0.01 is not below 1/n = 0.005 for a data set of 200 records; choose delta < 1/n (e.g. 0.0005)"
    with pytest.raises(ConfigError, match=_exactly(msg)):
        check_delta(0.01, dataset_size=200)


def test_delta_has_no_size_bound_for_an_empty_or_unknown_data_set() -> None:
    assert check_delta(0.5, dataset_size=0) == 0.5
    assert check_delta(0.5, dataset_size=None) == 0.5


# --- epsilon -----------------------------------------------------------------------------------------


def test_one_step_costs_something() -> None:
    assert compute_epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=1, delta=1e-5, accountant="rdp") > 0


def test_a_small_epsilon_is_reported_as_it_is() -> None:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(8.0, 0.01, 10)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # best order at the grid's edge: still a valid bound
        expected = acc.get_epsilon(delta=1e-5)

    eps = compute_epsilon(noise_multiplier=8.0, sample_rate=0.01, steps=10, delta=1e-5, accountant="rdp")

    assert eps < 1.0
    assert eps == pytest.approx(expected, rel=1e-12)


def test_the_prv_figure_is_opacus_prv_upper_bound_with_its_default_errors() -> None:
    from opacus.accountants import PRVAccountant

    history = [(1.0, 0.1, 10), (2.0, 0.05, 30)]
    acc = PRVAccountant()
    acc.history = list(history)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        expected = acc.get_epsilon(delta=1e-5)  # eps_error 0.01, delta_error delta / 1000

    assert epsilon_of_history(history, delta=1e-5) == expected  # the default accountant is PRV


@pytest.mark.parametrize(
    ("history", "delta"),
    [([(1.5, 0.04, 2249)], 1e-5), ([(0.8, 0.5, 400)], 1e-6), ([(1.0, 0.1, 100), (2.0, 0.02, 500)], 1e-5)],
)
def test_the_predicted_prv_grid_is_the_grid_opacus_allocates(
    history: list[tuple[float, float, int]], delta: float
) -> None:
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        domain = PRVAccountant()._get_domain(
            prvs=[PoissonSubsampledGaussianPRV(q, s) for s, q, _ in history],
            num_self_compositions=[t for _, _, t in history],
            eps_error=0.01,
            delta_error=delta / 1000,
        )

    # Opacus aligns the domain to whole meshes (at most 3 points more than 2 L / mesh).
    assert _prv_grid_points(history, 0.01, delta / 1000) == pytest.approx(domain.size, rel=2e-5)


def test_the_prv_refusal_says_what_to_do() -> None:
    msg = (
        "the PRV accountant cannot handle this little noise over this many steps "
        "(its grid would not fit in memory); use accountant 'rdp'"
    )
    with pytest.raises(ConfigError, match=_exactly(msg)):
        compute_epsilon(noise_multiplier=0.3, sample_rate=1.0, steps=10_000, delta=1e-5, accountant="prv")


# --- planning ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.3, 1.0, 3.0, 8.0, 40.0])
def test_the_planned_noise_is_the_smallest_within_one_percent_of_the_target(target: float) -> None:
    z = plan_noise_multiplier(target_epsilon=target, **RDP)  # type: ignore[arg-type]

    eps = compute_epsilon(noise_multiplier=z, **RDP)  # type: ignore[arg-type]
    assert 0.99 * target <= eps <= target


def test_zero_steps_cannot_be_planned_and_one_can() -> None:
    # Without an accountant: the default (PRV) is checked before the steps.
    with pytest.raises(ConfigError, match=_exactly("steps must be >= 1 to plan a noise multiplier")):
        plan_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=0)

    z = plan_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=1, accountant="rdp")
    assert compute_epsilon(noise_multiplier=z, sample_rate=0.1, steps=1, delta=1e-5, accountant="rdp") <= 1.0


@pytest.mark.parametrize("target", [0.0, math.inf])
def test_a_target_that_is_not_positive_and_finite_is_refused_by_name(target: float) -> None:
    msg = f"target_epsilon must be a positive finite number (got {target!r})"
    with pytest.raises(ConfigError, match=_exactly(msg)):
        plan_noise_multiplier(target_epsilon=target, **RDP)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [3.0, 40.0])
def test_a_zero_tolerance_bisects_to_the_bracket_precision(target: float) -> None:
    # The bracket stops at a width of 1e-4 x its upper end, relative to sigma whether sigma is
    # above 1 (target 3) or below (target 40).
    z = plan_noise_multiplier(target_epsilon=target, tolerance=0.0, **RDP)  # type: ignore[arg-type]

    assert compute_epsilon(noise_multiplier=z, **RDP) <= target  # type: ignore[arg-type]
    assert compute_epsilon(noise_multiplier=z * (1 - 2e-4), **RDP) > target  # type: ignore[arg-type]


# --- resolving ---------------------------------------------------------------------------------------


def test_a_target_alone_is_planned() -> None:
    z = resolve_noise_multiplier(target_epsilon=3.0, noise_multiplier=None, **RDP)  # type: ignore[arg-type]

    assert z == plan_noise_multiplier(target_epsilon=3.0, **RDP)  # type: ignore[arg-type]


def test_neither_target_nor_multiplier_is_refused_saying_what_to_set() -> None:
    msg = "set 'epsilon' (target) or 'noise_multiplier' to run with DP"
    with pytest.raises(ConfigError, match=_exactly(msg)):
        resolve_noise_multiplier(target_epsilon=None, noise_multiplier=None, **RDP)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "sigma", "msg"),
    [
        (1.0, 0.0, "noise_multiplier must be a positive finite number (got 0.0)"),
        (0.0, 1.0, "epsilon must be a positive finite number (got 0.0)"),
    ],
)
def test_resolving_refuses_a_bad_multiplier_or_target_by_name(target: float, sigma: float, msg: str) -> None:
    with pytest.raises(ConfigError, match=_exactly(msg)):
        resolve_noise_multiplier(target_epsilon=target, noise_multiplier=sigma, **RDP)  # type: ignore[arg-type]


def test_a_multiplier_reaching_exactly_the_target_is_accepted() -> None:
    target = compute_epsilon(noise_multiplier=1.3, **RDP)  # type: ignore[arg-type]

    assert resolve_noise_multiplier(target_epsilon=target, noise_multiplier=1.3, **RDP) == 1.3  # type: ignore[arg-type]


def test_the_target_is_checked_with_the_accountant_asked_for() -> None:
    # PRV is tighter than RDP: a multiplier within the target under PRV can exceed it under RDP.
    sigma, q, steps, delta = 1.0, 0.1, 10, 1e-5
    rdp = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant="rdp")
    prv = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant="prv")
    target = (rdp + prv) / 2
    assert prv < target < rdp

    with pytest.raises(ConfigError, match="above the target"):
        resolve_noise_multiplier(target_epsilon=target, noise_multiplier=sigma, delta=delta, sample_rate=q,
                                 steps=steps, accountant="rdp")
    assert resolve_noise_multiplier(target_epsilon=target, noise_multiplier=sigma, delta=delta, sample_rate=q,
                                    steps=steps) == sigma  # the default accountant: PRV
