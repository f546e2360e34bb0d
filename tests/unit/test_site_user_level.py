"""The site's user-level DP path (DP-FedAvg, McMahan et al. 2018) charges every round so far.

``_user_level`` runs inside a site: it reserves the run's cumulative epsilon after round r in
the site's own ledger, clips the update to S and adds this site's share of the noise. The
epsilon must be the sampled Gaussian mechanism composed over r rounds - never one round.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedinfra.config import JobSpec
from fedinfra.config.wire import TrainInstruction
from fedinfra.privacy import PrivacyLedger, user_level_epsilon
from fedinfra.site.context import SiteContext
from fedinfra.site.data import SiteData
from fedinfra.site.home import SiteHome
from fedinfra.site.round import _user_level
from fedinfra.site.simulated import simulated_manifest

Z, CLIP, SITES = 2.5, 0.5, 4


def _ctx(tmp_path: Path) -> SiteContext:
    job = JobSpec.model_validate(
        {
            "scenario": "hospital",
            "purpose": "medical-research",
            "rounds": 10,
            "sites": {"count": SITES, "min_sites": 2},
            "privacy": {"mechanism": "user-dp", "noise_multiplier": Z, "max_grad_norm": CLIP, "accountant": "rdp"},
        }
    )
    data = SiteData(
        name="hospital-1",
        x=np.zeros((10, 2), dtype=np.float32),
        y=np.zeros(10, dtype=np.int64),
        fingerprint="sha256:" + "ef" * 32,
        manifest=None,
    )
    manifest = simulated_manifest(job, "hospital-1")
    return SiteContext(job=job, data=data, home=SiteHome(root=tmp_path, kit=None), manifest=manifest)


def _instruction(ctx: SiteContext, rnd: int, sampled: int = SITES) -> TrainInstruction:
    return TrainInstruction(run_id="run-1", round=rnd, job=ctx.job.model_dump(mode="json"), sampled=sampled)


@pytest.mark.parametrize("rnd", [1, 3, 6])
def test_the_reserved_epsilon_composes_every_round_so_far(tmp_path: Path, rnd: int) -> None:
    ctx = _ctx(tmp_path)

    _, details = _user_level(ctx, {"w": np.ones(3, dtype=np.float32)}, _instruction(ctx, rnd), SITES)

    expected = user_level_epsilon(
        noise_multiplier=Z,
        sites_per_round=SITES,
        total_sites=SITES,
        rounds=rnd,
        delta=ctx.job.privacy.delta,
        accountant="rdp",
    )
    assert details["epsilon_total"] == pytest.approx(expected)
    book = PrivacyLedger(ctx.home.ledger)
    try:
        assert book.spent(dataset_fingerprint=ctx.data.fingerprint, run_id="run-1") == pytest.approx(expected)
    finally:
        book.close()


def test_later_rounds_cost_more_than_the_first(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _, first = _user_level(ctx, {"w": np.ones(3, dtype=np.float32)}, _instruction(ctx, 1), SITES)
    _, fifth = _user_level(ctx, {"w": np.ones(3, dtype=np.float32)}, _instruction(ctx, 5), SITES)

    assert float(fifth["epsilon_total"]) > 1.5 * float(first["epsilon_total"])  # type: ignore[arg-type]


def test_the_update_is_clipped_to_s_before_the_noise_share(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    big = {"w": np.full(20_000, 10.0, dtype=np.float32)}

    noised, details = _user_level(ctx, big, _instruction(ctx, 1, sampled=2), 2)

    assert details["update_norm"] == pytest.approx(float(np.linalg.norm(big["w"])), rel=1e-5)
    clipped_value = CLIP / np.sqrt(20_000)
    assert float(np.mean(noised["w"])) == pytest.approx(clipped_value, abs=5 * Z * CLIP / np.sqrt(2) / np.sqrt(20_000))
    # each of the 2 sampled sites adds N(0, z^2 S^2 / 2)
    assert float(np.std(noised["w"])) == pytest.approx(Z * CLIP / np.sqrt(2), rel=0.05)
