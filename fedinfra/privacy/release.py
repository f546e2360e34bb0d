"""Everything a site releases, and the mechanism that covers each value.

DESIGN.md: nothing leaves a site outside the accounting. A training loss, an evaluation
sum or an exact example count is a query on the site's data like any other: a
coordinator that chooses the model can turn it into an exact answer (a bias-only model's
loss reveals the count of positive labels). So under DP:

* the training loss is **withheld** (it is not noised and charged, so it does not leave);
* example counts leave only **bucketed** to the next power of two (admission and
  plaintext replies), or not at all (encrypted replies weigh every site alike or carry the
  count inside the ciphertext);
* the dataset fingerprint is an **HMAC** under a secret that never leaves the site
  (RFC 2104), so knowing every record but one does not let anyone test membership;
* the update norm before clipping stays at the site.

:func:`releases` is the list the report prints for a job's ``secure_aggregation.mode``:
every value, when it leaves and what covers it. Evaluation sums travel inside the secure
aggregate under ``secagg`` and ``secagg+he``, under HE-keyed zero-sum masks under ``bfv`` and
``ckks`` (:mod:`fedinfra.site.evaluation`); without secure aggregation they are sent in the
clear, and the list says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

#: The row of the evaluation sums (test loss sum, correct, count, the task's metric sums).
EVALUATION = "test-shard loss sum, correct, count and the task's metric sums"

#: How the evaluation sums leave a site, by ``secure_aggregation.mode`` (fedinfra.site.evaluation).
_EVALUATION_BY_MODE: Final[dict[str, tuple[str, str]]] = {
    "none": (
        "federated evaluation",
        "NOT covered: sent to the coordinator in the clear (the job has no secure aggregation)",
    ),
    "secagg": (
        "with the next round's masked update; the final model's in the close wave's secure sum",
        "inside the secure aggregate: SecAgg+ masks (Bonawitz et al. 2017), only the total over at least "
        "max(t, min_contributors) sites is unmasked; one secure sum per model per site",
    ),
    "secagg+he": (
        "with the next round's masked update; the final model's in the close wave's secure sum",
        "inside the secure aggregate: SecAgg+ masks beside the BFV ciphertext, only the total over at least "
        "max(t, min_contributors) sites is unmasked; one secure sum per model per site",
    ),
}
#: HE without SecAgg (bfv, ckks): the coordinator cannot decrypt a sum, and a site decrypting
#: one for it would be a decryption oracle, so the sums travel under zero-sum masks keyed by
#: the shared HE key (fedinfra.crypto.secagg.group).
_EVALUATION_HE = (
    "federated evaluation (every site evaluating a model in one wave is on one roster)",
    "masked: zero-sum masks keyed by the shared HE key, only the whole roster's total (at least "
    "min_contributors sites) is unmasked, nothing if one is missing; one secure sum per model per site; "
    "a key-holding site colluding with the coordinator can unmask (as for HE itself)",
)


def releases(mode: str = "none") -> tuple[tuple[str, str, str], ...]:
    """(value, when, mechanism) for every value a site releases under DP, for ``secure_aggregation.mode``."""
    when, how = _EVALUATION_BY_MODE.get(mode, _EVALUATION_HE)
    return (
        ("model update", "each round it is sampled", "DP (clip + Gaussian noise), charged in the site's ledger"),
        ("example count", "admission; plaintext replies", "bucketed to the next power of two (not noised)"),
        ("training loss", "never under DP", "withheld"),
        ("dataset fingerprint", "admission", "HMAC-SHA256 under a site-held key (RFC 2104)"),
        ("update norm", "never", "stays at the site"),
        (EVALUATION, when, how),
        ("privacy figures and caps", "admission; each reply", "public parameters (no data)"),
    )


#: The release list of a job without secure aggregation (see :func:`releases`).
RELEASES: Final[tuple[tuple[str, str, str], ...]] = releases("none")


def bucket_count(n: int) -> int:
    """``n`` rounded up to the next power of two (at least 1).

    >>> [bucket_count(k) for k in (1, 2, 3, 100, 1024, 1025)]
    [1, 2, 4, 128, 1024, 2048]
    """
    if n <= 1:
        return 1
    return 1 << math.ceil(math.log2(n))


def released_count(mechanism: str, n: int) -> int:
    """The example count a site sends: exact without DP, bucketed under DP."""
    return n if mechanism == "none" else bucket_count(n)


def released_loss(mechanism: str, loss: float) -> float:
    """The training loss a site sends: the loss without DP, 0.0 (withheld) under DP."""
    return loss if mechanism == "none" and math.isfinite(loss) else 0.0


NO_GUARANTEE = "no DP guarantee"

#: The assumption a job makes when it sets ``privacy.trust_sampling = true``.
TRUST_SAMPLING_ASSUMPTION = (
    "caps were enforced on the amplified figure, which assumes the coordinator sampled sites honestly "
    "(Poisson, secret, independent of the data); against the coordinator itself only the un-amplified "
    "figure holds"
)


def user_level_statement(spends: Sequence[Mapping[str, object]]) -> str:
    """One sentence on a user-level DP run: both figures (largest over sites) and what bound the caps.

    ``spends`` are ``budget.spent`` details (site-reported figures of
    :mod:`fedinfra.privacy.claims`).
    """
    a = [float(v) for d in spends if isinstance(v := d.get("epsilon_against_coordinator"), int | float)]
    b = [float(v) for d in spends if isinstance(v := d.get("epsilon_amplified"), int | float)]
    if not a:
        return "user-dp: no release was charged"
    trusted = any(d.get("trust_sampling") is True for d in spends)
    text = (
        f"user-dp, per site: (a) against the coordinator (no amplification by sampling, the site's own releases) "
        f"up to epsilon {max(a):.3g}; (b) amplified under honest Poisson sampling up to epsilon {max(b):.3g}"
    )
    if trusted:
        return f"{text}. ASSUMPTION: {TRUST_SAMPLING_ASSUMPTION}"
    return f"{text}; caps were enforced on (a)"


def amplified_at_close(spend: Mapping[str, object], *, rounds: int, delta: float, accountant: str) -> float | None:
    """Figure (b) over *all* ``rounds`` of the run, from a site's last ``budget.spent`` details.

    Under Poisson sampling a round a site sat out still composes (its absence is an outcome
    of the sampled mechanism), so (b) must be taken at the run's end, not at the site's last
    participation. Never above (a), which non-participation does not change.
    """
    from fedinfra.privacy.accounting import epsilon_of_history

    keys = ("noise_multiplier", "sample_rate", "releases", "rounds_released", "epsilon_against_coordinator")
    nums = [float(v) for k in keys if isinstance(v := spend.get(k), int | float) and not isinstance(v, bool)]
    if len(nums) != len(keys):
        return None
    z, q, releases, released, a = nums
    extra = max(0, int(releases) - int(released))
    history = [(z, q, max(int(rounds), int(released))), (z, 1.0, extra)]
    return min(a, epsilon_of_history(history, delta=delta, accountant=accountant))


def privacy_summary(
    *,
    mechanism: str,
    accountant: str,
    delta: float,
    trust_sampling: bool,
    epsilon_per_site: Mapping[str, float],
    spends: Sequence[Mapping[str, object]],
    rounds: int = 0,
    secure_aggregation: str = "none",
) -> dict[str, object]:
    """The ``privacy`` block of ``metrics.json``: figures, delta, guarantee, releases (by mode)."""
    if mechanism == "none":
        return {"mechanism": "none", "guarantee": NO_GUARANTEE, "epsilon_per_site": None, "delta": None}
    out: dict[str, object] = {
        "mechanism": mechanism,
        "accountant": accountant,
        "delta": delta,
        "epsilon_per_site": dict(epsilon_per_site),
        "releases": [{"value": v, "when": w, "mechanism": m} for v, w, m in releases(secure_aggregation)],
    }
    if mechanism == "user-dp":
        out["guarantee"] = user_level_statement(spends)
        out["trust_sampling"] = trust_sampling
        per_site: dict[str, dict[str, object]] = {}
        for d in spends:
            site = d.get("site")
            if isinstance(site, str):
                per_site[site] = {
                    "against_coordinator": d.get("epsilon_against_coordinator"),
                    "amplified": d.get("epsilon_amplified"),
                    "amplified_over_run": amplified_at_close(d, rounds=rounds, delta=delta, accountant=accountant),
                    "releases": d.get("releases"),
                }
        out["figures_per_site"] = per_site
    else:
        out["guarantee"] = f"{mechanism}: (epsilon, delta)-DP per site, the accountant's upper bound"
    return out
