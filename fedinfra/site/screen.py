"""The PHI/PII screen of a site's declared data, whatever its format, before it is read.

Tables (CSV, Parquet) go through the policy scanner's own reader; a NumPy archive's
columns, an image folder's file names and a DICOM folder's header attributes are turned
into columns and handed to the same public :func:`~fedinfra.policy.scan.scan_table`
(HIPAA 45 CFR 164.514(b)(2) Safe Harbor; GDPR Art. 5(1)(c)). DICOM additionally must
carry none of the identifying attributes of DICOM PS3.15 Annex E
(:data:`fedinfra.data.dicom.IDENTIFYING_TAGS`): a folder that still does is refused,
and one whose manifest declares them removed is re-checked file by file. Refusals name
attributes and counts, never values.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedinfra.config import DatasetDecl, SiteManifest
from fedinfra.errors import PolicyViolation

if TYPE_CHECKING:
    from fedinfra.policy.scan import ScanSummary

#: Rows of a NumPy archive the scanner looks at.
SCAN_ROWS = 1000


def screen_site_data(manifest: SiteManifest, path: Path) -> ScanSummary:
    """Scan the declared data at ``path``; raise :class:`PolicyViolation` for identifying DICOM tags."""
    from fedinfra.policy import scan_site_data

    decl = manifest.dataset
    if decl is None or decl.format in ("csv", "parquet"):
        return scan_site_data(manifest, path)
    return screen_declared(decl, path, site=manifest.name)


def screen_declared(decl: DatasetDecl, path: Path, *, site: str) -> ScanSummary:
    """:func:`screen_site_data` for a declaration without a manifest (a simulated job's source)."""
    from fedinfra.policy.scan import scan_table

    if decl.format in ("csv", "parquet"):
        from fedinfra.policy.scan import read_table

        table, truncated = read_table(path, fmt="parquet" if decl.format == "parquet" else "csv")
        used = [*(decl.feature_columns or [c for c in table if c != decl.label_column]), decl.label_column]
        return scan_table(table, source=path.name, fmt=decl.format, training_columns=used, truncated=truncated)
    if decl.format == "numpy":
        from fedinfra.data.loaders import read_declared

        x, y, names = read_declared(decl, path)
        flat = x[:SCAN_ROWS].reshape(min(len(x), SCAN_ROWS), -1)
        cols = names or tuple(f"{decl.features_key}{i}" for i in range(flat.shape[1]))
        table = {c: [f"{float(v):.6g}" for v in flat[:, i]] for i, c in enumerate(cols[: flat.shape[1]])}
        table[decl.label_column] = [f"{v:.6g}" for v in np.asarray(y[:SCAN_ROWS], dtype=np.float64)]
        return scan_table(table, source=path.name)
    from fedinfra.data.loaders import DICOM_SUFFIXES, IMAGE_SUFFIXES, class_files

    files = class_files(path, IMAGE_SUFFIXES if decl.format == "images" else DICOM_SUFFIXES)
    if decl.format == "images":
        # File names are not trained on but are reported (a name like 'jane_doe.png').
        table = {"file_name": [f.stem for _, f in files], "label": [c for c, _ in files]}
        return scan_table(table, source=path.name, training_columns=["label"])
    from fedinfra.data.dicom import header_table, identifying_tags

    found = identifying_tags(f for _, f in files)
    if found:
        declared = sorted(t for t in found if t in decl.removed_tags)
        named = ", ".join(f"{t} ({n} of {len(files)} files)" for t, n in sorted(found.items()))
        if declared:
            raise PolicyViolation(
                f"site {site}: dataset.removed_tags declares {declared} removed but the re-check "
                f"finds identifying DICOM tags: {named}; de-identify the files (DICOM PS3.15 Annex E)"
            )
        raise PolicyViolation(
            f"site {site}: identifying DICOM tags present: {named}; remove them (DICOM PS3.15 Annex E) "
            "and list them in dataset.removed_tags"
        )
    # Header attributes are not trained on: the scanner reports what else it sees.
    return scan_table(header_table(f for _, f in files), source=path.name, training_columns=[])
