"""Remove the identifying attributes (DICOM PS3.15 Annex E) from data/**/*.dcm, in place."""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom

from fedinfra.data.dicom import IDENTIFYING_TAGS


def main(root: Path) -> None:
    """De-identify every DICOM file under ``root/data``."""
    for path in sorted((root / "data").rglob("*.dcm")):
        ds = pydicom.dcmread(path, force=True)
        for keyword in IDENTIFYING_TAGS:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
