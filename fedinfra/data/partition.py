"""Non-IID partitioning of a labelled data set among sites.

Label skew follows the Dirichlet scheme of Hsu, Qi & Brown (2019), "Measuring the Effects
of Non-Identical Data Distribution for Federated Visual Classification": for every class,
the share of its examples that each site receives is drawn from Dir(alpha). Small alpha
gives strongly skewed sites; alpha -> infinity approaches IID.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedinfra.errors import DataError

IndexArray = npt.NDArray[np.int64]


def dirichlet_partition(
    labels: npt.ArrayLike,
    *,
    num_sites: int,
    alpha: float,
    seed: int,
    min_size: int = 2,
    max_tries: int = 1000,
) -> list[IndexArray]:
    """Split example indices among ``num_sites`` by Dirichlet label skew.

    Every index is used exactly once and every site gets at least ``min_size`` examples.
    Draws are repeated (seeded) until that holds; impossible requests raise
    :class:`DataError` up front.

    >>> parts = dirichlet_partition([0, 1] * 10, num_sites=2, alpha=0.5, seed=1)
    >>> sorted(int(i) for p in parts for i in p) == list(range(20))
    True
    """
    y = np.asarray(labels)
    n = int(y.shape[0])
    if num_sites < 1:
        raise DataError(f"num_sites must be >= 1 (got {num_sites})")
    if alpha <= 0:
        raise DataError(f"alpha must be > 0 (got {alpha})")
    if n < num_sites * min_size:
        raise DataError(
            f"{n} examples cannot give {num_sites} sites at least {min_size} each; use at most {n // min_size} sites"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == c) for c in classes]
    for _ in range(max_tries):
        buckets: list[list[int]] = [[] for _ in range(num_sites)]
        for idx in by_class:
            shuffled = rng.permutation(idx)
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64)
            for site, chunk in enumerate(np.split(shuffled, cuts)):
                buckets[site].extend(int(i) for i in chunk)
        if min(len(b) for b in buckets) >= min_size:
            return [np.sort(np.asarray(b, dtype=np.int64)) for b in buckets]
    raise DataError(
        f"could not give each of {num_sites} sites >= {min_size} examples with alpha={alpha} "
        f"after {max_tries} draws; use fewer sites or a larger alpha"
    )
