"""User-level DP edges: float64 norms and scaling, every refusal with its message, the bounds of
the sampling rate and of the per-site discrete noise, the discrete share itself, and the caveats."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fedinfra.errors import ConfigError
from fedinfra.privacy import (
    UserLevelDPWarning,
    clip_update,
    compute_epsilon,
    discrete_gaussian,
    secure_generator,
    site_discrete_noise_share,
    site_noise_std,
    update_norm,
    user_level_caveats,
    user_level_epsilon,
    warn_if_user_level_dp_weak,
)
from fedinfra.privacy.user_level import central_noise_std, sampling_rate

FEW = (
    "only 4 sites: user-level DP hides one whole site, which needs noise comparable to a site's update; "
    "with under 100 sites prefer sample-level DP-SGD at each site"
)
FULL = (
    "every site takes part in every round (q = 1): no amplification by sampling, so epsilon grows quickly with rounds"
)


def _exactly(msg: str) -> str:
    return f"^{re.escape(msg)}$"


def test_the_norm_of_a_float32_update_near_its_largest_value_is_finite() -> None:
    # 3e38 squared overflows float32 (max 3.4e38); the sum of squares is taken in float64.
    assert update_norm({"w": np.full(2, 3e38, np.float32)}) == pytest.approx(3e38 * math.sqrt(2), rel=1e-7)


def test_clipping_a_huge_update_to_a_small_bound_scales_in_float64() -> None:
    # factor = 1e-3 / 1e38 = 1e-41 is subnormal in float32 (three significant digits); scaled in
    # float64 and rounded once, the clipped value is 1e-3 to float32 precision.
    clipped, norm = clip_update({"w": np.array([1e38, 0.0], np.float32)}, 1e-3)

    assert norm == pytest.approx(1e38, rel=1e-7)
    assert clipped["w"].dtype == np.float32
    assert float(clipped["w"][0]) == pytest.approx(1e-3, rel=1e-7)


def test_a_zero_update_is_returned_as_float32_zeros() -> None:
    clipped, norm = clip_update({"w": np.zeros(3, np.float64)}, 1.0)

    assert norm == 0.0
    assert clipped["w"].dtype == np.float32
    np.testing.assert_array_equal(clipped["w"], np.zeros(3, np.float32))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_an_update_holding_nan_or_infinity_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match=_exactly("update holds NaN or infinite values; refusing to clip it")):
        clip_update({"w": np.array([1.0, bad], np.float32)}, 1.0)


def test_a_zero_clip_bound_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=_exactly("clip must be a positive finite number (got 0.0)")):
        clip_update({"w": np.ones(2, np.float32)}, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"noise_multiplier": 0.0, "clip": 1.0}, "noise_multiplier must be a positive finite number (got 0.0)"),
        ({"noise_multiplier": 1.0, "clip": -1.0}, "clip must be a positive finite number (got -1.0)"),
    ],
)
def test_central_noise_parameters_are_refused_by_name(kwargs: dict[str, float], msg: str) -> None:
    with pytest.raises(ConfigError, match=_exactly(msg)):
        central_noise_std(**kwargs)


def test_one_site_adds_the_whole_central_noise() -> None:
    assert site_noise_std(noise_multiplier=1.5, clip=2.0, num_sites=1) == 3.0


def test_zero_sites_are_refused() -> None:
    with pytest.raises(ConfigError, match=_exactly("num_sites must be >= 1 (got 0)")):
        site_noise_std(noise_multiplier=1.0, clip=1.0, num_sites=0)


@pytest.mark.parametrize(("sampled", "total", "q"), [(1, 1, 1.0), (1, 4, 0.25), (4, 4, 1.0)])
def test_the_sampling_rate_accepts_one_to_all_sites(sampled: int, total: int, q: float) -> None:
    assert sampling_rate(sites_per_round=sampled, total_sites=total) == q


@pytest.mark.parametrize(("sampled", "total"), [(0, 4), (5, 4), (1, 0)])
def test_a_sample_outside_one_to_all_sites_is_refused(sampled: int, total: int) -> None:
    msg = f"sites_per_round must be in [1, total_sites] (got {sampled} of {total})"
    with pytest.raises(ConfigError, match=_exactly(msg)):
        sampling_rate(sites_per_round=sampled, total_sites=total)


def test_the_default_accountant_is_prv() -> None:
    eps = user_level_epsilon(noise_multiplier=1.0, sites_per_round=10, total_sites=1000, rounds=50, delta=1e-5)

    assert eps == compute_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=50, delta=1e-5, accountant="prv")


def test_the_discrete_share_is_the_update_plus_the_discrete_gaussian_draw() -> None:
    # sigma = z * clip_units / sqrt(n) = 1 * 4 / 4 = 1 unit exactly: the smallest sigma accepted.
    quantized = {"w": np.arange(-50, 50, dtype=np.int32).reshape(10, 10), "b": np.array([7, -7], np.int64)}

    out = site_discrete_noise_share(quantized, noise_multiplier=1.0, clip_units=4.0, num_sites=16,
                                    rng=secure_generator(seed=9))

    rng = secure_generator(seed=9)
    for name in ("w", "b"):
        expected = quantized[name].astype(np.int64) + discrete_gaussian(rng, 1.0, quantized[name].shape)
        assert out[name].dtype == np.int64
        np.testing.assert_array_equal(out[name], expected)


def test_a_per_site_sigma_below_one_unit_is_refused_with_the_remedy() -> None:
    msg = (
        "per-site discrete noise sigma 0.999 is below one quantization unit; "
        "use a finer quantization (more units per clip bound) or fewer sites per round"
    )
    with pytest.raises(ConfigError, match=_exactly(msg)):
        site_discrete_noise_share({"w": np.zeros(2, np.int64)}, noise_multiplier=1.0, clip_units=3.996, num_sites=16,
                                  rng=secure_generator(seed=0))


def test_a_float_tensor_is_refused_as_not_quantized() -> None:
    quantized = {"w": np.zeros(2, np.int64), "b": np.zeros(2, np.float32)}

    with pytest.raises(ConfigError, match=_exactly("tensor 'b' is not integer-quantized (dtype float32)")):
        site_discrete_noise_share(quantized, noise_multiplier=1.0, clip_units=4.0, num_sites=16,
                                  rng=secure_generator(seed=0))


def test_the_caveats_say_why_in_full() -> None:
    assert user_level_caveats(total_sites=4, sites_per_round=4) == [FEW, FULL]


def test_a_hundred_sites_are_enough_for_no_small_population_caveat() -> None:
    assert user_level_caveats(total_sites=100, sites_per_round=10) == []


def test_the_warning_says_each_reason_and_points_at_a_caller() -> None:
    with pytest.warns(UserLevelDPWarning) as record:
        reasons = warn_if_user_level_dp_weak(total_sites=4, sites_per_round=4)

    assert reasons == [FEW, FULL]
    assert [str(w.message) for w in record] == [f"user-level DP is weak here: {r}" for r in reasons]
    # Attributed to whoever configured the job (this file; mutmut's trampoline when run by mutmut), never
    # to the line inside fedinfra that issues it.
    assert not any(w.filename.endswith("privacy/user_level.py") for w in record)
