"""Write scikit-learn's digits as PNG images: data/<digit>/<index>.png (an image folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(root: Path) -> None:
    """Write the example's data under ``root``."""
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / "data" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image * 255 / 16, dtype=np.uint8)).save(folder / f"{i:04d}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
