"""Distributed noise: each site adds a share, the secure sum carries the whole noise.

User-level DP-FedAvg (McMahan et al. 2018) adds N(0, z^2 S^2) to the *sum* of clipped
updates. When no party may see that sum in the clear, each contributing site adds a share
instead (Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation"; Truex et al. 2019). Two rules keep that honest
against a coordinator that does not follow the protocol:

* **Only where the coordinator sees a sum.** A share is ``z / sqrt(m)`` of the noise; a
  coordinator that sees one site's update sees that site with a sqrt(m)-times smaller
  noise multiplier (the default 100-device demo with m = 20: epsilon about 28 for one
  participation instead of the 4.5 reported). So splitting noise needs ``he``, ``secagg``
  or ``secagg+he``: :data:`DISTRIBUTED_NOISE_MODES`.
* **Calibrated to the floor of survivors, not to a count the coordinator sends.** The share
  is ``z S / sqrt(min_sites)``: any sum of at least ``min_sites`` contributions carries at
  least N(0, z^2 S^2), whatever the coordinator claims about the sample and however many
  sites drop out; an aggregate of fewer contributions is never released (the coordinator
  refuses it and the secure sum cannot be opened). A larger sample simply carries more
  noise than needed: the utility price of not trusting the coordinator's count.

The guarantee assumes the ``min_sites`` contributors of a sum are distinct honest sites
(each adding its share). A coordinator that colludes with sites, or admits sybils, leaves
an honest site with only its own share: ``z / sqrt(min_sites)``. Sites bound that by the
``budget.max_noise_split`` cap in their manifest.

This module is the one calibration helper; secure-aggregation code reuses it.
"""

from __future__ import annotations

import math

from fedinfra.config.job import DISTRIBUTED_NOISE_MODES, DISTRIBUTED_NOISE_RULE
from fedinfra.errors import ConfigError


def check_distributed_noise_mode(mode: str) -> None:
    """Raise :class:`ConfigError` with :data:`DISTRIBUTED_NOISE_RULE` unless ``mode`` hides updates."""
    if mode not in DISTRIBUTED_NOISE_MODES:
        raise ConfigError(f"{DISTRIBUTED_NOISE_RULE} (got {mode!r})")


def _check(noise_multiplier: float, min_survivors: int) -> float:
    z = float(noise_multiplier)
    if not math.isfinite(z) or z <= 0:
        raise ConfigError(f"noise_multiplier must be a positive finite number (got {noise_multiplier!r})")
    if isinstance(min_survivors, bool) or int(min_survivors) != min_survivors or min_survivors < 1:
        raise ConfigError(f"min_survivors must be a whole number >= 1 (got {min_survivors!r})")
    return z


def site_share_std(*, noise_multiplier: float, clip: float, min_survivors: int) -> float:
    """Std of one site's share: ``z * S / sqrt(min_survivors)``.

    >>> site_share_std(noise_multiplier=2.0, clip=0.5, min_survivors=4)
    0.5
    """
    z = _check(noise_multiplier, min_survivors)
    s = float(clip)
    if not math.isfinite(s) or s <= 0:
        raise ConfigError(f"clip must be a positive finite number (got {clip!r})")
    return z * s / math.sqrt(min_survivors)


def surviving_noise_multiplier(*, noise_multiplier: float, survivors: int, min_survivors: int) -> float:
    """The noise multiplier of a sum of ``survivors`` shares: ``z * sqrt(survivors / min_survivors)``.

    Raises when ``survivors < min_survivors``: such a sum must not be released.

    >>> surviving_noise_multiplier(noise_multiplier=1.0, survivors=8, min_survivors=2)
    2.0
    """
    z = _check(noise_multiplier, min_survivors)
    if survivors < min_survivors:
        raise ConfigError(
            f"{survivors} contributions carry less than the full noise (floor {min_survivors}); release nothing"
        )
    return z * math.sqrt(survivors / min_survivors)
