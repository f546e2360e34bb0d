"""What a DP site sends besides its update: nothing usable outside the accounting.

The review's loss oracle: a coordinator sends a bias-only model and reads a site's
positive-label count off the training loss it reports. Under DP the loss is withheld and
example counts are bucketed, so two sites with different label counts look the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedinfra.config import JobSpec
from fedinfra.config.wire import TrainInstruction
from fedinfra.models import build_model, get_weights
from fedinfra.privacy.durable import write_durably
from fedinfra.privacy.release import RELEASES, bucket_count
from fedinfra.privacy.sampling import conditioned_rate, poisson_sample
from fedinfra.site.context import site_context
from fedinfra.site.round import run_round


def _job() -> JobSpec:
    return JobSpec.model_validate(
        {
            "scenario": "hospital",
            "rounds": 2,
            "data": {"dataset": "breast_cancer"},
            "sites": {"count": 4, "min_sites": 2},
            "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5, "accountant": "rdp"},
        }
    )


def _bias_only(job: JobSpec, features: int) -> dict[str, np.ndarray]:
    """The oracle model: zero weights, a bias that makes the loss a function of the label mix."""
    weights = get_weights(build_model(job.model, num_features=features, num_classes=2, seed=0))
    out = {k: np.zeros_like(v) for k, v in weights.items()}
    last = next(reversed(out))
    out[last] = np.array([4.0, -4.0], dtype=np.float32)
    return out


def test_the_loss_oracle_reads_nothing_from_two_sites_with_different_label_counts(tmp_path: Path) -> None:
    job = _job()
    reports = []
    positives = []
    for pid in (0, 1):
        home = str(tmp_path / str(pid))
        node_config: dict[str, object] = {"partition-id": pid, "num-partitions": 4, "state-dir": home}
        ctx = site_context(node_config, job)
        positives.append(int(ctx.data.y.sum()))
        instruction = TrainInstruction(run_id="oracle", round=1, job=job.model_dump(mode="json"), sampled=2, admitted=4)
        out = run_round(ctx, instruction, _bias_only(job, int(ctx.data.x.shape[1])), tls=True, sampled=2)
        reports.append(out.report)

    assert positives[0] != positives[1]
    assert [r.train_loss for r in reports] == [0.0, 0.0]
    assert all(r.details["train_loss_withheld"] is True for r in reports)
    assert all(r.num_examples == bucket_count(r.num_examples) for r in reports)  # powers of two only


@pytest.mark.parametrize(("n", "bucket"), [(1, 1), (5, 8), (64, 64), (65, 128), (455, 512)])
def test_counts_are_bucketed_to_the_next_power_of_two(n: int, bucket: int) -> None:
    assert bucket_count(n) == bucket


def test_the_release_list_names_a_mechanism_for_every_value() -> None:
    names = [name for name, _, _ in RELEASES]

    assert {"model update", "example count", "training loss", "dataset fingerprint", "update norm"} <= set(names)
    assert all(mechanism for _, _, mechanism in RELEASES)


def test_poisson_sampling_includes_each_site_independently() -> None:
    draws = iter([0.05, 0.5, 0.2, 0.9])

    assert poisson_sample(["a", "b", "c", "d"], rate=0.3, uniform=lambda: next(draws)) == ["a", "c"]


def test_poisson_sample_sizes_vary_and_follow_the_rate() -> None:
    sizes = [len(poisson_sample(list(range(200)), rate=0.2)) for _ in range(200)]

    assert len(set(sizes)) > 5  # not a fixed-size sample
    assert np.mean(sizes) == pytest.approx(40, rel=0.05)


def test_a_short_draw_is_redrawn_and_the_conditioned_rate_bounds_inclusion() -> None:
    assert len(poisson_sample(list(range(20)), rate=0.2, min_size=4)) >= 4
    assert 0.2 < conditioned_rate(rate=0.2, population=20, min_size=4) < 0.5
    assert conditioned_rate(rate=0.2, population=100, min_size=1) == pytest.approx(0.2, rel=1e-6)


def test_dp_state_is_written_durably_and_privately(tmp_path: Path) -> None:
    target = tmp_path / "dp_state.json"
    write_durably(target, b'{"steps": 3}')
    write_durably(target, b'{"steps": 4}')

    assert target.read_bytes() == b'{"steps": 4}'
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dp_state.json"]


def test_a_run_without_dp_says_no_dp_guarantee_instead_of_epsilon_zero() -> None:
    from fedinfra.privacy.release import privacy_summary

    summary = privacy_summary(mechanism="none", accountant="prv", delta=1e-5, trust_sampling=False,
                              epsilon_per_site={"a": 0.0}, spends=[])

    assert summary["guarantee"] == "no DP guarantee"
    assert summary["epsilon_per_site"] is None


def test_metrics_carry_delta_both_figures_and_the_sampling_assumption() -> None:
    from fedinfra.privacy.release import privacy_summary

    spends = [
        {"site": "a", "epsilon_against_coordinator": 4.38, "epsilon_amplified": 2.83, "releases": 1,
         "trust_sampling": True},
    ]
    summary = privacy_summary(mechanism="user-dp", accountant="rdp", delta=1e-5, trust_sampling=True,
                              epsilon_per_site={"a": 2.83}, spends=spends)

    assert summary["delta"] == 1e-5
    assert summary["figures_per_site"] == {
        "a": {"against_coordinator": 4.38, "amplified": 2.83, "amplified_over_run": None, "releases": 1}
    }
    assert "ASSUMPTION" in str(summary["guarantee"])
    assert "4.38" in str(summary["guarantee"])
    assert "2.83" in str(summary["guarantee"])
    assert len(summary["releases"]) == len(RELEASES)  # type: ignore[arg-type]


def test_the_amplified_figure_is_taken_over_the_whole_run_not_the_last_participation() -> None:
    from fedinfra.privacy.claims import user_level_figures
    from fedinfra.privacy.release import amplified_at_close

    at_round_2 = user_level_figures(noise_multiplier=1.0, releases=1, rounds_released=1, current_round=2,
                                    sample_rate=0.2, delta=1e-5, accountant="rdp", trust_sampling=True)
    spend = {"noise_multiplier": 1.0, "sample_rate": 0.2, "releases": 1, "rounds_released": 1,
             "epsilon_against_coordinator": at_round_2.against_coordinator}

    over_run = amplified_at_close(spend, rounds=30, delta=1e-5, accountant="rdp")

    assert over_run is not None
    assert at_round_2.amplified < over_run <= at_round_2.against_coordinator
