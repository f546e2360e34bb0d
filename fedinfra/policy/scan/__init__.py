"""PHI/PII scanner: finds HIPAA Safe Harbor identifiers in tabular data, at the site.

Only the :class:`ScanSummary` (column names, types, counts, shares) leaves the site.

Columns are judged by their values (45 CFR 164.514(b)(2) Safe Harbor identifiers, GDPR
Art. 4(1) identifiers); a column's name only adjusts confidence. Names and places have no
check digit: they are matched against shipped public lists (``compliance/reference/``: U.S.
Census 1990 names, public domain; GeoNames places, CC BY 4.0 - "Place names from GeoNames
(geonames.org)"; U.S. Census county names). Not compared with
Microsoft Presidio: ``presidio-analyzer`` needs a spaCy language model, and spaCy's models
are GitHub release downloads, not PyPI packages, so it cannot run offline where fedinfra
runs (sites, CI). The scanner's own figures on an independent evaluation set are in
``bench/phi.py`` and ``bench/results/phi.json``.
"""

from fedinfra.policy.scan._scanner import read_table, scan_file, scan_site_data, scan_table, training_columns_of
from fedinfra.policy.scan._summary import ColumnReport, ScanSummary

__all__ = [
    "ColumnReport",
    "ScanSummary",
    "read_table",
    "scan_file",
    "scan_site_data",
    "scan_table",
    "training_columns_of",
]
