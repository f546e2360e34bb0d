"""User-level DP at a site: what it accepts from the coordinator, and the two figures it charges.

The coordinator sends a round number, the size of the sample and of the admitted set it
drew the sample from. None of these may lower a site's charge (DESIGN.md, security model):

* :func:`check_claim` refuses values outside what the site can check - a sample larger
  than the admitted set, an admitted set larger than the job's sites or smaller than its
  floor, a noise split thinner than the site's manifest allows;
* the noise share does not depend on the claimed sample at all (it is calibrated to the
  job's ``min_sites``, :mod:`fedinfra.privacy.distributed`);
* the site counts its own releases (its ledger rows), not the coordinator's round number.

Two figures (:func:`user_level_figures`):

(a) **against the coordinator** - no amplification by sampling (the coordinator chose the
    sample), every release the site actually made, the noise as it survives in a secure
    sum of at least ``min_sites`` contributions: the exact Gaussian-mechanism composition
    of :mod:`fedinfra.privacy.gaussian`;
(b) **amplified** - against users of the released model, under honest Poisson sampling with
    rate ``q`` (Mironov, Talwar & Zhang 2019), composed with the job's accountant. A round
    in which the site released more than once is charged un-amplified for the extra
    releases. ``q`` is the inclusion rate of the coordinator's redrawn Poisson sample
    (:func:`fedinfra.site.user_dp.inclusion_rate`: the job's rate over the chance that a
    draw reaches ``min_sites``) unless the site's own participations make it implausible
    (one-sided binomial test at :data:`IMPLAUSIBLE`), then 1.

The site enforces its caps on (a), or on (b) only when the job says
``privacy.trust_sampling = true`` - and the report states that assumption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedinfra.errors import PolicyViolation
from fedinfra.privacy.accounting import epsilon_of_history, plan_noise_multiplier
from fedinfra.privacy.gaussian import gaussian_epsilon, plan_gaussian_noise

#: Tail probability below which a site's participation count refutes the claimed rate.
IMPLAUSIBLE = 1e-6


class InstructionRefused(PolicyViolation):
    """A coordinator-supplied accounting input lies outside what the site can check."""


@dataclass(frozen=True)
class RoundClaim:
    """What the coordinator says about a round."""

    round: int
    sampled: int
    admitted: int


def check_claim(claim: RoundClaim, *, job_sites: int, min_sites: int, max_noise_split: int) -> None:
    """Refuse a round whose claimed sample, admitted set or noise split the site cannot accept."""
    if claim.round < 1:
        raise InstructionRefused(f"instruction round {claim.round} is not a training round")
    if not min_sites <= claim.admitted <= job_sites:
        raise InstructionRefused(
            f"instruction claims {claim.admitted} admitted sites, outside [sites.min_sites={min_sites}, "
            f"sites.count={job_sites}]; refusing the round"
        )
    if not 1 <= claim.sampled <= claim.admitted:
        raise InstructionRefused(
            f"instruction claims {claim.sampled} sampled sites of {claim.admitted} admitted; refusing the round"
        )
    if min_sites > max_noise_split:
        raise InstructionRefused(
            f"the job splits noise across sites.min_sites={min_sites} sites, more than this site's "
            f"budget.max_noise_split={max_noise_split}; refusing the round"
        )


def check_survivors(contributions: int, *, min_sites: int) -> None:
    """Refuse to use an aggregate of fewer than ``min_sites`` contributions (user-level DP).

    Each share carries ``1 / sqrt(min_sites)`` of the noise (:mod:`fedinfra.privacy.distributed`),
    so a smaller sum - a coordinator that forwards one site's ciphertext as "the aggregate" -
    would show that site with too little noise. A key-holding site refuses to open it.
    """
    if contributions < min_sites:
        raise InstructionRefused(
            f"aggregate holds {contributions} contributions, fewer than sites.min_sites={min_sites}: "
            "it carries less than the full noise; refusing to use it"
        )


def binomial_tail(k: int, n: int, q: float) -> float:
    """P(X >= k) for X ~ Binomial(n, q) (exact sum, log-space terms)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if q >= 1.0:
        return 1.0
    if q <= 0.0:
        return 0.0
    total = 0.0
    for i in range(k, n + 1):
        log_term = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        total += math.exp(log_term + i * math.log(q) + (n - i) * math.log1p(-q))
    return min(1.0, total)


def credible_rate(*, claimed: float, participations: int, rounds: int) -> float:
    """The sampling rate the site credits: the claimed one, or 1 when its participations refute it.

    >>> credible_rate(claimed=0.1, participations=2, rounds=10)
    0.1
    >>> credible_rate(claimed=0.01, participations=10, rounds=10)
    1.0
    """
    if not 0 < claimed <= 1:
        return 1.0
    if binomial_tail(participations, rounds, claimed) < IMPLAUSIBLE:
        return 1.0
    return claimed


@dataclass(frozen=True)
class UserLevelFigures:
    """Both figures after a release, and which one the site enforces."""

    against_coordinator: float
    amplified: float
    releases: int
    rounds: int
    sample_rate: float
    enforced: Literal["against-coordinator", "amplified"]

    @property
    def epsilon(self) -> float:
        """The figure charged against the site's caps."""
        return self.amplified if self.enforced == "amplified" else self.against_coordinator


def user_level_figures(
    *,
    noise_multiplier: float,
    releases: int,
    rounds_released: int,
    current_round: int,
    sample_rate: float,
    delta: float,
    accountant: str,
    trust_sampling: bool,
) -> UserLevelFigures:
    """Figures (a) and (b) after ``releases`` releases spread over ``rounds_released`` rounds.

    ``noise_multiplier`` is the multiplier that survives in the released sum. (b) never
    exceeds (a): a guarantee against the coordinator holds against model users too.
    """
    a = gaussian_epsilon(noise_multiplier=noise_multiplier, releases=releases, delta=delta)
    q = credible_rate(claimed=sample_rate, participations=rounds_released, rounds=current_round)
    extra = max(0, releases - rounds_released)
    history = [(noise_multiplier, q, current_round), (noise_multiplier, 1.0, extra)]
    b = min(a, epsilon_of_history(history, delta=delta, accountant=accountant))
    return UserLevelFigures(
        against_coordinator=a,
        amplified=b,
        releases=releases,
        rounds=current_round,
        sample_rate=q,
        enforced="amplified" if trust_sampling else "against-coordinator",
    )


def expected_releases(*, rounds: int, sample_rate: float) -> int:
    """Releases to plan for: ``q R`` plus two standard deviations (all rounds when q = 1)."""
    mean = rounds * sample_rate
    return max(1, min(rounds, math.ceil(mean + 2 * math.sqrt(mean * (1 - sample_rate)))))


def plan_user_level_noise(
    *, target_epsilon: float, rounds: int, sample_rate: float, delta: float, accountant: str, trust_sampling: bool
) -> float:
    """The job-wide noise multiplier: every site plans the same one from the job alone.

    Planned on the figure the sites enforce: (a) for :func:`expected_releases` releases,
    or (b) over ``rounds`` Poisson rounds when the job trusts sampling.
    """
    if trust_sampling:
        return plan_noise_multiplier(
            target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=rounds, accountant=accountant
        )
    releases = expected_releases(rounds=rounds, sample_rate=sample_rate)
    return plan_gaussian_noise(target_epsilon=target_epsilon, releases=releases, delta=delta)
