"""The review's attacks on user-level DP accounting, each turned into a check.

Every test here failed on the code before issue 14: the site charged by the round number
the coordinator sent, took ``sampled`` and ``sites.count`` on trust, accepted user-level
DP without a secure sum, and released losses, exact counts and an unkeyed fingerprint.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.stats import binom

from fedinfra.config import JobSpec
from fedinfra.config.wire import TrainInstruction
from fedinfra.errors import ConfigError, PrivacyBudgetExceeded
from fedinfra.privacy import PrivacyLedger, secure_generator
from fedinfra.privacy.accounting import epsilon_of_history
from fedinfra.privacy.claims import (
    IMPLAUSIBLE,
    InstructionRefused,
    RoundClaim,
    binomial_tail,
    check_claim,
    check_survivors,
    credible_rate,
    expected_releases,
    plan_user_level_noise,
    user_level_figures,
)
from fedinfra.privacy.distributed import site_share_std, surviving_noise_multiplier
from fedinfra.privacy.gaussian import gaussian_epsilon
from fedinfra.privacy.noise import add_gaussian_noise
from fedinfra.site.context import SiteContext, site_context
from fedinfra.site.user_dp import protect_update


def _job(count: int = 4, **privacy: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "scenario": "hospital",
            "rounds": 5,
            "sites": {"count": count, "min_sites": 2},
            "privacy": {"mechanism": "user-dp", "noise_multiplier": 2.0, "max_grad_norm": 1.0, **privacy},
            "secure_aggregation": {"mode": "bfv", "example_cap": 1},
        }
    )


def _ctx(tmp_path: Path, job: JobSpec, home: str = "home") -> SiteContext:
    node_config: dict[str, object] = {"partition-id": 0, "num-partitions": 4, "state-dir": str(tmp_path / home)}
    return site_context(node_config, job)


def _instruction(job: JobSpec, rnd: int = 1, *, sampled: int = 2, admitted: int = 4) -> TrainInstruction:
    return TrainInstruction(
        run_id="run-14", round=rnd, job=job.model_dump(mode="json"), sampled=sampled, admitted=admitted
    )


def _update(offset: float = 0.0) -> dict[str, np.ndarray]:
    return {"w": np.full((4, 3), 0.1 + offset, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def _spent(ctx: SiteContext) -> float:
    ledger = PrivacyLedger(ctx.home.ledger)
    try:
        return ledger.spent(dataset_fingerprint=ctx.fingerprint, run_id="run-14")
    finally:
        ledger.close()


# -- every release charged ---------------------------------------------------------------


def test_four_releases_of_round_one_from_models_one_ulp_apart_each_cost_more(tmp_path: Path) -> None:
    job = _job()
    ctx = _ctx(tmp_path, job)
    spends = []
    base = _update()
    for i in range(4):
        nudged = {k: np.nextafter(v, np.float32(1), dtype=np.float32) if i else v for k, v in base.items()}
        base = nudged
        protect_update(ctx, nudged, _instruction(job, 1))
        spends.append(_spent(ctx))

    assert all(a < b for a, b in itertools.pairwise(spends))
    assert spends[-1] == pytest.approx(gaussian_epsilon(noise_multiplier=2.0, releases=4, delta=job.privacy.delta))


def test_the_charge_counts_the_sites_own_releases_not_the_round_number(tmp_path: Path) -> None:
    job = _job()
    ctx = _ctx(tmp_path, job)

    _, details = protect_update(ctx, _update(), _instruction(job, 5))  # round 5, but the first release

    assert details["releases"] == 1
    assert details["epsilon_against_coordinator"] == pytest.approx(
        gaussian_epsilon(noise_multiplier=2.0, releases=1, delta=job.privacy.delta)
    )


# -- no coordinator-supplied value lowers a charge ----------------------------------------


def test_a_sample_larger_than_the_admitted_set_is_refused(tmp_path: Path) -> None:
    job = _job()
    ctx = _ctx(tmp_path, job)

    with pytest.raises(InstructionRefused, match="sampled"):
        protect_update(ctx, _update(), _instruction(job, 1, sampled=10_000, admitted=4))
    assert _spent(ctx) == 0.0


def test_an_admitted_set_larger_than_the_job_is_refused() -> None:
    with pytest.raises(InstructionRefused, match="admitted"):
        check_claim(RoundClaim(round=1, sampled=2, admitted=100_000), job_sites=4, min_sites=2, max_noise_split=100)


def test_a_noise_split_thinner_than_the_manifest_allows_is_refused() -> None:
    with pytest.raises(InstructionRefused, match="max_noise_split"):
        check_claim(RoundClaim(round=1, sampled=50, admitted=60), job_sites=60, min_sites=50, max_noise_split=20)


def test_the_noise_share_does_not_depend_on_the_claimed_sample(tmp_path: Path) -> None:
    job = _job()
    zero = {"w": np.zeros(40_000, dtype=np.float32)}
    stds = []
    for sampled in (2, 4):
        ctx = _ctx(tmp_path, job, home=f"h{sampled}")
        noised, _ = protect_update(ctx, zero, _instruction(job, 1, sampled=sampled, admitted=4))
        stds.append(float(np.std(noised["w"])))

    expected = site_share_std(noise_multiplier=2.0, clip=1.0, min_survivors=2)  # z S / sqrt(min_sites)
    assert stds == pytest.approx([expected, expected], rel=0.03)


def test_claiming_a_hundred_thousand_sites_does_not_lower_the_charge(tmp_path: Path) -> None:
    small, huge = _job(count=4), _job(count=100_000)
    a = protect_update(_ctx(tmp_path, small, "a"), _update(), _instruction(small, 1, admitted=4))[1]
    b = protect_update(_ctx(tmp_path, huge, "b"), _update(), _instruction(huge, 1, sampled=4, admitted=100_000))[1]

    assert a["epsilon_total"] == b["epsilon_total"]
    assert b["enforced"] == "against-coordinator"


def test_a_site_asked_every_round_is_charged_without_amplification() -> None:
    fig = user_level_figures(
        noise_multiplier=1.0,
        releases=5,
        rounds_released=5,
        current_round=5,
        sample_rate=0.001,  # the coordinator claims a tiny rate, but the site took part every time
        delta=1e-5,
        accountant="rdp",
        trust_sampling=True,
    )

    assert fig.sample_rate == 1.0  # its own participations refute the claimed rate
    assert fig.amplified == pytest.approx(fig.against_coordinator, rel=0.15)


def test_caps_bind_the_figure_against_the_coordinator_unless_the_job_trusts_sampling(tmp_path: Path) -> None:
    honest = _job(count=40)
    trusting = _job(count=40, trust_sampling=True)
    honest = honest.model_copy(update={"sites": honest.sites.model_copy(update={"fraction": 0.1})})
    trusting = trusting.model_copy(update={"sites": trusting.sites.model_copy(update={"fraction": 0.1})})

    _, a = protect_update(_ctx(tmp_path, honest, "a"), _update(), _instruction(honest, 3, admitted=40))
    _, b = protect_update(_ctx(tmp_path, trusting, "b"), _update(), _instruction(trusting, 3, admitted=40))

    assert a["enforced"] == "against-coordinator"
    assert a["epsilon_total"] == a["epsilon_against_coordinator"]
    assert b["enforced"] == "amplified"
    assert b["epsilon_total"] == b["epsilon_amplified"] < b["epsilon_against_coordinator"]


def test_the_run_cap_stops_the_release_before_anything_leaves(tmp_path: Path) -> None:
    job = _job(noise_multiplier=0.5)  # one release at z = 0.5 costs about 10, above the cap of 8
    ctx = _ctx(tmp_path, job)

    with pytest.raises(PrivacyBudgetExceeded):
        protect_update(ctx, _update(), _instruction(job, 1))
    assert _spent(ctx) == 0.0


# -- distributed noise only where the coordinator sees a sum --------------------------------


def test_user_level_dp_without_secure_aggregation_is_refused_by_the_job_validator() -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"privacy": {"mechanism": "user-dp", "epsilon": 3.0}})

    (line,) = [ln for ln in str(info.value).splitlines() if "secure_aggregation.mode" in ln]
    assert "he, bfv, ckks, secagg or secagg+he" in line


def test_min_sites_survivors_carry_the_full_noise() -> None:
    rng = secure_generator(seed=3)
    zero = {"w": np.zeros(40_000, dtype=np.float32)}
    std = site_share_std(noise_multiplier=1.5, clip=0.5, min_survivors=5)
    total = sum(add_gaussian_noise(zero, std=std, rng=rng)["w"] for _ in range(5))

    assert float(np.std(total)) == pytest.approx(1.5 * 0.5, rel=0.03)


def test_fewer_survivors_than_the_floor_release_nothing() -> None:
    with pytest.raises(ConfigError, match="release nothing"):
        surviving_noise_multiplier(noise_multiplier=1.0, survivors=1, min_survivors=2)
    assert surviving_noise_multiplier(noise_multiplier=1.0, survivors=8, min_survivors=2) == pytest.approx(2.0)


# -- nothing outside the accounting ---------------------------------------------------------


def test_the_update_norm_stays_at_the_site(tmp_path: Path) -> None:
    job = _job()
    _, details = protect_update(_ctx(tmp_path, job), _update(), _instruction(job, 1))

    assert not any("norm" in key and key != "max_grad_norm" for key in details)


def test_fingerprints_differ_under_two_site_keys_and_are_stable_under_one(tmp_path: Path) -> None:
    job = _job()
    one, two = _ctx(tmp_path, job, "one"), _ctx(tmp_path, job, "two")

    assert one.data.fingerprint == two.data.fingerprint  # the same data ...
    assert one.fingerprint != two.fingerprint  # ... under two site keys
    assert one.fingerprint == _ctx(tmp_path, job, "one").fingerprint
    assert one.fingerprint.startswith("hmac-sha256:")
    assert oct((tmp_path / "one" / "fingerprint.key").stat().st_mode & 0o777) == "0o600"


def test_an_unkeyed_fingerprint_is_refused_on_the_wire() -> None:
    from fedinfra.config.wire import SiteHello

    with pytest.raises(ValidationError, match="dataset_fingerprint"):
        SiteHello(site="s", num_features=3, dataset_fingerprint="sha256:" + "ab" * 32)


def test_lifetime_delta_is_capped(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.sqlite")
    common: dict[str, Any] = {
        "round": 1, "mechanism": "user-dp", "accountant": "rdp", "params": {}, "epsilon": 1.0, "delta": 1e-5,
        "dataset_fingerprint": "hmac-sha256:" + "0" * 64, "run_cap": 10.0, "lifetime_cap": 100.0,
        "delta_lifetime_cap": 2e-5,
    }
    try:
        ledger.reserve(run_id="r1", **common)
        ledger.reserve(run_id="r2", **common)
        with pytest.raises(PrivacyBudgetExceeded, match="lifetime delta"):
            ledger.reserve(run_id="r3", **common)
        assert len(ledger.entries()) == 2
    finally:
        ledger.close()


def test_the_planned_noise_meets_the_target_on_the_enforced_figure(tmp_path: Path) -> None:
    job = JobSpec.model_validate(
        {
            "rounds": 4,
            "sites": {"count": 4, "min_sites": 2},
            "privacy": {"mechanism": "user-dp", "epsilon": 6.0},
            "secure_aggregation": {"mode": "bfv", "example_cap": 1},
        }
    )
    ctx = _ctx(tmp_path, job)
    last: dict[str, object] = {}
    for rnd in range(1, 5):
        _, last = protect_update(ctx, _update(), _instruction(job, rnd))

    assert float(last["epsilon_against_coordinator"]) <= 6.0  # type: ignore[arg-type]
    assert not math.isclose(float(last["epsilon_against_coordinator"]), 0.0)  # type: ignore[arg-type]


def test_a_site_refuses_to_open_an_aggregate_of_fewer_contributions_than_the_floor(tmp_path: Path) -> None:
    from fedinfra.config.consortium import ConsortiumConfig
    from fedinfra.crypto import EncryptedSum, load_coordinator_kit, seal_update
    from fedinfra.models import build_model, get_weights
    from fedinfra.runtime.provision import provision
    from fedinfra.site.sync import current_model

    job = _job()
    sites = ["hospital-0", "hospital-1"]
    consortium = ConsortiumConfig(name="c", sites=sites, secure_aggregation=job.secure_aggregation)
    provision(consortium, tmp_path / "kits")
    node: dict[str, object] = {
        "partition-id": 0,
        "num-partitions": 4,
        "state-dir": str(tmp_path / "home"),
        "kit": str(tmp_path / "kits" / "sites" / "hospital-0"),
    }
    ctx = site_context(node, job)
    weights = get_weights(build_model(job.model, num_features=int(ctx.data.x.shape[1]), num_classes=2, seed=0))
    layout = [(k, tuple(v.shape)) for k, v in weights.items()]
    one_site = EncryptedSum(load_coordinator_kit(tmp_path / "kits" / "coordinator"), run_id="run-14", round_id=1,
                            layout=layout)
    zero = {k: np.zeros_like(v) for k, v in weights.items()}
    one_site.add(seal_update(zero, 1, ctx.he_keys(), run_id="run-14", round_id=1))
    instruction = TrainInstruction(run_id="run-14", round=2, job=job.model_dump(mode="json"), sync_from=1,
                                   sampled=2, admitted=4)

    with pytest.raises(InstructionRefused, match=r"fewer than sites\.min_sites=2"):
        current_model(ctx, instruction, weights, [one_site.to_bytes()])


# -- claims: boundaries and known answers (issue 20: mutation survivors) -------------------------


def test_an_aggregate_of_exactly_min_sites_is_used_one_fewer_is_refused() -> None:
    check_survivors(2, min_sites=2)
    message = (
        "aggregate holds 1 contributions, fewer than sites.min_sites=2: "
        "it carries less than the full noise; refusing to use it"
    )
    with pytest.raises(InstructionRefused, match=f"^{re.escape(message)}$"):
        check_survivors(1, min_sites=2)


@pytest.mark.parametrize("q", [0.0, 0.03, 0.3, 1.0])
@pytest.mark.parametrize("n", [1, 7, 40])
def test_the_binomial_tail_matches_scipy(n: int, q: float) -> None:
    for k in range(-1, n + 2):
        assert binomial_tail(k, n, q) == pytest.approx(float(binom.sf(k - 1, n, q)), rel=1e-9, abs=1e-300)


def test_a_participation_count_is_implausible_exactly_when_its_tail_is_below_one_in_a_million() -> None:
    rounds, q = 20, 0.1
    first = min(k for k in range(rounds + 1) if binom.sf(k - 1, rounds, q) < IMPLAUSIBLE)  # 11 of 20

    assert credible_rate(claimed=q, participations=first - 1, rounds=rounds) == q
    assert credible_rate(claimed=q, participations=first, rounds=rounds) == 1.0
    assert credible_rate(claimed=1.0, participations=rounds, rounds=rounds) == 1.0
    for claimed in (0.0, -0.1, 1.5):
        assert credible_rate(claimed=claimed, participations=0, rounds=rounds) == 1.0


@pytest.mark.parametrize(
    ("rounds", "q", "expected"),
    [(100, 0.1, 16), (10, 0.5, 9), (1, 0.01, 1), (100, 1.0, 100), (5, 0.9, 5)],
)
def test_expected_releases_are_the_mean_plus_two_standard_deviations(rounds: int, q: float, expected: int) -> None:
    # 100 x 0.1: 10 + 2 sqrt(9) = 16; 10 x 0.5: 5 + 2 sqrt(2.5) = 8.2 -> 9; at least 1, at most all rounds.
    assert expected_releases(rounds=rounds, sample_rate=q) == expected


@pytest.mark.parametrize("trust_sampling", [True, False])
def test_the_planned_user_level_noise_meets_the_figure_the_sites_enforce(trust_sampling: bool) -> None:
    target, rounds, q, delta = 3.0, 8, 0.25, 1e-5
    z = plan_user_level_noise(
        target_epsilon=target,
        rounds=rounds,
        sample_rate=q,
        delta=delta,
        accountant="rdp",
        trust_sampling=trust_sampling,
    )

    if trust_sampling:
        enforced = epsilon_of_history([(z, q, rounds)], delta=delta, accountant="rdp")
    else:
        releases = expected_releases(rounds=rounds, sample_rate=q)
        enforced = gaussian_epsilon(noise_multiplier=z, releases=releases, delta=delta)
    assert 0.95 * target <= enforced <= target


def _claim_refusal(claim: RoundClaim, message: str) -> None:
    with pytest.raises(InstructionRefused, match=f"^{re.escape(message)}$"):
        check_claim(claim, job_sites=6, min_sites=2, max_noise_split=3)


def test_a_claim_on_every_edge_of_what_the_site_can_check_is_accepted() -> None:
    for claim in (RoundClaim(1, 1, 2), RoundClaim(1, 2, 2), RoundClaim(7, 6, 6), RoundClaim(2, 1, 6)):
        check_claim(claim, job_sites=6, min_sites=2, max_noise_split=3)
    check_claim(RoundClaim(1, 1, 3), job_sites=6, min_sites=3, max_noise_split=3)


def test_a_claim_just_past_each_edge_is_refused_naming_the_bound() -> None:
    _claim_refusal(RoundClaim(0, 1, 2), "instruction round 0 is not a training round")
    outside = "admitted sites, outside [sites.min_sites=2, sites.count=6]; refusing the round"
    _claim_refusal(RoundClaim(1, 1, 1), f"instruction claims 1 {outside}")
    _claim_refusal(RoundClaim(1, 1, 7), f"instruction claims 7 {outside}")
    _claim_refusal(RoundClaim(1, 0, 2), "instruction claims 0 sampled sites of 2 admitted; refusing the round")
    _claim_refusal(RoundClaim(1, 3, 2), "instruction claims 3 sampled sites of 2 admitted; refusing the round")
    with pytest.raises(InstructionRefused) as refused:
        check_claim(RoundClaim(1, 4, 4), job_sites=6, min_sites=4, max_noise_split=3)
    assert str(refused.value) == (
        "the job splits noise across sites.min_sites=4 sites, more than this site's "
        "budget.max_noise_split=3; refusing the round"
    )


@pytest.mark.parametrize("trust_sampling", [True, False])
def test_both_figures_follow_their_definitions(trust_sampling: bool) -> None:
    z, delta = 1.5, 1e-5
    fig = user_level_figures(
        noise_multiplier=z,
        releases=4,
        rounds_released=3,
        current_round=10,
        sample_rate=0.3,
        delta=delta,
        accountant="rdp",
        trust_sampling=trust_sampling,
    )
    a = gaussian_epsilon(noise_multiplier=z, releases=4, delta=delta)
    # (b): ten Poisson rounds at the credible rate 0.3, plus the one extra release of a round un-amplified.
    b = epsilon_of_history([(z, 0.3, 10), (z, 1.0, 1)], delta=delta, accountant="rdp")
    without_extra = epsilon_of_history([(z, 0.3, 10)], delta=delta, accountant="rdp")

    assert without_extra < b < a
    assert (fig.against_coordinator, fig.amplified) == (pytest.approx(a, rel=1e-12), pytest.approx(b, rel=1e-12))
    assert (fig.releases, fig.rounds, fig.sample_rate) == (4, 10, 0.3)
    assert fig.enforced == ("amplified" if trust_sampling else "against-coordinator")
    assert fig.epsilon == (fig.amplified if trust_sampling else fig.against_coordinator)


def test_the_amplified_figure_is_taken_at_the_inclusion_rate_of_the_redrawn_sample(tmp_path: Path) -> None:
    # q = 0.5 of 4 admitted sites with min_sites = 2: a draw of 0 or 1 site (5 in 16) is redrawn,
    # so each site is in the sample with probability up to 0.5 / (11/16) = 8/11, not 0.5.
    job = _job(count=4, trust_sampling=True)
    job = job.model_copy(update={"sites": job.sites.model_copy(update={"fraction": 0.5})})

    _, details = protect_update(_ctx(tmp_path, job), _update(), _instruction(job, 1, sampled=2, admitted=4))

    rate = 0.5 / binomial_tail(2, 4, 0.5)
    assert rate == pytest.approx(8 / 11)
    history = [(2.0, rate, 1), (2.0, 1.0, 0)]
    assert details["epsilon_amplified"] == pytest.approx(epsilon_of_history(history, delta=job.privacy.delta,
                                                                            accountant=job.privacy.accountant))
    at_q = epsilon_of_history([(2.0, 0.5, 1)], delta=job.privacy.delta, accountant=job.privacy.accountant)
    assert details["epsilon_amplified"] > at_q  # the old figure, taken at the job's q, was too low
