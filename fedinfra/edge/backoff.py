"""Capped exponential backoff with jitter for an unreachable server.

Why jitter: after an outage a fleet of devices that retry on a fixed schedule reconnects
in lockstep and knocks the server over again; drawing each delay at random from
``[(1 - jitter) d, d]`` spreads them out (Brooker 2015, AWS Architecture Blog,
"Exponential Backoff And Jitter"; the same idea as TCP's randomised retransmission timer,
RFC 6298 §5). The nominal delay ``d = min(max_s, initial_s * multiplier**attempt)``.
"""

from __future__ import annotations

import math

import numpy as np

from fedinfra.config.device import BackoffSpec


def nominal_delay(spec: BackoffSpec, attempt: int) -> float:
    """Delay before retry number ``attempt`` (0-based), before jitter.

    >>> nominal_delay(BackoffSpec(initial_s=1, max_s=10, multiplier=2), 0)
    1.0
    >>> nominal_delay(BackoffSpec(initial_s=1, max_s=10, multiplier=2), 5)
    10.0
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0 (got {attempt})")
    # Compare logarithms, not powers, so a huge attempt count cannot overflow.
    if spec.multiplier > 1 and attempt * math.log(spec.multiplier) >= math.log(spec.max_s / spec.initial_s):
        return float(spec.max_s)
    return float(min(spec.max_s, spec.initial_s * spec.multiplier**attempt))


def jittered(nominal: float, jitter: float, u: float) -> float:
    """Map a uniform draw ``u`` in [0, 1) to a delay in ``[(1 - jitter) nominal, nominal]``."""
    return nominal * (1.0 - jitter * u)


class Backoff:
    """Stateful retry schedule: :meth:`next_delay` grows, :meth:`reset` after a success.

    ``rng`` is injected: seeded in tests, OS-seeded (the default) on a device.
    """

    def __init__(self, spec: BackoffSpec, *, rng: np.random.Generator | None = None) -> None:
        self.spec = spec
        self.attempt = 0
        self._rng = rng if rng is not None else np.random.default_rng()

    def next_delay(self) -> float:
        """Return the delay before the next retry and count the attempt."""
        d = jittered(nominal_delay(self.spec, self.attempt), self.spec.jitter, float(self._rng.random()))
        self.attempt += 1
        return d

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a successful connection)."""
        self.attempt = 0
