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

:data:`RELEASES` is the list the report prints: every value, when it leaves and what
covers it.
"""

from __future__ import annotations

import math
from typing import Final

#: (value, when, mechanism) for every value a site releases under DP.
RELEASES: Final[tuple[tuple[str, str, str], ...]] = (
    ("model update", "each round it is sampled", "DP (clip + Gaussian noise), charged in the site's ledger"),
    ("example count", "admission; plaintext replies", "bucketed to the next power of two (not noised)"),
    ("training loss", "never under DP", "withheld"),
    ("dataset fingerprint", "admission", "HMAC-SHA256 under a site-held key (RFC 2104)"),
    ("update norm", "never", "stays at the site"),
    ("test-shard loss sum, correct and count", "federated evaluation", "NOT covered: released in the clear"),
    ("privacy figures and caps", "admission; each reply", "public parameters (no data)"),
)


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
