"""User-level DP-FedAvg: clipping, central and distributed noise, accounting, caveats."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedinfra.errors import ConfigError
from fedinfra.privacy import (
    UserLevelDPWarning,
    clip_update,
    compute_epsilon,
    discrete_gaussian,
    noise_central,
    noise_site_share,
    secure_generator,
    site_discrete_noise_share,
    site_noise_std,
    update_norm,
    user_level_caveats,
    user_level_epsilon,
    warn_if_user_level_dp_weak,
)


def _update(scale: float) -> dict[str, np.ndarray]:
    return {"w": np.full((3, 4), scale, dtype=np.float32), "b": np.full(4, -scale, dtype=np.float32)}


def test_clipping_scales_the_whole_update_to_the_bound() -> None:
    clipped, norm = clip_update(_update(1.0), 1.0)

    assert norm == pytest.approx(4.0)
    assert update_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    assert clipped["w"][0, 0] == pytest.approx(0.25)


def test_an_update_inside_the_bound_is_unchanged() -> None:
    clipped, _ = clip_update(_update(0.01), 1.0)

    np.testing.assert_array_equal(clipped["w"], _update(0.01)["w"])


@pytest.mark.parametrize("clip", [0.0, -1.0, math.inf])
def test_a_non_positive_clip_bound_is_refused(clip: float) -> None:
    with pytest.raises(ConfigError, match="clip"):
        clip_update(_update(1.0), clip)


def test_the_sum_of_site_noise_shares_has_the_central_std() -> None:
    n, z, s = 16, 1.2, 0.5
    rng = secure_generator(seed=7)
    zero = {"w": np.zeros(20_000, dtype=np.float32)}

    total = sum(noise_site_share(zero, noise_multiplier=z, clip=s, num_sites=n, rng=rng)["w"] for _ in range(n))

    assert site_noise_std(noise_multiplier=z, clip=s, num_sites=n) == pytest.approx(z * s / 4)
    assert float(np.std(total)) == pytest.approx(z * s, rel=0.03)


def test_central_noise_has_std_z_times_s() -> None:
    out = noise_central({"w": np.zeros(50_000, dtype=np.float32)}, noise_multiplier=2.0, clip=0.5,
                        rng=secure_generator(seed=1))

    assert float(np.std(out["w"])) == pytest.approx(1.0, rel=0.02)


def test_a_seed_reproduces_noise_and_no_seed_does_not() -> None:
    zero = {"w": np.zeros(100, dtype=np.float32)}

    a = noise_central(zero, noise_multiplier=1.0, clip=1.0, rng=secure_generator(seed=3))
    b = noise_central(zero, noise_multiplier=1.0, clip=1.0, rng=secure_generator(seed=3))
    c = noise_central(zero, noise_multiplier=1.0, clip=1.0, rng=secure_generator())

    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], c["w"])


def test_discrete_gaussian_is_integer_centred_with_the_right_variance() -> None:
    x = discrete_gaussian(secure_generator(seed=5), 3.0, (200_000,))

    assert x.dtype == np.int64
    assert abs(float(np.mean(x))) < 0.05
    assert float(np.var(x)) == pytest.approx(9.0, rel=0.03)


def test_discrete_noise_shares_need_at_least_one_unit_per_site() -> None:
    q = {"w": np.zeros(10, dtype=np.int64)}

    with pytest.raises(ConfigError, match="quantization unit"):
        site_discrete_noise_share(q, noise_multiplier=1.0, clip_units=4.0, num_sites=100,
                                  rng=secure_generator(seed=0))


def test_user_level_accounting_is_a_sampled_gaussian_over_sites() -> None:
    eps = user_level_epsilon(noise_multiplier=1.0, sites_per_round=10, total_sites=1000, rounds=100,
                             delta=1e-5, accountant="rdp")

    assert eps == compute_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-5, accountant="rdp")


def test_few_sites_and_full_participation_are_flagged() -> None:
    reasons = user_level_caveats(total_sites=4, sites_per_round=4)

    assert len(reasons) == 2
    assert any("q = 1" in r for r in reasons)


def test_many_sampled_sites_raise_no_caveat() -> None:
    assert user_level_caveats(total_sites=10_000, sites_per_round=100) == []


def test_the_weak_setting_warns() -> None:
    with pytest.warns(UserLevelDPWarning, match="only 4 sites"):
        warn_if_user_level_dp_weak(total_sites=4, sites_per_round=2)
