"""What a site releases: counts bucketed and losses withheld under DP, the ``privacy`` block of
metrics.json key by key, and the amplified figure over the whole run."""

from __future__ import annotations

import math

import pytest

from fedinfra.privacy.accounting import epsilon_of_history
from fedinfra.privacy.release import (
    amplified_at_close,
    bucket_count,
    privacy_summary,
    released_count,
    released_loss,
    releases,
    user_level_statement,
)


def test_two_examples_are_released_as_two() -> None:
    assert [bucket_count(n) for n in (0, 1, 2)] == [1, 1, 2]


@pytest.mark.parametrize(("mechanism", "n", "sent"), [("none", 5, 5), ("dp-sgd", 5, 8), ("user-dp", 9, 16)])
def test_the_count_is_exact_only_without_dp(mechanism: str, n: int, sent: int) -> None:
    assert released_count(mechanism, n) == sent


@pytest.mark.parametrize(
    ("mechanism", "loss", "sent"), [("none", 0.7, 0.7), ("none", math.nan, 0.0), ("dp-sgd", 0.7, 0.0)]
)
def test_the_loss_leaves_only_without_dp_and_only_when_finite(mechanism: str, loss: float, sent: float) -> None:
    assert released_loss(mechanism, loss) == sent


def test_a_run_without_dp_has_exactly_the_no_guarantee_block() -> None:
    summary = privacy_summary(mechanism="none", accountant="prv", delta=1e-5, trust_sampling=False,
                              epsilon_per_site={"a": 0.0}, spends=[])

    assert summary == {"mechanism": "none", "guarantee": "no DP guarantee", "epsilon_per_site": None, "delta": None}


def _rows(mode: str) -> list[dict[str, str]]:
    return [{"value": v, "when": w, "mechanism": m} for v, w, m in releases(mode)]


def test_a_dp_sgd_block_names_the_figures_the_releases_and_the_guarantee() -> None:
    summary = privacy_summary(mechanism="dp-sgd", accountant="rdp", delta=1e-5, trust_sampling=False,
                              epsilon_per_site={"a": 1.5, "b": 2.0}, spends=[])

    assert summary == {
        "mechanism": "dp-sgd",
        "accountant": "rdp",
        "delta": 1e-5,
        "epsilon_per_site": {"a": 1.5, "b": 2.0},
        "releases": _rows("none"),  # the default: no secure aggregation
        "guarantee": "dp-sgd: (epsilon, delta)-DP per site, the accountant's upper bound",
    }
    assert _rows("none") != _rows("bfv")


def test_the_release_rows_follow_the_secure_aggregation_mode() -> None:
    summary = privacy_summary(mechanism="dp-sgd", accountant="rdp", delta=1e-5, trust_sampling=False,
                              epsilon_per_site={}, spends=[], secure_aggregation="secagg")

    assert summary["releases"] == _rows("secagg")


def test_a_user_dp_block_carries_each_sites_figures_over_the_whole_run() -> None:
    spend = {"site": "a", "noise_multiplier": 1.0, "sample_rate": 0.2, "releases": 3, "rounds_released": 2,
             "epsilon_against_coordinator": 9.0, "epsilon_amplified": 1.1, "trust_sampling": False}
    not_a_site = {**spend, "site": 7}

    summary = privacy_summary(mechanism="user-dp", accountant="rdp", delta=1e-5, trust_sampling=False,
                              epsilon_per_site={"a": 1.1}, spends=[spend, not_a_site], rounds=20)

    assert summary["trust_sampling"] is False
    assert summary["guarantee"] == user_level_statement([spend, not_a_site])
    assert summary["figures_per_site"] == {
        "a": {
            "against_coordinator": 9.0,
            "amplified": 1.1,
            "amplified_over_run": amplified_at_close(spend, rounds=20, delta=1e-5, accountant="rdp"),
            "releases": 3,
        }
    }


def test_a_user_dp_run_without_a_charged_release_says_so() -> None:
    assert user_level_statement([]) == "user-dp: no release was charged"


def _spend(releases: int, released: int) -> dict[str, object]:
    return {"noise_multiplier": 1.0, "sample_rate": 0.2, "releases": releases, "rounds_released": released,
            "epsilon_against_coordinator": 50.0}


def test_the_amplified_figure_composes_every_round_of_the_run() -> None:
    expected = epsilon_of_history([(1.0, 0.2, 30)], delta=1e-5, accountant="rdp")

    assert amplified_at_close(_spend(4, 4), rounds=30, delta=1e-5, accountant="rdp") == expected


def test_releases_beyond_the_sampled_rounds_count_without_amplification() -> None:
    # 6 releases in 4 sampled rounds: 2 more releases at q = 1 on top of the run's 30 sampled rounds.
    expected = epsilon_of_history([(1.0, 0.2, 30), (1.0, 1.0, 2)], delta=1e-5, accountant="rdp")

    assert amplified_at_close(_spend(6, 4), rounds=30, delta=1e-5, accountant="rdp") == expected


def test_a_spend_without_every_figure_has_no_amplified_figure() -> None:
    spend = _spend(2, 2)
    del spend["sample_rate"]

    assert amplified_at_close(spend, rounds=10, delta=1e-5, accountant="rdp") is None
    assert amplified_at_close({**_spend(2, 2), "releases": True}, rounds=10, delta=1e-5, accountant="rdp") is None


def test_the_release_table_auditors_read_changes_only_on_purpose() -> None:
    """Every row of the report's release table, per mode, as reviewed (tests/golden/README.md).

    A reworded row changes what the compliance report tells an auditor (what leaves a site
    and what covers it); the golden file makes that a reviewed diff, never a side effect.
    """
    import json
    from pathlib import Path

    from fedinfra.privacy.release import RELEASES, releases

    golden = json.loads((Path(__file__).parents[1] / "golden" / "site_releases.json").read_text())
    assert set(golden) == {"none", "bfv", "ckks", "secagg", "secagg+he"}
    for mode, rows in golden.items():
        assert [list(r) for r in releases(mode)] == rows, mode
    assert [list(r) for r in RELEASES] == golden["none"]
    assert [list(r) for r in releases()] == golden["none"]  # the default: a job without secure aggregation
    assert releases("unknown-mode") == releases("bfv")  # any other mode is described as HE without SecAgg
