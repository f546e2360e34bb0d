"""Noise sources: CSPRNG seeding, hardened Gaussian noise, a discrete Gaussian sampler.

The discrete sampler serves integer (quantized, then encrypted) updates.

Seeding. Production noise comes from a :class:`numpy.random.Generator` over the Philox
counter-based generator (Salmon et al. 2011, "Parallel Random Numbers: As Easy as 1, 2, 3")
keyed with 256 bits from the operating system's CSPRNG (:mod:`secrets`). Tests pass an
explicit seed and get the same noise every run. An adversary who cannot guess the key
cannot predict the noise; Philox is not a proven CSPRNG, which is why the key is fresh
from the OS for every generator and never logged.

Floating-point attack. Mironov 2012, "On Significance of the Least Significant Bits for
Differential Privacy" (CCS), shows that textbook floating-point samplers leave gaps in the
set of representable outputs, so a noisy value can reveal the exact input. Mitigations used:

* continuous Gaussian noise is the sum of ``2n = 4`` independent draws scaled by 1/2 (the
  construction of Holohan & Braghin 2021, "Secure Random Sampling in Differential Privacy",
  §5.1, also used by Opacus' ``secure_mode``), which raises the attack cost from about
  2^53 to about 2^159;
* for updates that are quantized to integers before encryption, :func:`discrete_gaussian`
  samples integers directly (Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for
  Differential Privacy", Alg. 3), so no floating-point value is ever released. Its
  acceptance tests use float64 probabilities (not exact rational arithmetic): a documented
  approximation, far below the noise scale.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import numpy.typing as npt

from fedinfra.errors import ConfigError
from fedinfra.types import NDArrays

_SECURE_DRAWS = 4  # 2n with n = 2 (Holohan & Braghin 2021, §5.1)


def secure_generator(seed: int | None = None) -> np.random.Generator:
    """A Philox generator keyed from the OS CSPRNG, or from ``seed`` for reproducible tests."""
    if seed is None:
        return np.random.Generator(np.random.Philox(key=secrets.randbits(128), counter=secrets.randbits(128)))
    if seed < 0:
        raise ConfigError(f"seed must be >= 0 (got {seed})")
    return np.random.Generator(np.random.Philox(seed))


def secure_seed() -> int:
    """A fresh 63-bit seed from the OS CSPRNG (for torch generators, which take one integer)."""
    return secrets.randbits(63)


def gaussian(rng: np.random.Generator, std: float, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """Zero-mean Gaussian noise of standard deviation ``std``, hardened against Mironov 2012.

    Sum of four N(0, std^2) draws divided by 2: the result is exactly N(0, std^2).
    """
    if not math.isfinite(std) or std < 0:
        raise ConfigError(f"noise std must be a finite number >= 0 (got {std})")
    total = np.zeros(shape)  # float64, numpy's default
    for _ in range(_SECURE_DRAWS):
        total += rng.normal(0.0, std, size=shape)
    total *= 1.0 / math.sqrt(_SECURE_DRAWS)
    return total


def add_gaussian_noise(update: NDArrays, *, std: float, rng: np.random.Generator) -> NDArrays:
    """Return ``update`` plus independent N(0, std^2) noise on every coordinate (float32)."""
    return {
        name: (np.asarray(arr, dtype=np.float64) + gaussian(rng, std, np.shape(arr))).astype(np.float32)
        for name, arr in update.items()
    }


def discrete_gaussian(rng: np.random.Generator, sigma: float, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    """Integer noise from the discrete Gaussian N_Z(0, sigma^2) (Canonne et al. 2020, Alg. 3).

    Rejection sampling from a discrete Laplace with scale ``t = floor(sigma) + 1``; the
    expected number of rounds is below 2 for sigma >= 1. Used per site for the distributed
    discrete Gaussian of Kairouz, Liu & Steinke 2021 ("The Distributed Discrete Gaussian
    Mechanism for Federated Learning with Secure Aggregation").
    """
    if not math.isfinite(sigma) or sigma <= 0:
        raise ConfigError(f"discrete Gaussian sigma must be a positive finite number (got {sigma})")
    size = math.prod(shape)
    out = np.empty(size, dtype=np.int64)
    t = math.floor(sigma) + 1
    p = 1.0 - math.exp(-1.0 / t)
    filled = 0
    while filled < size:
        k = max(64, int(1.3 * (size - filled)) + 16)
        # Discrete Laplace(t) as the difference of two geometrics on {0, 1, ...}.
        y = (rng.geometric(p, size=k) - rng.geometric(p, size=k)).astype(np.int64)
        accept_p = np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        kept = y[rng.random(k) < accept_p]
        take = min(kept.size, size - filled)
        out[filled : filled + take] = kept[:take]
        filled += take
    return out.reshape(shape)
