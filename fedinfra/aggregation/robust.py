"""Byzantine-robust aggregation rules as pure numpy functions over stacked updates.

Every function takes ``updates``: a ``(n, d)`` float32 matrix, one flattened update per
row, and returns a ``(d,)`` float32 aggregate. None of them weighs sites by their example
counts - a count is the site's own claim, and a hostile site would claim a large one.

* :func:`coordinate_median` and :func:`trimmed_mean`: Yin, Chen, Ramchandran & Bartlett
  2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates" (ICML).
  The median tolerates any minority of arbitrary rows; the beta-trimmed mean tolerates
  up to ``floor(beta * n)`` of them per coordinate.
* :func:`krum_select` / :func:`multi_krum`: Blanchard, El Mhamdi, Guerraoui & Stainer 2017,
  "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS): the
  score of an update is the sum of squared distances to its ``n - f - 2`` nearest
  neighbours; Krum needs ``n >= 2f + 3``.
* :func:`clip_factor`: norm bounding (Sun, Kairouz, Suresh & McMahan 2019, "Can You Really
  Backdoor Federated Learning?"): no update longer than ``clip`` in L2 (applied update by
  update in :class:`fedinfra.aggregation.robust_rules.NormBoundedAggregator`).

The coordinate-wise rules work on column blocks of :data:`BLOCK` columns: each block of
``n`` rows is copied to a small contiguous buffer and sorted along the short axis while it
sits in cache, instead of a strided full-size sort (see ``bench/robust.py``).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from fedinfra.errors import ConfigError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Columns per block of the coordinate-wise rules (n x BLOCK float32 stays in L2 cache).
BLOCK = 16384


def _check(updates: F32) -> int:
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise ConfigError("robust aggregation needs a non-empty (sites x values) matrix")
    return int(updates.shape[0])


def trim_count(n: int, trim_fraction: float) -> int:
    """Rows cut at each end by the beta-trimmed mean: ``floor(beta * n)``, leaving >= 1.

    >>> trim_count(10, 0.2), trim_count(4, 0.25), trim_count(3, 0.49)
    (2, 1, 1)
    """
    if not 0 <= trim_fraction < 0.5:
        raise ConfigError(f"trim_fraction must be in [0, 0.5) (got {trim_fraction})")
    k = math.floor(trim_fraction * n)
    return min(k, (n - 1) // 2)


def coordinate_median(updates: F32) -> F32:
    """Coordinate-wise median (the mean of the two middle values for even ``n``).

    >>> coordinate_median(np.array([[1, 10], [2, -5], [300, 0]], dtype=np.float32)).tolist()
    [2.0, 0.0]
    """
    n = _check(updates)
    lo, hi = (n - 1) // 2, n // 2
    out = np.empty(updates.shape[1], dtype=np.float32)
    for start in range(0, updates.shape[1], BLOCK):
        block = np.sort(updates[:, start : start + BLOCK], axis=0)
        if lo == hi:
            out[start : start + block.shape[1]] = block[lo]
        else:
            out[start : start + block.shape[1]] = (block[lo].astype(np.float64) + block[hi]) / 2
    return out


def trimmed_mean(updates: F32, trim_fraction: float) -> F32:
    """Coordinate-wise mean after cutting the ``trim_count`` largest and smallest values.

    >>> trimmed_mean(np.array([[1], [2], [3], [1000]], dtype=np.float32), 0.25).tolist()
    [2.5]
    """
    n = _check(updates)
    k = trim_count(n, trim_fraction)
    out = np.empty(updates.shape[1], dtype=np.float32)
    for start in range(0, updates.shape[1], BLOCK):
        chunk = updates[:, start : start + BLOCK]
        kept = np.sort(chunk, axis=0)[k : n - k] if k else chunk
        out[start : start + chunk.shape[1]] = np.mean(kept, axis=0, dtype=np.float64)
    return out


#: Columns of the updates converted to float64 at a time for the Gram matrix (n x 65,536 x 8 bytes).
GRAM_COLUMNS = 1 << 16


def pairwise_sq_distances(updates: F32) -> F64:
    """Squared L2 distances between rows, from the Gram matrix (``|a|^2 + |b|^2 - 2 a.b``).

    The Gram matrix is accumulated in float64 over blocks of :data:`GRAM_COLUMNS` columns
    (one float64 copy of a block at a time). A float32 product lost the distance between
    large rows that nearly agree to cancellation - ``[4097, 1]`` and ``[4097, 0]`` came out
    3 apart instead of 1 - which is exactly what Krum compares (Blanchard et al. 2017).
    """
    n, dim = updates.shape
    gram: F64 = np.zeros((n, n), dtype=np.float64)
    for lo in range(0, dim, GRAM_COLUMNS):
        block = np.asarray(updates[:, lo : lo + GRAM_COLUMNS], dtype=np.float64)
        gram += block @ block.T
    sq: F64 = np.diag(gram).copy()
    d: F64 = sq[:, None] + sq[None, :] - 2 * gram
    np.maximum(d, 0, out=d)
    np.fill_diagonal(d, 0)
    return d


def krum_scores(updates: F32, byzantine: int) -> F64:
    """Krum score of each row: sum of squared distances to its ``n - f - 2`` nearest others."""
    n = _check(updates)
    if n < 2 * byzantine + 3:
        raise ConfigError(
            f"Krum with byzantine={byzantine} needs at least {2 * byzantine + 3} updates, got {n}; "
            "lower aggregation.byzantine or raise sites.min_sites"
        )
    d = pairwise_sq_distances(updates)
    m = n - byzantine - 2
    others = np.sort(d + np.diag(np.full(n, np.inf)), axis=1)[:, :m]
    return np.asarray(others.sum(axis=1), dtype=np.float64)


def krum_select(updates: F32, byzantine: int, select: int = 1) -> list[int]:
    """Indices of the ``select`` rows with the lowest Krum scores (ties: lowest index)."""
    scores = krum_scores(updates, byzantine)
    if not 1 <= select <= len(scores):
        raise ConfigError(f"multi-Krum selects 1..{len(scores)} updates, not {select}")
    return [int(i) for i in np.argsort(scores, kind="stable")[:select]]


def multi_krum(updates: F32, byzantine: int, select: int = 1) -> tuple[F32, list[int]]:
    """Mean of the ``select`` rows Krum trusts most (``select = 1``: Krum itself)."""
    chosen = krum_select(updates, byzantine, select)
    mean = np.asarray(np.mean(updates[chosen], axis=0, dtype=np.float64), dtype=np.float32)
    return mean, chosen


def clip_factor(norm: float, clip: float) -> float:
    """Scale that brings a vector of L2 norm ``norm`` within ``clip`` (1 when it already is)."""
    if not clip > 0:
        raise ConfigError(f"clip must be > 0 (got {clip})")
    return 1.0 if norm <= clip else clip / norm


__all__ = [
    "BLOCK",
    "clip_factor",
    "coordinate_median",
    "krum_scores",
    "krum_select",
    "multi_krum",
    "pairwise_sq_distances",
    "trim_count",
    "trimmed_mean",
]
