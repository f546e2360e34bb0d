"""Reading what a site declares: CSV, Parquet, NumPy arrays, image folders, DICOM folders.

Every reader returns ``(x, y, names)``: ``x`` float32 with one example per row (table
rows ``n x d``; images ``n x C x H x W`` scaled to [0, 1]), ``y`` the labels (float64 when
every label is a number, else int64 codes of the sorted categories) and ``names`` the
feature names (table columns; empty for images). Errors name the file and what to fix.

Image and DICOM folders hold one sub-folder per class (``root/<label>/<file>``), the
layout of torchvision's ``ImageFolder``; labels are the sorted sub-folder names.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedinfra._optional import extra_imports
from fedinfra.errors import DataError

if TYPE_CHECKING:
    from fedinfra.config import DatasetDecl

F32 = npt.NDArray[np.float32]
Loaded = tuple[F32, npt.NDArray[Any], tuple[str, ...]]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", "")


def resolve(decl: DatasetDecl, base: Path | None) -> Path:
    """The declared path, relative to ``base`` (the manifest's or job's folder)."""
    path = Path(decl.path)
    return path if path.is_absolute() or base is None else base / path


def read_declared(decl: DatasetDecl, path: Path) -> Loaded:
    """Read the data set ``decl`` declares at ``path``."""
    if decl.format in ("csv", "parquet"):
        columns = _read_columns(path, decl.format)
        return _table(path, columns, decl.label_column, list(decl.feature_columns))
    if decl.format == "numpy":
        return _read_numpy(path, decl)
    if decl.format == "images":
        return _read_folder(path, decl, _load_image, IMAGE_SUFFIXES)
    return _read_folder(path, decl, _load_dicom, DICOM_SUFFIXES)


# -- tables ---------------------------------------------------------------------------------
def _read_columns(path: Path, fmt: str) -> dict[str, list[str]]:
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check dataset.path in the site manifest")
    if fmt == "parquet":
        with extra_imports("reading Parquet tables"):
            import pyarrow.parquet as pq  # type: ignore[import-untyped]
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise DataError(f"{path}: cannot read Parquet ({type(exc).__name__})") from exc
        return {
            name: ["" if v is None else str(v) for v in table.column(name).to_pylist()] for name in table.column_names
        }
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty CSV file; expected a header row")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({type(exc).__name__})") from exc
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"{path}: row {i + 2} has {len(row)} fields, the header {len(header)}")
    return {h: [row[j].strip() for row in rows] for j, h in enumerate(header)}


def _table(path: Path, columns: dict[str, list[str]], label: str, features: list[str]) -> Loaded:
    if label not in columns:
        raise DataError(f"{path}: label column {label!r} not in the header {sorted(columns)}")
    features = features or [c for c in columns if c != label]
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"{path}: feature columns {missing} not in the header")
    if not columns[label]:
        raise DataError(f"{path}: no data rows")
    x = np.empty((len(columns[label]), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        try:
            x[:, j] = [float(v) for v in columns[name]]
        except ValueError as exc:
            # Never echo the cell: it may be personal data (fedinfra logs no raw values).
            row = next(i for i, v in enumerate(columns[name]) if not _is_number(v)) + 2
            raise DataError(
                f"{path}: column {name!r} row {row} is not a number; declare only numeric features"
            ) from exc
    return x, labels_of(columns[label]), tuple(features)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def labels_of(values: Sequence[Any]) -> npt.NDArray[Any]:
    """Numbers as float64; otherwise int64 codes of the sorted distinct values."""
    texts = [str(v).strip() for v in values]
    if all(_is_number(t) for t in texts):
        return np.asarray([float(t) for t in texts], dtype=np.float64)
    categories = sorted(set(texts))
    index = {c: i for i, c in enumerate(categories)}
    return np.asarray([index[t] for t in texts], dtype=np.int64)


def _read_numpy(path: Path, decl: DatasetDecl) -> Loaded:
    """An ``.npz`` archive: features under ``features_key`` (default ``x``), labels under ``label_column``."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check dataset.path in the site manifest")
    key = decl.features_key
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive or decl.label_column not in archive:
                raise DataError(
                    f"{path}: needs arrays {key!r} and {decl.label_column!r}; it has {sorted(archive.files)}"
                )
            x = np.asarray(archive[key], dtype=np.float32)
            y = np.asarray(archive[decl.label_column])
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read the NumPy archive ({type(exc).__name__}); save it with numpy.savez"
        ) from exc
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"{path}: {key!r} must be n x ... and {decl.label_column!r} length n (got {x.shape}, {y.shape})"
        )
    names = tuple(f"{key}{i}" for i in range(x.shape[1])) if x.ndim == 2 else ()
    return x, labels_of(y.tolist()), names


# -- folders of images --------------------------------------------------------------------------
def class_files(root: Path, suffixes: Sequence[str]) -> list[tuple[str, Path]]:
    """``(class name, file)`` for every file under ``root/<class>/``, sorted."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; an image or DICOM data set is a folder with one sub-folder per class")
    found = [
        (d.name, f)
        for d in sorted(p for p in root.iterdir() if p.is_dir())
        for f in sorted(d.iterdir())
        if f.is_file() and f.suffix.lower() in suffixes and not f.name.startswith(".")
    ]
    if not found:
        raise DataError(f"{root}: no files in class sub-folders (expected {root}/<label>/<file>)")
    return found


def _read_folder(root: Path, decl: DatasetDecl, load: Any, suffixes: Sequence[str]) -> Loaded:
    files = class_files(root, suffixes)
    size = tuple(decl.image_size) if decl.image_size else None
    images = [load(f, size, decl.channels) for _, f in files]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"{root}: images differ in size {sorted(shapes)[:3]}; set dataset.image_size = [H, W]")
    return np.stack(images), labels_of([c for c, _ in files]), ()


def _resize(arr: F32, size: tuple[int, ...] | None) -> F32:
    if size is None or arr.shape[-2:] == size:
        return arr
    with extra_imports("reading image folders", extra="imaging"):
        from PIL import Image

    chans = [np.asarray(Image.fromarray(c).resize((size[1], size[0]), Image.Resampling.BILINEAR)) for c in arr]
    return np.stack(chans).astype(np.float32)


def _load_image(path: Path, size: tuple[int, ...] | None, channels: int) -> F32:
    with extra_imports("reading image folders", extra="imaging"):
        from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__})") from exc
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return _resize(np.ascontiguousarray(arr), size)


def _load_dicom(path: Path, size: tuple[int, ...] | None, channels: int) -> F32:
    del channels  # DICOM pixel data here is one grey channel
    ds = read_dicom(path)
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:
        raise DataError(f"{path}: DICOM pixel data cannot be decoded ({type(exc).__name__})") from exc
    if pixels.ndim != 2:
        raise DataError(f"{path}: DICOM image is {pixels.ndim}-D; only single-frame grey images are read")
    lo, hi = float(pixels.min()), float(pixels.max())
    scaled = (pixels - lo) / (hi - lo) if hi > lo else np.zeros_like(pixels)
    return _resize(np.ascontiguousarray(scaled[None]), size)


def read_dicom(path: Path) -> Any:
    """Parse one DICOM file (``force``: files without the Part 10 preamble are common)."""
    with extra_imports("reading DICOM files", extra="imaging"):
        import pydicom
        from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, force=True)
    except (OSError, InvalidDicomError, ValueError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from exc
