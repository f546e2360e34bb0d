"""The shapes of the bundled data sets, known without loading them.

A deployed site holds its own copy of a job's table (its manifest's CSV), not
scikit-learn's bundled sets: an edge device installs ``fedinfra[edge]`` without
scikit-learn. To build the job's built-in model it needs only the number of input
features and of classes, which are fixed properties of each bundled set (checked
against the loaded sets by ``tests/unit/test_data_shapes.py``).
"""

from __future__ import annotations

from typing import NamedTuple

from fedinfra.errors import DataError


class Shape(NamedTuple):
    """Input features and label classes of a data set."""

    features: int
    classes: int


BUNDLED_SHAPES: dict[str, Shape] = {
    "breast_cancer": Shape(features=30, classes=2),
    "digits": Shape(features=64, classes=10),
    "wine": Shape(features=13, classes=3),
    "caravan": Shape(features=85, classes=2),
}


def bundled_shape(name: str) -> Shape:
    """The shape of bundled data set ``name``; a :class:`DataError` names the known sets."""
    try:
        return BUNDLED_SHAPES[name]
    except KeyError:
        raise DataError(f"unknown bundled data set {name!r}; choose one of {sorted(BUNDLED_SHAPES)}") from None
