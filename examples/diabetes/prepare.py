"""Write scikit-learn's diabetes data (442 patients, standardised features) to data/diabetes.csv."""

from __future__ import annotations

import sys
from pathlib import Path

from sklearn.datasets import load_diabetes


def main(root: Path) -> None:
    """Write the example's data under ``root``."""
    data = load_diabetes()
    (root / "data").mkdir(parents=True, exist_ok=True)
    names = [f"f_{n}" for n in data.feature_names]
    lines = [",".join([*names, "progression"])]
    lines += [",".join([*(f"{v:.6f}" for v in row), f"{t:.1f}"]) for row, t in zip(data.data, data.target, strict=True)]
    (root / "data" / "diabetes.csv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
