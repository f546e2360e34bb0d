"""Sites read what they declare - tables, arrays, images, DICOM - and screen it first."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedinfra.config import DatasetDecl, JobSpec
from fedinfra.data.dicom import IDENTIFYING_TAGS, identifying_tags
from fedinfra.data.loaders import read_declared
from fedinfra.errors import DataError, PolicyViolation
from fedinfra.site.screen import screen_declared


def _pydicom_file(name: str) -> Path:
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    assert path.is_file(), f"pydicom's test file {name} ships in its wheel"
    return path


def _dicom_folder(root: Path, *, deidentify: bool) -> Path:
    """pydicom's own CT and MR test images, two classes, optionally de-identified."""
    import pydicom

    for label, name in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        (root / label).mkdir(parents=True)
        for i in range(2):
            target = root / label / f"{i}.dcm"
            shutil.copy(_pydicom_file(name), target)
            if deidentify:
                ds = pydicom.dcmread(target, force=True)
                for keyword in IDENTIFYING_TAGS:
                    if keyword in ds:
                        delattr(ds, keyword)
                ds.save_as(target)
    return root


def test_csv_and_parquet_give_the_same_features_and_labels(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "t.csv").write_text("a,b,y\n1,2,yes\n3,4,no\n5,6,yes\n")
    pq.write_table(pa.table({"a": [1.0, 3.0, 5.0], "b": [2, 4, 6], "y": ["yes", "no", "yes"]}), tmp_path / "t.parquet")

    csv = read_declared(DatasetDecl(path="t.csv", label_column="y"), tmp_path / "t.csv")
    parquet = read_declared(DatasetDecl(path="t.parquet", format="parquet", label_column="y"), tmp_path / "t.parquet")

    for got in (csv, parquet):
        assert got[0].tolist() == [[1, 2], [3, 4], [5, 6]]
        assert got[1].tolist() == [1, 0, 1]  # sorted categories: no=0, yes=1
        assert got[2] == ("a", "b")


def test_a_numeric_label_stays_a_number_for_regression(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,y\n1,0.5\n2,151.25\n")

    _, y, _ = read_declared(DatasetDecl(path="t.csv", label_column="y"), tmp_path / "t.csv")

    assert y.dtype == np.float64
    assert y.tolist() == [0.5, 151.25]


def test_a_non_numeric_feature_names_column_and_row_but_not_the_value(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,y\n1,0\nJane Roe,1\n")

    with pytest.raises(DataError) as info:
        read_declared(DatasetDecl(path="t.csv", label_column="y"), tmp_path / "t.csv")

    assert "column 'a' row 3" in str(info.value)
    assert "Jane" not in str(info.value)


def test_numpy_archive_keeps_image_shaped_features(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((5, 1, 4, 4)), y=np.arange(5) % 2)

    x, y, names = read_declared(DatasetDecl(path="d.npz", format="numpy", label_column="y"), tmp_path / "d.npz")

    assert x.shape == (5, 1, 4, 4)
    assert y.tolist() == [0, 1, 0, 1, 0]
    assert names == ()


def test_image_folder_has_one_class_per_subfolder_and_resizes(tmp_path: Path) -> None:
    from PIL import Image

    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 12), value, dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    decl = DatasetDecl(path=".", format="images", image_size=[8, 8])

    x, y, _ = read_declared(decl, tmp_path)

    assert x.shape == (6, 1, 8, 8)
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert float(x[0].max()) == 0.0
    assert float(x[-1].min()) == 1.0


def test_dicom_folder_reads_pixels_of_pydicoms_test_files(tmp_path: Path) -> None:
    root = _dicom_folder(tmp_path / "scans", deidentify=True)

    x, y, _ = read_declared(DatasetDecl(path="scans", format="dicom", image_size=[32, 32]), root)

    assert x.shape == (4, 1, 32, 32)
    assert y.tolist() == [0, 0, 1, 1]
    assert 0.0 <= float(x.min()) < float(x.max()) <= 1.0


def test_dicom_with_patient_name_and_id_is_refused_naming_tags_not_values(tmp_path: Path) -> None:
    root = _dicom_folder(tmp_path / "scans", deidentify=False)
    decl = DatasetDecl(path="scans", format="dicom")

    with pytest.raises(PolicyViolation) as info:
        screen_declared(decl, root, site="radiology")

    message = str(info.value)
    assert "PatientName (4 of 4 files)" in message
    assert "PatientID" in message
    assert "CompressedSamples" not in message  # the name itself never appears
    assert "\n" not in message


def test_dicom_declared_removed_but_still_present_fails_the_recheck(tmp_path: Path) -> None:
    root = _dicom_folder(tmp_path / "scans", deidentify=False)
    decl = DatasetDecl(path="scans", format="dicom", removed_tags=["PatientName", "PatientID"])

    with pytest.raises(PolicyViolation, match="declares \\['PatientID', 'PatientName'\\] removed but the re-check"):
        screen_declared(decl, root, site="radiology")


def test_de_identified_dicom_passes_the_recheck_and_is_scanned(tmp_path: Path) -> None:
    root = _dicom_folder(tmp_path / "scans", deidentify=True)
    decl = DatasetDecl(path="scans", format="dicom", removed_tags=["PatientName", "PatientID"])

    summary = screen_declared(decl, root, site="radiology")

    assert identifying_tags(f for f in root.rglob("*.dcm")) == {}
    assert summary.rows_scanned == 4
    assert "Modality" in {c.column for c in summary.columns}


def test_label_column_is_required_for_tables() -> None:
    with pytest.raises(ValueError, match=r"label_column\n.*required for format 'csv'"):
        DatasetDecl(path="t.csv")


def _user_job(path: Path, **data: object) -> JobSpec:
    return JobSpec.model_validate(
        {
            "task": {"ref": "fedinfra.task.builtin:RegressionTabularTask", "config": {"features": 2}},
            "sites": {"count": 3, "min_sites": 2},
            "data": {"source": {"path": str(path), "label_column": "y"}, **data},
        }
    )


def test_simulation_splits_a_users_table_iid_among_sites(tmp_path: Path) -> None:
    from fedinfra.site.context import site_context

    rows = "\n".join(f"{np.sin(i):.4f},{np.cos(i):.4f},{i * 0.5}" for i in range(100))
    (tmp_path / "t.csv").write_text("a,b,y\n" + rows + "\n")
    job = _user_job(tmp_path / "t.csv", partition="iid")

    sizes = []
    for pid in range(3):
        ctx = site_context({"partition-id": pid, "num-partitions": 3, "state-dir": str(tmp_path / "h")}, job)
        sizes.append(len(ctx.data.y))
        assert ctx.data.y.dtype == np.float32  # a regression target
    assert sorted(sizes) == [26, 27, 27]  # 80 training rows dealt out evenly


def test_a_regression_target_cannot_be_split_by_label_skew(tmp_path: Path) -> None:
    from fedinfra.site.context import site_context

    (tmp_path / "t.csv").write_text("a,b,y\n" + "\n".join(f"{np.sin(i):.3f},1.5,{i}.5" for i in range(40)) + "\n")
    job = _user_job(tmp_path / "t.csv", partition="dirichlet")

    with pytest.raises(DataError, match="partition = 'iid'"), warnings.catch_warnings():
        site_context({"partition-id": 0, "num-partitions": 3, "state-dir": str(tmp_path / "h")}, job)


def test_a_job_with_its_own_data_must_name_a_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a \\[task\\]"):
        JobSpec.model_validate({"data": {"source": {"path": "t.csv", "label_column": "y"}}})
