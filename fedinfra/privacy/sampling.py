"""Poisson sampling of sites for a round, from the OS CSPRNG.

The amplified figure (b) of user-level DP is the sampled Gaussian mechanism's (Mironov,
Talwar & Zhang 2019), which assumes *Poisson* sampling: each admitted site is included
independently with probability ``q``, and nobody can predict the draw. A fixed-size sample
without replacement is a different distribution, and a sample that follows from the job's
public seed is predictable; both void the figure. So each inclusion is one Bernoulli(q)
from :mod:`secrets` (53-bit uniforms, the resolution of a float64 ``q``).

Deviation, stated: a draw with fewer than ``min_sites`` sites is redrawn (a round needs that
many contributions to carry its full distributed noise), so the sample is Poisson
*conditioned* on at least ``min_sites`` sites. When that event has probability ``p``, each
site's inclusion probability is at most ``q / (1 - p)``; :func:`conditioned_rate` gives it,
sites take the amplified figure at it (:func:`fedinfra.site.user_dp.inclusion_rate`), and jobs
keep ``p`` small by choosing ``min_sites`` well below the expected sample.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from typing import TypeVar

from fedinfra.errors import ConfigError

T = TypeVar("T")

_BITS = 53
#: Redraws before giving up (the chance of needing them is astronomically small for sane jobs).
MAX_DRAWS = 10_000


def _secure_uniform() -> float:
    return secrets.randbits(_BITS) / (1 << _BITS)


def poisson_sample(
    items: Sequence[T], *, rate: float, min_size: int = 0, uniform: Callable[[], float] = _secure_uniform
) -> list[T]:
    """Each item independently with probability ``rate``; redrawn while fewer than ``min_size``."""
    if not 0 < rate <= 1:
        raise ConfigError(f"sampling rate must be in (0, 1] (got {rate!r})")
    if min_size > len(items):
        raise ConfigError(f"cannot sample {min_size} of {len(items)} sites; lower sites.min_sites")
    if rate >= 1:
        return list(items)
    for _ in range(MAX_DRAWS):
        chosen = [item for item in items if uniform() < rate]
        if len(chosen) >= min_size:
            return chosen
    raise ConfigError(
        f"no Poisson draw at rate {rate:g} reached {min_size} of {len(items)} sites; raise sites.fraction"
    )


def conditioned_rate(*, rate: float, population: int, min_size: int) -> float:
    """Upper bound on a site's inclusion probability under the redraw: ``q / P(|S| >= m)``."""
    from fedinfra.privacy.claims import binomial_tail

    p_ok = binomial_tail(min_size, population, rate)
    if p_ok <= 0:
        return 1.0
    return min(1.0, rate / p_ok) if not math.isclose(p_ok, 1.0) else rate
