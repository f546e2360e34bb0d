"""Scan a table (CSV, Parquet or in-memory columns) for PHI/PII; return only a summary.

Only :class:`ScanSummary` leaves this module: column names, types, counts and shares. The
rows read stay in memory for the duration of the scan.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from fedinfra._optional import extra_imports
from fedinfra.config import SiteManifest
from fedinfra.errors import DataError
from fedinfra.policy.scan import _patterns as p
from fedinfra.policy.scan._detectors import (
    DETECTORS,
    QUASI_KINDS,
    QUASI_TOKENS,
    Column,
    Detection,
    Detector,
    quasi_by_values,
)
from fedinfra.policy.scan._summary import ColumnReport, ScanSummary

#: Values per column the pattern detectors look at (ages and ZIP3 prefixes use all rows).
SAMPLE = 2000
DEFAULT_MAX_ROWS = 100_000
Table = Mapping[str, Sequence[str | None]]


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    text = str(value).strip()
    return text or None


def read_table(
    path: Path, *, fmt: Literal["csv", "parquet"] | None = None, max_rows: int = DEFAULT_MAX_ROWS
) -> tuple[dict[str, list[str | None]], bool]:
    """Read up to ``max_rows`` rows of ``path`` as string cells; return ``(columns, truncated)``."""
    kind = _kind(path, fmt)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check the path")
    if kind == "parquet":
        return _read_parquet(path, max_rows)
    return _read_csv(path, max_rows)


def _kind(path: Path, fmt: Literal["csv", "parquet"] | None) -> Literal["csv", "parquet"]:
    if fmt is not None:
        return fmt
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"


def _read_csv(path: Path, max_rows: int) -> tuple[dict[str, list[str | None]], bool]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty CSV file; expected a header row")
            rows = list(islice(reader, max_rows + 1))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"{path}: row {i + 2} has {len(row)} fields, header has {len(header)}")
    columns = zip(*rows, strict=True) if rows else ([] for _ in header)
    return {h: [v.strip() or None for v in col] for h, col in zip(header, columns, strict=True)}, truncated


def _read_parquet(path: Path, max_rows: int) -> tuple[dict[str, list[str | None]], bool]:
    with extra_imports("reading Parquet tables"):
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        pf = pq.ParquetFile(path)
        total = pf.metadata.num_rows
        batches = []
        read = 0
        for batch in pf.iter_batches(batch_size=min(max_rows, 65_536)):
            batches.append(batch.slice(0, max_rows - read))
            read += batches[-1].num_rows
            if read >= max_rows:
                break
        table = pa.Table.from_batches(batches, schema=pf.schema_arrow) if batches else pf.schema_arrow.empty_table()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read Parquet ({exc})") from exc
    cols = {name: [_cell(v) for v in table.column(name).to_pylist()] for name in table.column_names}
    return cols, total > max_rows


def _dtype(values: list[str]) -> Literal["integer", "float", "date", "string", "boolean", "empty"]:
    if not values:
        return "empty"
    sample = values[:SAMPLE]
    if all(p.INTEGER.match(v) for v in sample):
        return "integer"
    if all(p.is_number(v) for v in sample):
        return "float"
    if all(v.lower() in ("true", "false") for v in sample):
        return "boolean"
    if all(p.is_date(v) for v in sample[:200]):
        return "date"
    return "string"


def _spread_sample(values: list[str]) -> list[str]:
    """Up to :data:`SAMPLE` values spread over the whole column (a sorted file's head is not typical)."""
    n = len(values)
    if n <= SAMPLE:
        return values
    picks = sorted(random.Random(n).sample(range(n), SAMPLE))  # noqa: S311 (seeded sampling, not secrecy)
    return [values[i] for i in picks]


def _report(name: str, values: Sequence[str | None], in_training: bool) -> tuple[ColumnReport, bool]:
    non_null = [v for v in values if v is not None]
    sample = _spread_sample(non_null)
    dtype = _dtype(sample)
    col = Column(name=name, sample=sample, values=non_null, numeric=dtype in ("integer", "float"))
    quasi = bool(sample) and (
        col.named(*QUASI_TOKENS, exclude=frozenset({"group", "band", "id"})) or quasi_by_values(col)
    )
    best: tuple[Detection, Detector] | None = None
    if sample:
        for det in DETECTORS:
            found = det.fn(col)
            if found is not None and (best is None or found.confidence > best[0].confidence):
                best = (found, det)
    if best is None:
        report = ColumnReport(
            column=name, dtype=dtype, non_null=len(non_null), in_training=in_training, quasi_identifier=quasi
        )
        return report, quasi
    found, det = best
    report = ColumnReport(
        column=name,
        dtype=dtype,
        non_null=len(non_null),
        identifier=found.kind,
        label=det.label,
        citation=det.citation,
        basis=found.basis,
        share=round(found.share, 4),
        confidence=round(found.confidence, 3),
        rule=found.rule or found.kind,
        in_training=in_training,
        blocking=in_training,
        quasi_identifier=quasi or found.kind in QUASI_KINDS,
    )
    return report, report.quasi_identifier


def _k_anonymity(table: Table, quasi: list[str], k_target: int) -> tuple[int | None, int]:
    """Smallest group of rows sharing their quasi-identifier values (Sweeney 2002), and rows in groups < k."""
    if not quasi:
        return None, 0
    n = min(len(table[q]) for q in quasi)
    if n == 0:
        return None, 0
    groups = Counter(zip(*(table[q][:n] for q in quasi), strict=True))
    small = sum(c for c in groups.values() if c < k_target)
    return min(groups.values()), small


def scan_table(
    table: Table,
    *,
    source: str = "table",
    fmt: Literal["csv", "parquet", "table"] = "table",
    training_columns: Iterable[str] | None = None,
    truncated: bool = False,
    k_target: int = 5,
) -> ScanSummary:
    """Scan columns of string cells (``None`` = missing).

    ``training_columns``: the columns the site trains on; a flagged column outside them is
    reported but does not block. ``None`` means every column is used.
    """
    used = None if training_columns is None else set(training_columns)
    reports = [_report(name, values, used is None or name in used)[0] for name, values in table.items()]
    quasi = [r.column for r in reports if r.quasi_identifier and r.in_training]
    k, small = _k_anonymity(table, quasi, k_target)
    rows = max((len(v) for v in table.values()), default=0)
    return ScanSummary(
        source=source,
        format=fmt,
        rows_scanned=rows,
        truncated=truncated,
        columns=reports,
        quasi_identifiers=quasi,
        k_anonymity=k,
        rows_in_small_groups=small,
        k_target=k_target,
    )


def scan_file(
    path: Path | str,
    *,
    fmt: Literal["csv", "parquet"] | None = None,
    training_columns: Iterable[str] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ScanSummary:
    """Scan the first ``max_rows`` rows of a CSV or Parquet file."""
    path = Path(path)
    table, truncated = read_table(path, fmt=fmt, max_rows=max_rows)
    return scan_table(
        table, source=path.name, fmt=_kind(path, fmt), training_columns=training_columns, truncated=truncated
    )


def training_columns_of(site: SiteManifest, header: Iterable[str]) -> list[str]:
    """The columns a site trains on: declared features (or all columns) plus the label."""
    if site.dataset is None:
        return list(header)
    feats = site.dataset.feature_columns or [c for c in header if c != site.dataset.label_column]
    return [*feats, site.dataset.label_column]


def scan_site_data(
    site: SiteManifest, data_path: Path | str | None = None, *, max_rows: int = DEFAULT_MAX_ROWS
) -> ScanSummary:
    """Scan a site's declared data set (or ``data_path``), blocking only on training columns."""
    if data_path is None:
        if site.dataset is None:
            raise DataError(f"site {site.name!r}: no [dataset] in the manifest and no data path given")
        data_path = site.dataset.path
    path = Path(data_path)
    declared = site.dataset.format if site.dataset is not None else None
    if declared not in (None, "csv", "parquet"):
        raise DataError(f"site {site.name!r}: a {declared} data set is not a table; scan it with fedinfra.site.screen")
    fmt: Literal["csv", "parquet"] | None = "parquet" if declared == "parquet" else "csv" if declared else None
    table, truncated = read_table(path, fmt=fmt, max_rows=max_rows)
    used = training_columns_of(site, table)
    missing = [c for c in used if c not in table]
    if missing:
        raise DataError(f"{path}: columns declared in site {site.name!r} are absent from the data: {missing}")
    return scan_table(table, source=path.name, fmt=_kind(path, fmt), training_columns=used, truncated=truncated)
