"""PHI/PII scanner: finds HIPAA Safe Harbor identifiers in tabular data, at the site.

Only the :class:`ScanSummary` (column names, types, counts, shares) leaves the site.
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
