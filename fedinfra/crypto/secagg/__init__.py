"""Secure aggregation with no shared secret: SecAgg / SecAgg+ pairwise masks (layer L2).

* :mod:`~fedinfra.crypto.secagg.shamir` - t-of-n Shamir sharing over GF(2^521 - 1);
* :mod:`~fedinfra.crypto.secagg.prg` - HKDF-keyed AES-128-CTR mask expansion;
* :mod:`~fedinfra.crypto.secagg.plan` - (t, k) from n and the declared bounds; the graph;
* :mod:`~fedinfra.crypto.secagg.protocol` - the four stages (site :class:`SiteSession`,
  coordinator :class:`Unmasker`);
* :mod:`~fedinfra.crypto.secagg.codec` - the quantized integer update (same clip,
  stochastic rounding and lane width as the packed-BFV codec) and its wire form.

Only :mod:`~fedinfra.crypto.secagg._primitives` touches ``cryptography.hazmat``.
"""

from fedinfra.crypto.secagg.plan import SecAggPlan, plan
from fedinfra.crypto.secagg.protocol import Roster, RosterEntry, SecAggAbandoned, SiteSession, Unmasker

__all__ = ["Roster", "RosterEntry", "SecAggAbandoned", "SecAggPlan", "SiteSession", "Unmasker", "plan"]
