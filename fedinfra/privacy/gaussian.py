"""The un-amplified Gaussian mechanism, composed exactly: the figure against the coordinator.

A coordinator that chose the sample knows whether a site took part, so amplification by
sampling (the ``q`` of the sampled Gaussian mechanism) does not hold against it. What is
left is ``k`` adaptive releases of the Gaussian mechanism with L2 sensitivity ``S`` and
noise std ``z * S``. Its composition is exactly mu-GDP with ``mu = sqrt(k) / z``
(Dong, Roth & Su 2022, "Gaussian Differential Privacy", JRSS-B, Cor. 3.3), and the exact
(epsilon, delta) curve of mu-GDP is (Balle & Wang 2018, "Improving the Gaussian Mechanism
for Differential Privacy: Analytical Calibration and Optimal Denoising", ICML, Thm. 8;
Dong et al. 2022, Cor. 2.13)::

    delta(epsilon) = Phi(-epsilon / mu + mu / 2) - exp(epsilon) * Phi(-epsilon / mu - mu / 2)

:func:`gaussian_epsilon` inverts it by bisection. No accountant approximation is involved,
so it is both tight and safe; it is what a site enforces unless the job trusts sampling.

>>> round(gaussian_delta(epsilon=1.0, mu=1.0), 4)
0.1269
>>> round(gaussian_epsilon(noise_multiplier=1.0, releases=1, delta=0.1269367), 4)
1.0
"""

from __future__ import annotations

import math

from fedinfra.errors import ConfigError


def _log_ndtr(x: float) -> float:
    from scipy.special import log_ndtr

    return float(log_ndtr(x))


def gaussian_delta(*, epsilon: float, mu: float) -> float:
    """Smallest delta for which mu-GDP implies (epsilon, delta)-DP (Balle & Wang 2018, Thm. 8)."""
    if not math.isfinite(mu) or mu < 0:
        raise ConfigError(f"mu must be a finite number >= 0 (got {mu!r})")
    if mu == 0:
        return 0.0
    a = _log_ndtr(-epsilon / mu + mu / 2)
    b = epsilon + _log_ndtr(-epsilon / mu - mu / 2)
    if b >= a:
        return 0.0
    return math.exp(a) * -math.expm1(b - a)


def gdp_mu(*, noise_multiplier: float, releases: int) -> float:
    """``mu = sqrt(releases) / noise_multiplier``: ``releases`` Gaussian releases composed."""
    z = float(noise_multiplier)
    if not math.isfinite(z) or z <= 0:
        raise ConfigError(f"noise_multiplier must be a positive finite number (got {noise_multiplier!r})")
    if isinstance(releases, bool) or int(releases) != releases or releases < 0:
        raise ConfigError(f"releases must be a whole number >= 0 (got {releases!r})")
    return math.sqrt(int(releases)) / z


def gaussian_epsilon(*, noise_multiplier: float, releases: int, delta: float) -> float:
    """Exact epsilon of ``releases`` un-amplified Gaussian releases at ``delta``.

    0 releases cost nothing. The returned value is the upper end of a bisection bracket
    narrower than 1e-9 relative, so it never under-states the exact figure.

    >>> round(gaussian_epsilon(noise_multiplier=1.0, releases=1, delta=1e-5), 4)
    4.3772
    """
    d = float(delta)
    if not math.isfinite(d) or not 0 < d < 1:
        raise ConfigError(f"delta must be in (0, 1) (got {delta!r})")
    mu = gdp_mu(noise_multiplier=noise_multiplier, releases=releases)
    if mu == 0 or gaussian_delta(epsilon=0.0, mu=mu) <= d:
        return 0.0
    low, high = 0.0, 1.0
    while gaussian_delta(epsilon=high, mu=mu) > d:
        low, high = high, high * 2
    while high - low > 1e-9 * max(1.0, high):
        mid = (low + high) / 2
        if gaussian_delta(epsilon=mid, mu=mu) > d:
            low = mid
        else:
            high = mid
    return high


def plan_gaussian_noise(*, target_epsilon: float, releases: int, delta: float) -> float:
    """Smallest noise multiplier whose ``releases`` un-amplified releases stay within the target.

    >>> round(plan_gaussian_noise(target_epsilon=1.0, releases=1, delta=1e-5), 3)
    3.731
    """
    t = float(target_epsilon)
    if not math.isfinite(t) or t <= 0:
        raise ConfigError(f"target_epsilon must be a positive finite number (got {target_epsilon!r})")
    if releases < 1:
        raise ConfigError(f"releases must be >= 1 to plan noise (got {releases})")
    low, high = 0.0, 1.0
    while gaussian_epsilon(noise_multiplier=high, releases=releases, delta=delta) > t:
        low, high = high, high * 2
    while high - low > 1e-6 * high:
        mid = (low + high) / 2
        if gaussian_epsilon(noise_multiplier=mid, releases=releases, delta=delta) > t:
            low = mid
        else:
            high = mid
    return high
