"""Pure privacy accounting for the sampled Gaussian mechanism, built on Opacus' accountants.

Every DP mechanism fedinfra runs is a *sampled Gaussian mechanism* (SGM): DP-SGD at a site
(Abadi et al. 2016, "Deep Learning with Differential Privacy") samples each example with
probability ``q`` per step; user-level DP-FedAvg (McMahan et al. 2018) samples each site with
probability ``q = sampled / total`` per round. Both add Gaussian noise of standard deviation
``noise_multiplier x clip``. An accountant turns ``(noise_multiplier, q, steps, delta)`` into
the epsilon of an ``(epsilon, delta)``-DP guarantee.

Accountants (a registry, as Opacus' ``accountants/registry.py``):

* ``prv`` (default) - numerical composition of privacy-loss random variables (Gopi, Lee &
  Wutschitz 2021, "Numerical Composition of Differential Privacy"); Opacus returns the
  *upper* bound of its error interval, so the figure is safe to enforce.
* ``rdp`` - Rényi DP of the SGM (Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of
  the Sampled Gaussian Mechanism") with the tight conversion of Balle et al. 2020,
  "Hypothesis Testing Interpretations and Rényi Differential Privacy", Thm. 21.
* ``rdp-classic`` - the same RDP curve with the classic conversion
  ``epsilon = rdp(alpha) + log(1/delta) / (alpha - 1)`` (Mironov 2017, "Rényi Differential
  Privacy", Prop. 3). Looser; exposed to reproduce published figures (TF Privacy).

These functions are pure: no state, no I/O. Stateful holders (the ledger, the trainer)
call them.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Final

from fedinfra.errors import ConfigError

#: One homogeneous stretch of training: (noise_multiplier, sample_rate, steps).
Segment = tuple[float, float, int]

_MAX_NOISE_MULTIPLIER: Final = 1e4


def _orders() -> list[float]:
    from opacus.accountants import RDPAccountant

    return [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]


@functools.lru_cache(maxsize=256)
def _one_step_rdp(q: float, sigma: float) -> tuple[float, ...]:
    """The SGM's RDP curve for one step at ``(q, sigma)``, over :func:`_orders` (cached).

    Opacus' ``compute_rdp`` is this curve times ``steps`` (RDP composes additively,
    Mironov 2017, Prop. 1), so multiplying the cached curve by ``steps`` gives the same
    floats without re-running its series for every order on every call (25 ms per call:
    as much as a whole non-private training run of the digits MLP).
    """
    from opacus.accountants.analysis import rdp as rdp_analysis

    return tuple(float(v) for v in rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=_orders()))


def _rdp_curve(history: Sequence[Segment]) -> tuple[list[float], list[float]]:
    import numpy as np

    orders = _orders()
    total = np.zeros(len(orders))
    for sigma, q, steps in history:
        total = total + np.asarray(_one_step_rdp(float(q), float(sigma))) * steps
    return orders, [float(v) for v in total]


def _eps_rdp(history: Sequence[Segment], delta: float) -> float:
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders, rdp = _rdp_curve(history)
    with warnings.catch_warnings():
        # Opacus warns when the optimum sits at the edge of its order grid; the bound is
        # still valid (just not the tightest), so the warning is not actionable here.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


def _eps_rdp_classic(history: Sequence[Segment], delta: float) -> float:
    orders, rdp = _rdp_curve(history)
    return min(r + math.log(1.0 / delta) / (a - 1.0) for a, r in zip(orders, rdp, strict=True))


class PRVGridTooLarge(ConfigError):
    """The PRV accountant would need an impractically fine grid (tiny noise, q near 1, many steps)."""


_MAX_PRV_GRID: Final = 20_000_000  # points (float64): ~160 MB per array Opacus allocates


def _prv_grid_points(history: Sequence[Segment], eps_error: float, delta_error: float) -> float:
    """Points of the grid Opacus' PRV accountant discretises ``history`` on (inf if unbounded).

    Opacus (``PRVAccountant._get_domain``) takes the safe domain ``[-L, L]`` of Gopi et al. 2021
    at mesh ``eps_error / sqrt(steps * log(12 / delta_error) / 2)`` and allocates arrays of
    that many float64 points; computing ``L`` alone is cheap, so the size is known before.
    """
    import numpy as np
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

    steps = [t for _, _, t in history]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Opacus evaluates log/exp at the grid edges where they overflow harmlessly, and its RDP
        # bound of L warns when the best order is at the edge of its grid (still a valid bound).
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        half = compute_safe_domain_size(
            prvs=[PoissonSubsampledGaussianPRV(q, s) for s, q, _ in history],
            max_self_compositions=steps,
            eps_error=eps_error,
            delta_error=delta_error,
        )
    mesh = eps_error / math.sqrt(sum(steps) * math.log(12 / delta_error) / 2)
    return 2 * half / mesh if math.isfinite(half) else math.inf


def _eps_prv(history: Sequence[Segment], delta: float) -> float:
    import numpy as np
    from opacus.accountants import PRVAccountant

    eps_error, delta_error = 0.01, delta / 1000  # Opacus' defaults for get_epsilon
    if _prv_grid_points(history, eps_error, delta_error) > _MAX_PRV_GRID:
        raise PRVGridTooLarge(
            "the PRV accountant cannot handle this little noise over this many steps "
            "(its grid would not fit in memory); use accountant 'rdp'"
        )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Opacus evaluates log/exp at the grid edges where they overflow harmlessly.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        acc = PRVAccountant()
        acc.history = [(float(s), float(q), int(t)) for s, q, t in history]
        return float(acc.get_epsilon(delta=delta, eps_error=eps_error, delta_error=delta_error))


#: Accountant name -> epsilon(history, delta).
ACCOUNTANTS: Final[dict[str, Callable[[Sequence[Segment], float], float]]] = {
    "prv": _eps_prv,
    "rdp": _eps_rdp,
    "rdp-classic": _eps_rdp_classic,
}


def _positive(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a positive finite number (got {value!r})")
    return v


def check_delta(delta: float, *, dataset_size: int | None = None) -> float:
    """Validate ``delta``: in (0, 1), and below ``1 / dataset_size`` when the size is known.

    A delta of 1/n or more permits mechanisms that publish one record outright with
    probability delta (Dwork & Roth 2014, "The Algorithmic Foundations of DP", §2.3),
    so it is refused.
    """
    d = float(delta)
    if not math.isfinite(d) or not 0 < d < 1:
        raise ConfigError(f"delta must be in (0, 1) (got {delta!r}); 1e-5 is a common choice")
    if dataset_size is not None and dataset_size > 0 and d >= 1.0 / dataset_size:
        raise ConfigError(
            f"delta={d:g} is not below 1/n = {1.0 / dataset_size:.3g} for a data set of {dataset_size} "
            f"records; choose delta < 1/n (e.g. {0.1 / dataset_size:.1g})"
        )
    return d


def check_accountant(accountant: str) -> str:
    """Return ``accountant`` if it is registered, else raise :class:`ConfigError`."""
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {sorted(ACCOUNTANTS)} (got {accountant!r})")
    return accountant


def _check_segment(sigma: float, q: float, steps: int) -> Segment:
    s = _positive("noise_multiplier", sigma)
    qq = float(q)
    if not math.isfinite(qq) or not 0 < qq <= 1:
        raise ConfigError(f"sample_rate must be in (0, 1] (got {q!r})")
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ConfigError(f"steps must be a whole number >= 0 (got {steps!r})")
    return s, qq, int(steps)


def epsilon_of_history(history: Sequence[Segment], *, delta: float, accountant: str = "prv") -> float:
    """Epsilon of a composition of SGM segments ``(noise_multiplier, sample_rate, steps)``.

    >>> round(epsilon_of_history([(1.5, 0.04, 1000), (1.5, 0.04, 1250)], delta=1e-5, accountant="rdp"), 6)
    7.329111
    """
    check_accountant(accountant)
    check_delta(delta)
    segments = [_check_segment(*seg) for seg in history]
    segments = [seg for seg in segments if seg[2] > 0]
    if not segments:
        return 0.0
    # Merge equal (sigma, q) stretches: composition only depends on the multiset of steps.
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in segments:
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    eps = ACCOUNTANTS[accountant]([(s, q, t) for (s, q), t in merged.items()], delta)
    if math.isnan(eps):
        return math.inf
    return max(0.0, eps)


def compute_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon after ``steps`` SGM steps with ``noise_multiplier`` and ``sample_rate``.

    >>> round(compute_epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=2250, delta=1e-5,
    ...                       accountant="rdp"), 8)
    7.32911117
    """
    return epsilon_of_history([(noise_multiplier, sample_rate, steps)], delta=delta, accountant=accountant)


def plan_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier (within ``tolerance`` x epsilon) whose epsilon is <= target.

    The returned multiplier always satisfies ``compute_epsilon(...) <= target_epsilon``: the
    bisection keeps the upper (safe) end of its bracket.
    """
    target = _positive("target_epsilon", target_epsilon)
    check_accountant(accountant)
    check_delta(delta)
    _check_segment(1.0, sample_rate, steps)
    if steps == 0:
        raise ConfigError("steps must be >= 1 to plan a noise multiplier")

    def eps(sigma: float) -> float:
        try:
            return compute_epsilon(
                noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
            )
        except PRVGridTooLarge:
            # Only very small noise makes the grid explode; such a sigma is far too
            # small for any practical target, so treat it as "over target" and move up.
            return math.inf

    low, high = 0.0, 1.0
    while eps(high) > target:
        low, high = high, high * 2
        if high > _MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                f"target_epsilon={target:g} is out of reach with delta={delta:g}, sample_rate={sample_rate:g}, "
                f"steps={steps}; raise epsilon or delta, or train fewer steps"
            )
    while high - low > 1e-4 * high:
        mid = (low + high) / 2
        e = eps(mid)
        if e <= target:
            high = mid
            if target - e <= tolerance * target:
                break
        else:
            low = mid
    return high


def resolve_noise_multiplier(
    *,
    target_epsilon: float | None,
    noise_multiplier: float | None,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
) -> float:
    """The noise multiplier to train with, checked against the target *before* training.

    With only a target, plan one; with only a multiplier, use it; with both, refuse a
    multiplier whose epsilon after ``steps`` would exceed the target (a clear
    :class:`ConfigError` at configuration time, not a budget failure rounds later).
    """
    if noise_multiplier is None:
        if target_epsilon is None:
            raise ConfigError("set 'epsilon' (target) or 'noise_multiplier' to run with DP")
        return plan_noise_multiplier(
            target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
        )
    sigma = _positive("noise_multiplier", noise_multiplier)
    if target_epsilon is not None:
        target = _positive("epsilon", target_epsilon)
        eps = compute_epsilon(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
        )
        if eps > target:
            raise ConfigError(
                f"noise_multiplier={sigma:g} reaches epsilon={eps:.3f} after {steps} steps, above the target "
                f"{target:g}; raise the noise multiplier, lower the steps, or drop 'noise_multiplier' to plan it"
            )
    return sigma
