"""The edge demo's user-level DP job: bounds that fit the noised update, and honest caveats."""

from __future__ import annotations

import math

import pytest

from fedinfra.cli.demo import EDGE_CLIP, _build_job, edge_caveats
from fedinfra.data.partition import dirichlet_partition
from fedinfra.errors import ConfigError
from fedinfra.privacy import user_level_epsilon
from fedinfra.site.data import load_split

LOGREG_PARAMS = 64 * 10 + 10  # digits: 64 features, 10 classes


@pytest.mark.parametrize("devices", [20, 100, 200])
def test_edge_release_bound_holds_a_devices_clipped_update_plus_its_noise_share(devices: int) -> None:
    job = _build_job("edge", 10, devices, 0, "dp+he")

    split_over = job.sites.min_sites  # each device's share is z S / sqrt(min_sites)
    z = job.privacy.noise_multiplier
    assert z is not None
    noised = math.sqrt(EDGE_CLIP**2 + (z * EDGE_CLIP) ** 2 * LOGREG_PARAMS / split_over)
    assert job.model.kind == "logreg"
    assert job.privacy.max_grad_norm == EDGE_CLIP
    assert job.compression is not None
    assert noised < job.compression.clip < 1.25 * noised + 0.1


def test_edge_he_job_clips_once_and_weighs_every_device_once_under_user_level_dp() -> None:
    job = _build_job("edge", 10, 100, 0, "dp+he")

    assert job.compression is not None
    assert job.secure_aggregation.clip == job.compression.clip
    assert job.secure_aggregation.example_cap == 1  # sensitivity S per device: no example weights


def test_edge_he_job_without_dp_caps_weights_at_the_largest_device() -> None:
    job = _build_job("edge", 10, 100, 0, "he")

    parts = dirichlet_partition(load_split(job).y_train, num_sites=100, alpha=job.data.alpha, seed=0)
    assert job.secure_aggregation.example_cap == max(len(p) for p in parts)


def test_edge_job_declares_the_epsilon_its_noise_and_sampling_give() -> None:
    job = _build_job("edge", 10, 100, 0, "dp+he", noise_multiplier=1.2)

    spend = user_level_epsilon(
        noise_multiplier=1.2, sites_per_round=20, total_sites=100, rounds=10, delta=1e-5, accountant="rdp"
    )
    assert job.privacy.epsilon == pytest.approx(spend, abs=0.01)


def test_edge_demo_with_a_hundred_devices_and_ten_rounds_has_no_caveat() -> None:
    assert edge_caveats(_build_job("edge", 10, 100, 0, "dp+he")) == []


def test_edge_demo_with_ten_devices_says_user_level_dp_means_little() -> None:
    (reason,) = edge_caveats(_build_job("edge", 2, 10, 0, "dp+he"))

    assert "only 10 sites" in reason


def test_edge_demo_says_so_when_the_planned_epsilon_is_above_ten() -> None:
    job = _build_job("edge", 60, 100, 0, "dp+he", noise_multiplier=0.8)

    (reason,) = edge_caveats(job)
    assert job.privacy.epsilon is not None
    assert job.privacy.epsilon > 10
    assert "--noise-multiplier" in reason


def test_edge_demo_without_dp_has_no_dp_caveat() -> None:
    assert edge_caveats(_build_job("edge", 60, 10, 0, "none")) == []


def test_a_device_count_the_split_cannot_serve_is_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError) as info:
        _build_job("edge", 1, 500, 0, "dp+he")
    assert "--sites/--devices 500" in str(info.value)
    assert "use fewer sites or a larger alpha" in str(info.value)


def test_edge_user_level_dp_without_a_secure_sum_is_refused() -> None:
    with pytest.raises(ConfigError, match="use --privacy dp\\+he"):
        _build_job("edge", 10, 100, 0, "dp")


def test_edge_job_trusts_sampling_explicitly_and_splits_noise_over_its_floor() -> None:
    job = _build_job("edge", 10, 100, 0, "dp+he")

    assert job.privacy.trust_sampling is True
    assert job.sites.min_sites == 10  # half the expected 20 devices
    assert job.secure_aggregation.max_sites == 100  # a Poisson sample may exceed 20
