"""The neighbour graph of SecAgg+ (Bell et al., CCS 2020, section 3.1).

The parameters (t, k) come from :func:`fedinfra.config.secagg_plan.plan` (re-exported here).
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedinfra.config.secagg_plan import FULL_GRAPH_MAX, SecAggPlan, plan
from fedinfra.crypto.secagg import prg

__all__ = ["FULL_GRAPH_MAX", "SecAggPlan", "graph_seed", "neighbours", "plan"]


def graph_seed(run_id: str, round_id: int, roster_digest: bytes) -> bytes:
    """The public seed of a round's relabelling: run, round and the roster of public keys."""
    return hashlib.sha256(
        b"fedinfra/secagg/v1/graph\x00" + f"{run_id}\x00{round_id}\x00".encode() + roster_digest
    ).digest()


def neighbours(p: SecAggPlan, seed: bytes) -> list[frozenset[int]]:
    """Neighbour sets (0-based indices) of the Harary graph H(k, n) under a seeded relabelling.

    Sites sit on a cycle in a random order; each is joined to the ``floor(k/2)`` nearest on
    either side and, for odd ``k``, to the one opposite. Every set has exactly ``k`` members.
    """
    n, k = p.n, p.k
    if k == n - 1:
        return [frozenset(j for j in range(n) if j != i) for i in range(n)]
    draws = prg.expand(seed, "graph", n, 32)
    order = [int(i) for i in np.argsort(draws, kind="stable")]  # random cyclic order
    pos = {site: idx for idx, site in enumerate(order)}
    out = []
    for i in range(n):
        at = pos[i]
        nb = {order[(at + s) % n] for s in range(1, k // 2 + 1)} | {order[(at - s) % n] for s in range(1, k // 2 + 1)}
        if k % 2:
            nb.add(order[(at + n // 2) % n])
        out.append(frozenset(nb))
    return out
