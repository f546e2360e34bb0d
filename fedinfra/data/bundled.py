"""Data sets that ship with scikit-learn (no download at run time).

Features are standardised with statistics of the *training* split only, so the held-out
test set does not leak into training.
"""

from __future__ import annotations

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


def load_bundled(name: str, *, test_fraction: float, seed: int) -> SplitData:
    """Load a bundled data set, split it stratified and standardise it."""
    x, y, names = _raw(name)
    return split_standardised(x, y, names, test_fraction=test_fraction, seed=seed)


def split_standardised(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.int64],
    names: tuple[str, ...],
    *,
    test_fraction: float,
    seed: int,
) -> SplitData:
    """Split stratified (classes may be imbalanced) and standardise with training statistics."""
    with extra_imports("the bundled data sets (simulation, fedinfra demo)"):
        from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0
    return SplitData(
        x_train=((x_tr - mean) / std).astype(np.float32),
        y_train=np.asarray(y_tr, dtype=np.int64),
        x_test=((x_te - mean) / std).astype(np.float32),
        y_test=np.asarray(y_te, dtype=np.int64),
        num_classes=int(np.unique(y).size),
        feature_names=names,
    )
