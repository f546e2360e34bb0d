"""Data sets that ship with scikit-learn (no download at run time).

Features are standardised with constants that no site's training data enters (issue 14,
item 6: never statistics pooled over the sites' raw data). Either the job gives them
(``mean``/``std``), or they are the feature means and standard deviations of the held-out
test split: it is drawn with the job's seed before the training part is divided among
sites and is the coordinator's evaluation data, never a site's training data. So a site's
standardised features depend only on its own rows and on these constants, never on
another site's rows. The cost: the test split's feature moments (not its labels) shape
the preprocessing, the usual caveat of fitting a scaler on the evaluation data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedinfra._optional import extra_imports
from fedinfra.errors import DataError

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SplitData:
    """A train/test split with standardised float32 features."""

    x_train: F32
    y_train: I64
    x_test: F32
    y_test: I64
    num_classes: int
    feature_names: tuple[str, ...]
    #: The standardisation applied (the job's constants or the held-out split's moments):
    #: a deployed site applies the same to its own rows (:func:`fedinfra.site.data._deployed_scale`).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def num_features(self) -> int:
        """Number of input features."""
        return int(self.x_train.shape[1])


def _raw(name: str) -> tuple[npt.NDArray[np.float64], I64, tuple[str, ...]]:
    with extra_imports("the bundled data sets (simulation, fedinfra demo)"):
        from sklearn import datasets

    loaders = {
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
    }
    if name not in loaders:
        raise DataError(f"unknown bundled data set {name!r}; choose one of {sorted(loaders)}")
    bunch = loaders[name]()
    names = tuple(str(f) for f in getattr(bunch, "feature_names", range(bunch.data.shape[1])))
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64), names


def load_bundled(
    name: str,
    *,
    test_fraction: float,
    seed: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SplitData:
    """Load a bundled data set, split it stratified and standardise it (see the module doc)."""
    x, y, names = _raw(name)
    return split_standardised(x, y, names, test_fraction=test_fraction, seed=seed, mean=mean, std=std)


def split_indices(y: npt.NDArray[np.int64], *, test_fraction: float, seed: int) -> tuple[I64, I64]:
    """Row indices of the stratified ``(train, test)`` split used by :func:`split_standardised`."""
    with extra_imports("the bundled data sets (simulation, fedinfra demo)"):
        from sklearn.model_selection import train_test_split

    tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y)
    return np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64)


def standardisation_constants(
    x_reference: npt.NDArray[np.float64],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The job's constants if given, else the reference (held-out) data's moments (std 0 -> 1)."""
    features = x_reference.shape[1]
    if mean is not None and std is not None:
        m, s = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if m.shape != (features,) or s.shape != (features,):
            raise DataError(f"data.feature_mean/feature_std need {features} values each (got {m.size}, {s.size})")
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(s)) and np.all(s > 0)):
            raise DataError("data.feature_mean/feature_std must be finite and feature_std > 0")
        return m, s
    if mean is not None or std is not None:
        raise DataError("data.feature_mean and data.feature_std must be given together")
    m, s = x_reference.mean(axis=0), x_reference.std(axis=0)
    s[s == 0] = 1.0
    return m, s


def split_standardised(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.int64],
    names: tuple[str, ...],
    *,
    test_fraction: float,
    seed: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SplitData:
    """Split stratified (classes may be imbalanced); standardise with the job's or held-out constants."""
    tr, te = split_indices(y, test_fraction=test_fraction, seed=seed)
    mu, sd = standardisation_constants(x[te], mean, std)
    return SplitData(
        x_train=((x[tr] - mu) / sd).astype(np.float32),
        y_train=np.asarray(y[tr], dtype=np.int64),
        x_test=((x[te] - mu) / sd).astype(np.float32),
        y_test=np.asarray(y[te], dtype=np.int64),
        num_classes=int(np.unique(y).size),
        feature_names=names,
        mean=tuple(float(v) for v in mu),
        std=tuple(float(v) for v in sd),
    )
