"""A site's preflight before it connects: manifest, data and PHI/PII scan (fail closed).

A site whose data set carries a direct identifier in a training column (HIPAA Safe Harbor,
45 CFR 164.514(b)(2)) or whose manifest or data do not load never starts its SuperNode:
nothing about it reaches the coordinator, not even its presence.
"""

from __future__ import annotations

from pathlib import Path

from fedinfra.config import SiteManifest, load_site
from fedinfra.errors import ConfigError, PolicyViolation


def preflight(manifest_path: Path) -> SiteManifest:
    """Load the manifest, scan its declared data set; raise on any blocking finding."""
    from fedinfra.policy.scan import scan_site_data

    manifest = load_site(manifest_path)
    if manifest.dataset is None:
        raise ConfigError(f"{manifest_path}: field 'dataset' is required for a deployed site")
    data_path = Path(manifest.dataset.path)
    if not data_path.is_absolute():
        data_path = manifest_path.resolve().parent / data_path
    summary = scan_site_data(manifest, data_path)
    blocking = summary.blocking
    if blocking:
        names = ", ".join(f"{c.column} ({c.label or c.identifier})" for c in blocking)
        raise PolicyViolation(
            f"{data_path}: preflight failed: training columns look like identifiers ({names}); "
            "remove them from feature_columns or de-identify the data"
        )
    return manifest
