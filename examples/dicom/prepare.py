"""Write DICOM files from pydicom's test images: data/ct/*.dcm and data/mr/*.dcm.

The copies keep pydicom's patient attributes (PatientName, PatientID, ...), so a site
refuses them until ``deidentify.py`` has removed every identifying attribute. Each copy
gets a little pixel noise so the images differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom

COPIES = 12


def _test_file(name: str) -> Path:
    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def main(root: Path) -> None:
    """Write the example's data under ``root``."""
    rng = np.random.default_rng(0)
    for label, name in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        folder = root / "data" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(COPIES):
            ds = pydicom.dcmread(_test_file(name), force=True)
            pixels = ds.pixel_array.astype(np.int32)
            noisy = np.clip(pixels + rng.integers(-20, 21, size=pixels.shape), 0, None).astype(pixels.dtype)
            ds.PixelData = noisy.astype(ds.pixel_array.dtype).tobytes()
            ds.save_as(folder / f"{i:02d}.dcm")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
