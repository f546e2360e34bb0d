"""User-level DP at a site: check the coordinator's claims, charge the release, clip and noise.

DP-FedAvg (McMahan et al. 2018) with distributed noise (:mod:`fedinfra.privacy.distributed`)
and site-side accounting (:mod:`fedinfra.privacy.claims`). The order is the write-ahead
order of :mod:`fedinfra.site.round`: refuse a bad claim -> charge this release in the
ledger -> clip -> add this site's share. Nothing leaves before its charge is on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from fedinfra.config.wire import TrainInstruction
from fedinfra.types import NDArrays

if TYPE_CHECKING:
    from fedinfra.privacy import PrivacyLedger
    from fedinfra.site.context import SiteContext

MECHANISM = "user-dp"


def reserve_spend(
    ledger: PrivacyLedger,
    ctx: SiteContext,
    instruction: TrainInstruction,
    mechanism: str,
    params: Mapping[str, object],
    epsilon: float,
) -> None:
    """Charge one release in the site's open ledger against every cap of its manifest.

    Write-ahead (the order of :mod:`fedinfra.site.round`): the spend is durable before any
    result leaves the site, so a crash can over-count but never under-count; a spend over
    the run, lifetime or delta caps raises :class:`~fedinfra.errors.PrivacyBudgetExceeded`.

    The charge is never refunded, also not for a secure-aggregation round abandoned below
    its threshold t (fewer survivors than t reached unmasking; nothing released). Once its
    masked input has left, a site cannot tell from its own information whether that input
    was unmasked: that depends on other sites' unmasking shares, which it never sees
    (Bonawitz et al., CCS 2017, section 4), and only the coordinator says the round was
    abandoned; a site never lowers a charge on the coordinator's word (DESIGN, privacy
    figures). A resumed round re-sends the same release (:mod:`fedinfra.site.replay`)
    against this charge. The coordinator's audit log names the abandoned round
    (``run.failed``: ``abandoned_round``, ``released = false``) and the report shows these
    charges as reserved, not released.
    """
    p, caps = ctx.job.privacy, ctx.manifest.budget
    ledger.reserve(
        run_id=instruction.run_id,
        round=instruction.round,
        mechanism=mechanism,
        accountant=p.accountant,
        params=params,
        epsilon=epsilon,
        delta=p.delta,
        dataset_fingerprint=ctx.fingerprint,
        run_cap=caps.epsilon_per_run,
        lifetime_cap=caps.epsilon_lifetime,
        delta_cap=caps.delta,
        delta_lifetime_cap=caps.delta_lifetime,
    )


def inclusion_rate(fraction: float, *, admitted: int, min_sites: int) -> float:
    """The rate figure (b) is taken at: a site's inclusion probability under the coordinator's draw.

    The coordinator redraws a Poisson sample with fewer than ``min_sites`` sites
    (:func:`fedinfra.privacy.sampling.poisson_sample`), so a site is included with
    probability up to ``q / P(|S| >= min_sites)``, not ``q``
    (:func:`~fedinfra.privacy.sampling.conditioned_rate`); the amplified figure is taken at
    that bound. ``admitted`` is the coordinator's claim, already bounded by
    :func:`~fedinfra.privacy.claims.check_claim` to ``[min_sites, sites.count]``; figure (b)
    trusts the coordinator's sampling in any case (figure (a) does not use a rate at all).
    Stated limit: the sampled Gaussian analysis (Mironov, Talwar & Zhang 2019) is for
    unconditioned Poisson sampling; taking it at the inclusion bound is our approximation for
    the conditioned draw, conservative in the rate but not a proof.
    """
    from fedinfra.privacy.sampling import conditioned_rate

    return conditioned_rate(rate=fraction, population=admitted, min_size=min_sites)


def job_noise_multiplier(ctx: SiteContext) -> float:
    """The job's noise multiplier: given, or planned from the job alone (same at every site)."""
    from fedinfra.privacy.claims import plan_user_level_noise

    p = ctx.job.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    assert p.epsilon is not None  # PrivacySpec requires epsilon or noise_multiplier
    return plan_user_level_noise(
        target_epsilon=p.epsilon,
        rounds=ctx.job.rounds,
        sample_rate=inclusion_rate(ctx.job.sites.fraction, admitted=ctx.job.sites.count,
                                   min_sites=ctx.job.sites.min_sites),
        delta=p.delta,
        accountant=p.accountant,
        trust_sampling=p.trust_sampling,
    )


def protect_update(
    ctx: SiteContext, update: NDArrays, instruction: TrainInstruction
) -> tuple[NDArrays, dict[str, object]]:
    """Refuse out-of-bound claims, charge the release, clip, add this site's noise share.

    Raises :class:`~fedinfra.privacy.claims.InstructionRefused` (a policy refusal the
    coordinator audits as ``update.rejected``) or
    :class:`~fedinfra.errors.PrivacyBudgetExceeded`; either way nothing is released.
    """
    from fedinfra.privacy import PrivacyLedger, clip_update, secure_generator
    from fedinfra.privacy.claims import RoundClaim, check_claim, user_level_figures
    from fedinfra.privacy.distributed import check_distributed_noise_mode, site_share_std
    from fedinfra.privacy.noise import add_gaussian_noise

    job, p, caps = ctx.job, ctx.job.privacy, ctx.manifest.budget
    check_distributed_noise_mode(job.secure_aggregation.mode)
    min_sites = job.sites.min_sites
    claim = RoundClaim(round=instruction.round, sampled=instruction.sampled, admitted=instruction.admitted)
    check_claim(claim, job_sites=job.sites.count, min_sites=min_sites, max_noise_split=caps.max_noise_split)
    z = job_noise_multiplier(ctx)
    ledger = PrivacyLedger(ctx.home.ledger)
    try:
        # The site's own count of its releases (never the coordinator's round number).
        rounds = ledger.release_rounds(
            dataset_fingerprint=ctx.fingerprint, run_id=instruction.run_id, mechanism=MECHANISM
        )
        rounds_released = len({*rounds, instruction.round})
        figures = user_level_figures(
            noise_multiplier=z,
            releases=len(rounds) + 1,
            rounds_released=rounds_released,
            current_round=max(instruction.round, rounds_released),
            sample_rate=inclusion_rate(job.sites.fraction, admitted=claim.admitted, min_sites=min_sites),
            delta=p.delta,
            accountant=p.accountant,
            trust_sampling=p.trust_sampling,
        )
        params = {
            "noise_multiplier": z,
            "clip": p.max_grad_norm,
            "min_sites": min_sites,
            "releases": figures.releases,
            "epsilon_against_coordinator": figures.against_coordinator,
            "epsilon_amplified": figures.amplified,
            "sample_rate": figures.sample_rate,
            "enforced": figures.enforced,
        }
        reserve_spend(ledger, ctx, instruction, MECHANISM, params, figures.epsilon)
    finally:
        ledger.close()
    clipped, _norm = clip_update(update, p.max_grad_norm)  # the norm stays at the site
    std = site_share_std(noise_multiplier=z, clip=p.max_grad_norm, min_survivors=min_sites)
    noised = add_gaussian_noise(clipped, std=std, rng=secure_generator())
    details: dict[str, object] = {
        "mechanism": MECHANISM,
        "epsilon_total": figures.epsilon,
        "epsilon_against_coordinator": figures.against_coordinator,
        "epsilon_amplified": figures.amplified,
        "enforced": figures.enforced,
        "trust_sampling": p.trust_sampling,
        "releases": figures.releases,
        "rounds_released": rounds_released,
        "delta": p.delta,
        "accountant": p.accountant,
        "noise_multiplier": z,
        "noise_split_over": min_sites,
        "max_grad_norm": p.max_grad_norm,
        "sample_rate": figures.sample_rate,
        "epsilon_cap_run": caps.epsilon_per_run,
        "epsilon_cap_lifetime": caps.epsilon_lifetime,
    }
    return noised, details
