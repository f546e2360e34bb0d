"""Reading a site's declared table (CSV or Parquet) into features and labels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedinfra.errors import DataError


def read_csv_table(
    path: Path, *, label_column: str, feature_columns: list[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[str]]:
    """Read numeric features and an integer label column from a CSV file.

    ``feature_columns`` empty means every column but the label. A label column of words
    ("No"/"Yes") is coded by sorted category order. Non-numeric feature cells raise
    :class:`DataError` naming the file and row.
    """
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            if label_column not in header:
                raise DataError(f"{path}: label column {label_column!r} not in header {header}")
            features = feature_columns or [c for c in header if c != label_column]
            missing = [c for c in features if c not in header]
            if missing:
                raise DataError(f"{path}: feature columns {missing} not in header")
            xs: list[list[float]] = []
            labels: list[str] = []
            for lineno, row in enumerate(reader, start=2):
                try:
                    xs.append([float(row[c]) for c in features])
                except (TypeError, ValueError) as exc:
                    raise DataError(f"{path}:{lineno}: non-numeric feature value ({exc})") from exc
                labels.append(str(row[label_column]).strip())
    except FileNotFoundError as exc:
        raise DataError(f"{path}: data file not found; check dataset.path in the site manifest") from exc
    if not xs:
        raise DataError(f"{path}: no data rows")
    try:
        ys = [int(float(v)) for v in labels]
    except ValueError:
        categories = sorted(set(labels))
        ys = [categories.index(v) for v in labels]
    return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.int64), features
