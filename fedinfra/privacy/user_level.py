"""User-level (site-level) DP-FedAvg pieces: clip, noise, accounting and caveats.

McMahan, Ramage, Talwar & Zhang 2018, "Learning Differentially Private Recurrent Language
Models" (ICLR): each sampled site clips its whole model update to L2 norm ``S``; the server
adds N(0, z^2 S^2) to the *sum* of clipped updates. The round is a sampled Gaussian
mechanism over sites with ``q = sampled / total``, so the accounting of
:mod:`fedinfra.privacy.accounting` applies with ``steps = rounds``.

Distributed noise: when updates are summed under encryption, the coordinator cannot add
noise to the sum. Instead each of the ``n`` sampled sites adds N(0, z^2 S^2 / n); the sum
of ``n`` independent such draws is N(0, z^2 S^2), the central mechanism's noise. This
assumes at most the site itself is dishonest about its own noise: a site that skips its
share lowers the total noise (Kairouz et al. 2021 discuss this trust model).

When it is meaningless: the guarantee protects *whether one site took part*. With a
handful of sites and ``q = 1`` there is no sampling amplification, the noise must be of
the order of one whole clipped update to hide a site, and utility collapses; the number
then reads as protection that it does not give. :func:`user_level_caveats` says so.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from fedinfra.errors import ConfigError
from fedinfra.privacy.accounting import compute_epsilon
from fedinfra.privacy.noise import add_gaussian_noise, discrete_gaussian
from fedinfra.types import NDArrays

#: Fewer sites than this make site-level DP weak (no useful amplification by sampling).
MIN_MEANINGFUL_SITES = 100


class UserLevelDPWarning(UserWarning):
    """User-level DP is configured where its guarantee is weak or meaningless."""


def _positive(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a positive finite number (got {value!r})")
    return v


def update_norm(update: NDArrays) -> float:
    """Global L2 norm over all tensors of ``update`` (float64 accumulation)."""
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64)))) for a in update.values()))


def clip_update(update: NDArrays, clip: float) -> tuple[NDArrays, float]:
    """Scale ``update`` so its global L2 norm is at most ``clip``; return (clipped, original norm).

    One factor ``min(1, clip / norm)`` for all tensors (flat clipping, McMahan et al. 2018,
    Alg. 1), so the update's direction is kept.
    """
    s = _positive("clip", clip)
    norm = update_norm(update)
    if not math.isfinite(norm):
        raise ConfigError("update holds NaN or infinite values; refusing to clip it")
    factor = min(1.0, s / norm) if norm > 0 else 1.0
    clipped = {k: (np.asarray(v, dtype=np.float64) * factor).astype(np.float32) for k, v in update.items()}
    return clipped, norm


def central_noise_std(*, noise_multiplier: float, clip: float) -> float:
    """Std of the noise the server adds to the sum of clipped updates: ``z * S``."""
    return _positive("noise_multiplier", noise_multiplier) * _positive("clip", clip)


def site_noise_std(*, noise_multiplier: float, clip: float, num_sites: int) -> float:
    """Std each of ``num_sites`` adds so that the SUM of their noises has std ``z * S``."""
    if num_sites < 1:
        raise ConfigError(f"num_sites must be >= 1 (got {num_sites})")
    return central_noise_std(noise_multiplier=noise_multiplier, clip=clip) / math.sqrt(num_sites)


def noise_central(
    summed: NDArrays, *, noise_multiplier: float, clip: float, rng: np.random.Generator
) -> NDArrays:
    """Add the central N(0, z^2 S^2) noise to the plaintext sum of clipped updates."""
    return add_gaussian_noise(summed, std=central_noise_std(noise_multiplier=noise_multiplier, clip=clip), rng=rng)


def noise_site_share(
    clipped: NDArrays, *, noise_multiplier: float, clip: float, num_sites: int, rng: np.random.Generator
) -> NDArrays:
    """Add this site's share N(0, z^2 S^2 / n) of the distributed noise to its clipped update."""
    std = site_noise_std(noise_multiplier=noise_multiplier, clip=clip, num_sites=num_sites)
    return add_gaussian_noise(clipped, std=std, rng=rng)


def site_discrete_noise_share(
    quantized: NDArrays, *, noise_multiplier: float, clip_units: float, num_sites: int, rng: np.random.Generator
) -> NDArrays:
    """Add this site's discrete Gaussian share to an integer-quantized update.

    ``clip_units`` is the clip bound in quantization units (S / step). Each site adds
    N_Z(0, z^2 clip_units^2 / n) (Kairouz, Liu & Steinke 2021). The sum of n discrete
    Gaussians is not exactly discrete Gaussian; their Thm. 1 bounds the gap, which is
    negligible when the per-site sigma is >= 1 unit, so accounting uses the continuous
    sampled Gaussian with std ``z * S``. Raises if the per-site sigma is below 1 unit.
    """
    sigma = site_noise_std(noise_multiplier=noise_multiplier, clip=clip_units, num_sites=num_sites)
    if sigma < 1.0:
        raise ConfigError(
            f"per-site discrete noise sigma {sigma:.3g} is below one quantization unit; "
            "use a finer quantization (more units per clip bound) or fewer sites per round"
        )
    out: NDArrays = {}
    for name, arr in quantized.items():
        a = np.asarray(arr)
        if not np.issubdtype(a.dtype, np.integer):
            raise ConfigError(f"tensor {name!r} is not integer-quantized (dtype {a.dtype})")
        out[name] = a.astype(np.int64) + discrete_gaussian(rng, sigma, a.shape)
    return out


def sampling_rate(*, sites_per_round: int, total_sites: int) -> float:
    """``q = sites_per_round / total_sites``, validated."""
    if total_sites < 1 or not 1 <= sites_per_round <= total_sites:
        raise ConfigError(
            f"sites_per_round must be in [1, total_sites] (got {sites_per_round} of {total_sites})"
        )
    return sites_per_round / total_sites


def user_level_epsilon(
    *,
    noise_multiplier: float,
    sites_per_round: int,
    total_sites: int,
    rounds: int,
    delta: float,
    accountant: str = "prv",
) -> float:
    """Epsilon of user-level DP-FedAvg after ``rounds`` (sampled Gaussian, q = sampled/total)."""
    q = sampling_rate(sites_per_round=sites_per_round, total_sites=total_sites)
    return compute_epsilon(
        noise_multiplier=noise_multiplier, sample_rate=q, steps=rounds, delta=delta, accountant=accountant
    )


def user_level_caveats(*, total_sites: int, sites_per_round: int) -> list[str]:
    """Reasons the user-level guarantee is weak here (empty when none apply)."""
    q = sampling_rate(sites_per_round=sites_per_round, total_sites=total_sites)
    reasons: list[str] = []
    if total_sites < MIN_MEANINGFUL_SITES:
        reasons.append(
            f"only {total_sites} sites: user-level DP hides one whole site, which needs noise "
            f"comparable to a site's update; with under {MIN_MEANINGFUL_SITES} sites prefer "
            "sample-level DP-SGD at each site"
        )
    if q >= 1.0:
        reasons.append(
            "every site takes part in every round (q = 1): no amplification by sampling, so "
            "epsilon grows quickly with rounds"
        )
    return reasons


def warn_if_user_level_dp_weak(*, total_sites: int, sites_per_round: int) -> list[str]:
    """Emit a :class:`UserLevelDPWarning` per caveat and return the caveats."""
    reasons = user_level_caveats(total_sites=total_sites, sites_per_round=sites_per_round)
    for reason in reasons:
        warnings.warn(f"user-level DP is weak here: {reason}", UserLevelDPWarning, stacklevel=2)
    return reasons
