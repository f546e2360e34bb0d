"""DICOM headers: which identifying attributes a folder of files still carries.

The attributes are those of the DICOM Basic Application Level Confidentiality Profile
(DICOM PS3.15 Annex E, Table E.1-1) that map onto the HIPAA Safe Harbor identifiers
(45 CFR 164.514(b)(2)(i)): names, identifiers, dates tied to the patient or the visit,
addresses, telephone numbers, institutions and people. A site may train on a DICOM set
only when none of them holds a value; the manifest declares which it removed
(``dataset.removed_tags``) and the site re-checks every file (:func:`identifying_tags`).

Only attribute *keywords* and counts leave this module, never a value.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fedinfra.data.loaders import read_dicom

#: PS3.15 Table E.1-1 attributes that identify a patient (keywords), the subset a
#: de-identification must blank or remove before training.
IDENTIFYING_TAGS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "PatientInsurancePlanCodeSequence",
    "MilitaryRank",
    "BranchOfService",
    "CountryOfResidence",
    "RegionOfResidence",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "PatientComments",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName",
    "OperatorsName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "DeviceSerialNumber",
    "StationName",
)

#: Value representations whose values are not text (pixel data, binary, sequences).
_BINARY_VR = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UN"})


def _has_value(ds: object, keyword: str) -> bool:
    value = getattr(ds, keyword, None)
    if value is None:
        return False
    text = str(value).strip().strip("^").strip()
    return bool(text) if not isinstance(value, list | tuple) else len(value) > 0


def identifying_tags(files: Iterable[Path]) -> dict[str, int]:
    """For each identifying attribute still holding a value, in how many files it does."""
    found: dict[str, int] = {}
    for path in files:
        ds = read_dicom(path)
        for keyword in IDENTIFYING_TAGS:
            if _has_value(ds, keyword):
                found[keyword] = found.get(keyword, 0) + 1
    return found


def header_table(files: Iterable[Path], *, max_files: int = 1000) -> dict[str, list[str | None]]:
    """Every text header attribute of up to ``max_files`` files as a column (for the PHI scanner)."""
    rows: list[dict[str, str]] = []
    for i, path in enumerate(files):
        if i >= max_files:
            break
        ds = read_dicom(path)
        row: dict[str, str] = {}
        for elem in ds.iterall():
            if elem.VR in _BINARY_VR or not elem.keyword or elem.keyword == "PixelData":
                continue
            text = str(elem.value).strip()
            if text and len(text) <= 256:
                row[elem.keyword] = text
        rows.append(row)
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k) for r in rows] for k in keys}
