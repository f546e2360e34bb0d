"""Protocol parameters (t, k) of SecAgg / SecAgg+ from n and the declared bounds (pure).

SecAgg+ (Bell, Bonawitz, Gascón, Lepoint and Raykova, CCS 2020) replaces SecAgg's complete
graph (Bonawitz et al., CCS 2017) by a random k-regular graph: each site agrees masks with,
and secret-shares its seeds to, its k neighbours only; the graph is a Harary graph H(k, n)
under a random relabelling of the sites (Bell et al., section 3.1). Small federations use the
complete graph (k = n - 1), which is plain SecAgg.

Each site's two secrets (self-mask seed b_u and mask key s_u^SK) are shared t-of-(k+1)
among its neighbourhood (itself included). With at most ``d`` dropouts and ``c`` colluding
sites in any neighbourhood:

* correctness needs ``t <= k + 1 - d`` (enough holders survive to reconstruct);
* privacy against a coordinator that lies about who dropped needs ``2t > k + 1 + c``: each
  honest holder reveals a share of b_u *or* of s_u^SK, never both, so the coordinator holds
  at most ``k + 1 + c`` shares in all and cannot reach t of each (Bonawitz et al., section 4,
  the threshold argument of theorem 6.3 with the consistency round);

so ``k + 1 > 2d + c``, and we take the largest admissible threshold ``t = k + 1 - d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedinfra.errors import ConfigError

#: Up to this many sites per round the graph is complete (SecAgg); above it, Harary H(k, n).
FULL_GRAPH_MAX = 32


@dataclass(frozen=True)
class SecAggPlan:
    """Public parameters of one round: sites ``n``, degree ``k``, threshold ``t``, bounds."""

    n: int
    k: int
    t: int
    max_dropouts: int
    max_colluders: int
    min_contributors: int

    @property
    def full_graph(self) -> bool:
        """Whether every site is every other's neighbour (SecAgg)."""
        return self.k == self.n - 1

    def summary(self) -> dict[str, int | bool]:
        """The figures the audit log and the report name."""
        return {
            "n": self.n,
            "k": self.k,
            "t": self.t,
            "max_dropouts": self.max_dropouts,
            "max_colluders": self.max_colluders,
            "min_contributors": self.min_contributors,
            "full_graph": self.full_graph,
        }


def plan(n: int, *, max_dropouts: int, max_colluders: int, min_contributors: int) -> SecAggPlan:
    """Derive ``(k, t)`` for ``n`` sites; raise :class:`ConfigError` naming the bound that fails.

    >>> p = plan(10, max_dropouts=2, max_colluders=1, min_contributors=3)
    >>> (p.k, p.t)
    (9, 8)
    """
    d, c = max_dropouts, max_colluders
    if min_contributors < 2:
        raise ConfigError("secure_aggregation.min_contributors must be at least 2: one site's sum is its update")
    if d < 0 or c < 0:
        raise ConfigError("secure_aggregation.max_dropouts and max_colluders must not be negative")
    if n - d < min_contributors:
        raise ConfigError(
            f"secure_aggregation: {n} sites with max_dropouts={d} may leave {n - d}, fewer than "
            f"min_contributors={min_contributors}; sample more sites or lower max_dropouts"
        )
    if n <= FULL_GRAPH_MAX:
        k = n - 1
    else:
        k = max(2 * d + c, 2 * math.ceil(math.log2(n)) + 1)
        if (k * n) % 2:
            k += 1
        k = min(k, n - 1)
    if k + 1 <= 2 * d + c:
        raise ConfigError(
            f"secure_aggregation: a neighbourhood of k+1={k + 1} sites (n={n}) cannot tolerate "
            f"max_dropouts={d} and max_colluders={c}: it needs k+1 > 2*max_dropouts + max_colluders; "
            "lower max_dropouts or max_colluders, or sample more sites"
        )
    t = k + 1 - d
    if t < 2:
        raise ConfigError(f"secure_aggregation: threshold t={t} below 2 for n={n}; lower max_dropouts")
    return SecAggPlan(n=n, k=k, t=t, max_dropouts=d, max_colluders=c, min_contributors=min_contributors)


def plan_for_roster(
    sampled: int, roster: int, *, max_dropouts: int, max_colluders: int, min_contributors: int
) -> SecAggPlan:
    """The plan over the ``roster`` sites that advertised keys, out of ``sampled`` asked.

    Sites missing from the roster already count against the dropout bound: the plan uses
    ``d' = d - (sampled - roster)`` over ``n' = roster`` sites, which keeps the threshold
    of the full sample (``t' = n' - d' = n - d`` on the complete graph). A coordinator that
    overstates ``sampled`` only raises the threshold; more missing sites than the bound
    refuse the round.

    >>> plan_for_roster(4, 3, max_dropouts=1, max_colluders=1, min_contributors=3).t
    3
    """
    missing = sampled - roster
    if missing < 0:
        raise ConfigError(f"secure_aggregation: a roster of {roster} sites is larger than the {sampled} sampled")
    if missing > max_dropouts:
        raise ConfigError(
            f"secure_aggregation: {missing} of {sampled} sampled sites did not advertise keys, more than "
            f"max_dropouts={max_dropouts}"
        )
    return plan(
        roster,
        max_dropouts=max_dropouts - missing,
        max_colluders=max_colluders,
        min_contributors=min_contributors,
    )


def contributor_floor(min_contributors: int, *, min_sites: int, distributed_noise: bool) -> int:
    """Fewest contributions whose sum a site helps to unmask or decrypt.

    ``secure_aggregation.min_contributors``; under user-level DP with distributed noise also
    ``sites.min_sites``: each site's noise share is calibrated so that ``min_sites`` shares
    carry the full noise (:mod:`fedinfra.privacy.distributed`), so a sum of fewer must not be
    unmasked - checked by the sites themselves, not only by the coordinator.

    >>> contributor_floor(3, min_sites=5, distributed_noise=True)
    5
    >>> contributor_floor(3, min_sites=5, distributed_noise=False)
    3
    """
    return max(min_contributors, min_sites) if distributed_noise else min_contributors
