"""The scanner on seeded patient and bank tables: precision and recall per column, and privacy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedinfra.config import SiteManifest
from fedinfra.errors import DataError
from fedinfra.policy.scan import scan_file, scan_site_data, scan_table
from fedinfra.policy.scan.synth import bank_table, patient_table

SEEDS = range(6)


def _confusion(gen, seeds) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    tp = fp = fn = 0
    for seed in seeds:
        table, truth = gen(rows=400, seed=seed)
        for col in scan_table(table).columns:
            planted = truth[col.column] is not None
            found = col.identifier is not None
            tp += planted and found
            fp += found and not planted
            fn += planted and not found
    return tp, fp, fn


@pytest.mark.parametrize("gen", [patient_table, bank_table], ids=["patients", "bank"])
def test_column_level_precision_and_recall_are_at_least_095(gen) -> None:  # type: ignore[no-untyped-def]
    tp, fp, fn = _confusion(gen, SEEDS)
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    assert precision >= 0.95, (precision, fp)
    assert recall >= 0.95, (recall, fn)


def test_planted_identifiers_get_their_own_kind() -> None:
    table, truth = patient_table(rows=300, seed=11)
    found = {c.column: c.identifier for c in scan_table(table).columns}
    exact = sum(found[c] == k for c, k in truth.items() if k is not None)
    assert exact / sum(k is not None for k in truth.values()) >= 0.9


def test_summary_holds_no_cell_value() -> None:
    table, _ = patient_table(rows=200, seed=3)
    text = json.dumps(scan_table(table).model_dump())
    cells = {v for values in table.values() for v in values if v is not None and len(v) > 4}
    leaked = [v for v in cells if v in text and v not in table]  # column names may appear
    assert leaked == []


def test_age_over_89_is_flagged_but_younger_ages_are_not() -> None:
    old = scan_table({"age": ["45", "91", "60"]}).columns[0]
    young = scan_table({"age": ["45", "89", "60"]}).columns[0]
    assert old.identifier == "age_over_89"
    assert young.identifier is None


def test_restricted_zip3_is_flagged_and_an_ordinary_one_is_not() -> None:
    assert scan_table({"zip3": ["100", "036", "606"]}).columns[0].identifier == "restricted_zip3"
    assert scan_table({"zip3": ["100", "112", "606"]}).columns[0].identifier is None


def test_k_anonymity_over_quasi_identifiers() -> None:
    table = {
        "sex": ["F", "F", "M", "M", "M"],
        "age": ["40", "40", "50", "50", "51"],
        "glucose": ["1", "2", "3", "4", "5"],
    }
    summary = scan_table(table)
    assert summary.quasi_identifiers == ["sex", "age"]
    assert summary.k_anonymity == 1
    assert summary.rows_in_small_groups == 5


def test_csv_and_parquet_give_the_same_findings(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table, _ = bank_table(rows=200, seed=5)
    pq.write_table(pa.table({k: pa.array(v, type=pa.string()) for k, v in table.items()}), tmp_path / "b.parquet")
    csv_path = tmp_path / "b.csv"
    rows = zip(*table.values(), strict=True)
    csv_path.write_text(
        ",".join(table) + "\n" + "\n".join(",".join("" if v is None else f'"{v}"' for v in r) for r in rows)
    )
    by_parquet = {c.column: c.identifier for c in scan_file(tmp_path / "b.parquet").columns}
    by_csv = {c.column: c.identifier for c in scan_file(csv_path).columns}
    assert by_parquet == by_csv


def test_typed_parquet_dates_are_found(tmp_path: Path) -> None:
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    dates = [dt.date(1950, 1, 1) + dt.timedelta(days=37 * i) for i in range(50)]
    pq.write_table(pa.table({"dob": dates, "x": [float(i) for i in range(50)]}), tmp_path / "t.parquet")
    summary = scan_file(tmp_path / "t.parquet", max_rows=20)
    assert summary.truncated
    assert summary.rows_scanned == 20
    assert [c.identifier for c in summary.columns] == ["date", None]


def test_identifier_outside_the_training_columns_is_reported_but_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("email,x,y\n" + "".join(f"p{i}@example.org,{i}.5,{i % 2}\n" for i in range(20)))
    site = SiteManifest.model_validate(
        {
            "name": "s",
            "organisation": "o",
            "jurisdiction": "DE",
            "dataset": {"path": str(path), "label_column": "y", "feature_columns": ["x"]},
        }
    )
    summary = scan_site_data(site)
    [email] = summary.flagged
    assert (email.identifier, email.in_training, email.blocking) == ("email", False, False)
    assert summary.clean


def test_declared_column_missing_from_the_data_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("x,y\n1,0\n")
    site = SiteManifest.model_validate(
        {
            "name": "s",
            "organisation": "o",
            "jurisdiction": "DE",
            "dataset": {"path": str(path), "label_column": "y", "feature_columns": ["z"]},
        }
    )
    with pytest.raises(DataError, match=r"absent from the data: \['z'\]"):
        scan_site_data(site)


def test_ragged_csv_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="row 3 has 1 fields"):
        scan_file(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        scan_file(tmp_path / "nope.csv")
