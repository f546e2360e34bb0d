"""Compliance audit reports (layer L5), built from the audit store and configuration alone.

``generate_report(store, run_id, out_dir=...)`` verifies the store, collects
:class:`ReportData` from the run's entries, renders HTML (inline CSS and SVG charts), PDF
(WeasyPrint) and JSON (``compliance/report.schema.json``), and appends the report's
SHA-256 to the log as ``report.generated``.
"""

from fedinfra.report.collect import build_report
from fedinfra.report.generate import FORMATS, ReportFiles, generate_report, load_report, parse_formats
from fedinfra.report.model import SCHEMA_VERSION, ReportData
from fedinfra.report.records import AuditRecord, Checkpoint, RunConfig, VerifiedLog
from fedinfra.report.render import SECTIONS, applicable_sections, to_html, to_json, to_pdf

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "SECTIONS",
    "AuditRecord",
    "Checkpoint",
    "ReportData",
    "ReportFiles",
    "RunConfig",
    "VerifiedLog",
    "applicable_sections",
    "build_report",
    "generate_report",
    "load_report",
    "parse_formats",
    "to_html",
    "to_json",
    "to_pdf",
]
