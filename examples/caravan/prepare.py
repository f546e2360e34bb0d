"""Copy the Caravan table fedinfra ships (CoIL Challenge 2000, via ISLP) to data/caravan.csv."""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path


def main(root: Path) -> None:
    """Write the example's data under ``root``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    source = resources.files("fedinfra.data") / "files" / "Caravan.csv"
    with resources.as_file(source) as path:
        shutil.copy(path, root / "data" / "caravan.csv")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
