"""Generate a run's compliance report from its audit store and configuration.

Everything is rendered in memory first; files are written (atomically) only when every
requested format rendered, and the report's SHA-256 is then appended to the log as
``report.generated``. A store that fails verification, an unknown run or a missing key
raises before anything is written: no partial report is ever presented as complete.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedinfra.coordinator.artifacts import atomic_write
from fedinfra.errors import ConfigError
from fedinfra.report import render
from fedinfra.report._store import read_verified, record_report
from fedinfra.report.collect import build_report
from fedinfra.report.model import ReportData
from fedinfra.report.records import RunConfig

FORMATS: tuple[str, ...] = ("html", "pdf", "json")


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`generate_report` wrote: a path and SHA-256 per format, and the log entry."""

    run_id: str
    paths: dict[str, Path]
    sha256: dict[str, str]
    report: ReportData
    recorded_seq: int | None


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    """Parse ``html,pdf,json`` (any order, no repeats) into a tuple in canonical order."""
    items = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = sorted(set(items) - set(FORMATS))
    if unknown or not items:
        raise ConfigError(f"--format: {', '.join(unknown) or 'empty'} is not a report format; use any of html,pdf,json")
    return tuple(f for f in FORMATS if f in items)


def _default_run_dir(store: str | Path) -> Path | None:
    from fedinfra.audit.store import is_url

    return None if is_url(store) else Path(store).parent


def file_stem(run_id: str) -> str:
    """``report-<run id>`` with characters unsafe in file names replaced."""
    return "report-" + re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


def load_report(
    store: str | Path, run_id: str, *, run_dir: Path | None = None, public_key: str | Path | None = None
) -> ReportData:
    """Verify ``store`` and build the report data of ``run_id`` (nothing written).

    Raises
    ------
    VerificationError
        If the store fails verification or the run's last entries are not signed.
    ConfigError
        If the run is not in the store, or configuration or key files are invalid.
    StoreError
        If the store is missing or not an audit store.
    """
    log = read_verified(store, public_key=public_key)
    config = RunConfig.from_run_dir(run_dir if run_dir is not None else _default_run_dir(store), run_id)
    try:
        return build_report(log, run_id, config)
    except LookupError as exc:
        raise ConfigError(
            f"run {run_id!r} is not in audit store {log.store_name}; "
            f"list runs with `fedinfra audit show {log.store_name}`"
        ) from exc


def generate_report(
    store: str | Path,
    run_id: str,
    *,
    out_dir: Path,
    formats: Iterable[str] = FORMATS,
    run_dir: Path | None = None,
    public_key: str | Path | None = None,
    record: bool = True,
    actor_kind: str = "operator",
) -> ReportFiles:
    """Write the report of ``run_id`` in ``formats`` under ``out_dir`` and log its hash.

    ``run_dir`` holds the run's configuration (``job.json``, ``sites/``); by default the
    directory of a SQLite store. ``public_key`` pins the log's key (verifier-key text or a
    key file); by default the key recorded in the store is used.
    """
    wanted = parse_formats(list(formats))
    report = load_report(store, run_id, run_dir=run_dir, public_key=public_key)
    blobs: dict[str, bytes] = {"json": render.to_json(report)}
    if "html" in wanted or "pdf" in wanted:
        html = render.to_html(report)
        blobs["html"] = html.encode("utf-8")
        if "pdf" in wanted:
            blobs["pdf"] = render.to_pdf(html)
    digests = {fmt: hashlib.sha256(data).hexdigest() for fmt, data in blobs.items() if fmt in wanted or fmt == "json"}
    stem = file_stem(run_id)
    paths = {fmt: out_dir / f"{stem}.{fmt}" for fmt in wanted}
    for fmt, path in paths.items():
        atomic_write(path, blobs[fmt])
    seq = None
    if record:
        try:
            seq = record_report(
                store,
                run_id=run_id,
                digests=digests,
                json_size=len(blobs["json"]),
                covers_tree_size=report.header.final_checkpoint.tree_size,
                actor_kind=actor_kind,
            )
        except BaseException:
            for path in paths.values():
                path.unlink(missing_ok=True)
            raise
    return ReportFiles(run_id=run_id, paths=paths, sha256=digests, report=report, recorded_seq=seq)
