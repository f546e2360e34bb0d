"""The Caravan insurance data (CoIL Challenge 2000), shipped in ``fedinfra/data/files/``.

5,822 customers of a Dutch insurer, 85 coded socio-demographic and product-ownership
features and the label ``Purchase`` (bought a caravan policy: about 6% ``Yes``). It is
the bank scenario's real tabular financial data; the copy comes from the ISLP package
(see ``files/SOURCE.txt`` and ``files/LICENSE-ISLP.txt``), so nothing is downloaded at run
time. Features are standardised with the job's constants or the held-out split's, never
with statistics pooled over sites' training rows, as in :mod:`fedinfra.data.bundled`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from importlib import resources

import numpy as np
import numpy.typing as npt

from fedinfra.data.bundled import SplitData, split_standardised
from fedinfra.errors import DataError

LABEL = "Purchase"
ROWS = 5822
FEATURES = 85


def read_caravan() -> tuple[tuple[str, ...], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Return ``(feature_names, x, y)`` with ``y = 1`` for ``Purchase == "Yes"``."""
    ref = resources.files("fedinfra.data") / "files" / "Caravan.csv"
    try:
        text = ref.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"bundled Caravan data unreadable ({exc}); reinstall fedinfra") from exc
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    if header[-1] != LABEL:
        raise DataError(f"bundled Caravan data: last column is {header[-1]!r}, expected {LABEL!r}")
    rows = list(reader)
    x = np.asarray([r[:-1] for r in rows], dtype=np.float64)
    y = np.asarray([1 if r[-1] == "Yes" else 0 for r in rows], dtype=np.int64)
    if x.shape != (ROWS, FEATURES):
        raise DataError(f"bundled Caravan data has shape {x.shape}, expected {(ROWS, FEATURES)}")
    return tuple(header[:-1]), x, y


def load_caravan(
    *, test_fraction: float, seed: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> SplitData:
    """Load Caravan, split it stratified (the classes are imbalanced) and standardise it."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1) (got {test_fraction})")
    names, x, y = read_caravan()
    return split_standardised(
        np.asarray(x, dtype=np.float64),
        np.asarray(y, dtype=np.int64),
        tuple(names),
        test_fraction=test_fraction,
        seed=seed,
        mean=mean,
        std=std,
    )
