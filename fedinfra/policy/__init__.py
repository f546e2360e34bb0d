"""Policy engine (layer L3): packs of rules enforced at every gate, failing closed.

Packs (``compliance/packs/*.toml``) name registered checks; :func:`evaluate` runs a
gate's rules against typed :class:`Facts` and returns an :class:`Evaluation` whose
``to_dict()`` is the ``policy.evaluated`` audit payload (pack SHA-256s and findings, no
personal data). :func:`preflight` is a site's own offline check of a job.
"""

from fedinfra.policy._engine import (
    GATES,
    SECTOR_PACKS,
    Evaluation,
    Finding,
    Status,
    evaluate,
    preflight,
    site_packs,
)
from fedinfra.policy._facts import CloseFacts, EvidenceUnavailable, Facts, JobFacts, RoundFacts
from fedinfra.policy._packs import BUILTIN_PACKS, Gate, Pack, Rule, load_pack_file, load_packs, parse_pack
from fedinfra.policy._registry import Outcome, register_check, registered_checks
from fedinfra.policy.scan import ColumnReport, ScanSummary, scan_file, scan_site_data, scan_table

__all__ = [
    "BUILTIN_PACKS",
    "GATES",
    "SECTOR_PACKS",
    "CloseFacts",
    "ColumnReport",
    "Evaluation",
    "EvidenceUnavailable",
    "Facts",
    "Finding",
    "Gate",
    "JobFacts",
    "Outcome",
    "Pack",
    "RoundFacts",
    "Rule",
    "ScanSummary",
    "Status",
    "evaluate",
    "load_pack_file",
    "load_packs",
    "parse_pack",
    "preflight",
    "register_check",
    "registered_checks",
    "scan_file",
    "scan_site_data",
    "scan_table",
    "site_packs",
]
