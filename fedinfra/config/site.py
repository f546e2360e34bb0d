"""A site's self-description (:class:`SiteManifest`), loaded from ``site.toml``.

The manifest is what a site declares about itself to the consortium: who is responsible
for the data (GDPR Art. 4(7)-(8), Art. 26), on which legal basis it is processed
(Art. 6(1), Art. 9(2)), for which purposes (Art. 5(1)(b)), for how long (Art. 5(1)(e)),
which assessments and agreements cover it (Art. 35 DPIA, Art. 28 DPA, HIPAA 45 CFR
164.504(e) BAA) and what privacy budget it grants. Policy packs check these fields at the
site gate; the manifest itself only validates their shape and that codes exist.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from fedinfra.config._load import StrictModel, load_model

#: Roles under GDPR Art. 4(7) (controller), 4(8) (processor) and Art. 26 (joint controllers).
Role = Literal["controller", "processor", "joint-controller"]
Sector = Literal["health", "finance", "device"]

#: GDPR Art. 6(1)(a)-(f), by name.
LawfulBasis = Literal[
    "consent",  # (a)
    "contract",  # (b)
    "legal-obligation",  # (c)
    "vital-interests",  # (d)
    "public-task",  # (e)
    "legitimate-interests",  # (f)
]
LAWFUL_BASIS_POINT: dict[str, str] = {
    "consent": "Art. 6(1)(a)",
    "contract": "Art. 6(1)(b)",
    "legal-obligation": "Art. 6(1)(c)",
    "vital-interests": "Art. 6(1)(d)",
    "public-task": "Art. 6(1)(e)",
    "legitimate-interests": "Art. 6(1)(f)",
}

#: GDPR Art. 9(2)(a)-(j): conditions for processing special categories (health data).
Art9Condition = Literal[
    "explicit-consent",  # (a)
    "employment-social-security",  # (b)
    "vital-interests",  # (c)
    "not-for-profit-body",  # (d)
    "made-public",  # (e)
    "legal-claims",  # (f)
    "substantial-public-interest",  # (g)
    "health-care",  # (h)
    "public-health",  # (i)
    "research-statistics",  # (j)
]
ART9_POINT: dict[str, str] = {
    name: f"Art. 9(2)({letter})"
    for name, letter in zip(
        (
            "explicit-consent",
            "employment-social-security",
            "vital-interests",
            "not-for-profit-body",
            "made-public",
            "legal-claims",
            "substantial-public-interest",
            "health-care",
            "public-health",
            "research-statistics",
        ),
        "abcdefghij",
        strict=True,
    )
}

#: Appropriate safeguards for a transfer to a third country, GDPR Art. 46(2)-(3).
TransferSafeguard = Literal[
    "none",
    "public-authority-instrument",  # 46(2)(a)
    "binding-corporate-rules",  # 46(2)(b), Art. 47
    "standard-contractual-clauses",  # 46(2)(c)-(d)
    "code-of-conduct",  # 46(2)(e)
    "certification",  # 46(2)(f)
    "ad-hoc-clauses",  # 46(3)(a)
]
ColumnType = Literal["int", "float", "string", "bool", "date", "category"]


@lru_cache(maxsize=1)
def iso3166_alpha2() -> frozenset[str]:
    """Return the officially assigned ISO 3166-1 alpha-2 codes (shipped reference data)."""
    ref = resources.files("fedinfra._compliance") / "reference" / "iso3166-alpha2.toml"
    return frozenset(tomllib.loads(ref.read_text(encoding="utf-8"))["codes"])


class DatasetDecl(StrictModel):
    """The data set a site trains on: format, path, label and declared schema.

    Tables (``csv``, ``parquet``) and ``numpy`` archives (``.npz``) name their label
    (``label_column``; for NumPy the label array) and features; ``images`` and ``dicom``
    folders hold one sub-folder per class. A DICOM set lists in ``removed_tags`` the
    identifying header attributes it has had removed (DICOM PS3.15 Annex E); the site
    re-checks every file before use and refuses when one still carries them.
    """

    path: str = Field(min_length=1)
    format: Literal["csv", "parquet", "numpy", "images", "dicom"] = "csv"
    label_column: str = Field(
        default="", validate_default=True, description="label column (tables) or label array (numpy)"
    )
    feature_columns: list[str] = Field(default_factory=list, description="allowed features; empty = all but label")
    columns: dict[str, ColumnType] = Field(default_factory=dict, description="schema: column name -> type")
    features_key: str = Field(default="x", min_length=1, description="numpy: name of the features array")
    image_size: list[int] | None = Field(default=None, min_length=2, max_length=2, description="[H, W] to resize to")
    channels: Literal[1, 3] = 1
    removed_tags: list[str] = Field(default_factory=list, description="dicom: identifying tags removed (PS3.15 E)")

    @field_validator("label_column")
    @classmethod
    def _label_for_tables(cls, value: str, info: ValidationInfo) -> str:
        fmt = info.data.get("format", "csv")
        if fmt in ("csv", "parquet", "numpy") and not value:
            raise ValueError(f"required for format {fmt!r}")
        return value

    @model_validator(mode="after")
    def _schema_covers_columns(self) -> DatasetDecl:
        if self.columns:
            missing = [c for c in [self.label_column, *self.feature_columns] if c not in self.columns]
            if missing:
                raise ValueError(f"columns named in the dataset but absent from its schema: {missing}")
        if self.image_size is not None and min(self.image_size) < 1:
            raise ValueError("dataset.image_size must be two positive ints [H, W]")
        return self


class BudgetCaps(StrictModel):
    """Privacy-budget caps the site imposes on every job."""

    epsilon_per_run: float = Field(default=10.0, gt=0)
    epsilon_lifetime: float = Field(default=50.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    delta_lifetime: float = Field(
        default=1e-4, gt=0, lt=1, description="cap on the sum of deltas over all runs on this dataset"
    )
    max_noise_split: int = Field(
        default=100, ge=1, le=100_000, description="most sites a user-level DP job may split this site's noise over"
    )

    @model_validator(mode="after")
    def _run_le_lifetime(self) -> BudgetCaps:
        if self.epsilon_per_run > self.epsilon_lifetime:
            raise ValueError("epsilon_per_run exceeds epsilon_lifetime")
        if self.delta > self.delta_lifetime:
            raise ValueError("delta exceeds delta_lifetime")
        return self


class ConsentDecl(StrictModel):
    """Where consent is the basis (Art. 6(1)(a), 9(2)(a)): its record and current state."""

    reference: str = Field(min_length=1, description="id of the consent record or form version")
    status: Literal["given", "withdrawn", "expired", "pending"]
    recorded: dt.date | None = None


class DpiaDecl(StrictModel):
    """The data protection impact assessment (GDPR Art. 35): a reference, its hash, its date."""

    reference: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the DPIA document, hex")
    date: dt.date


class AgreementDecl(StrictModel):
    """A contract covering the processing: BAA (45 CFR 164.504(e)), DPA (GDPR Art. 28)."""

    kind: Literal["baa", "dpa", "joint-controller-arrangement", "service-provider-contract"]
    reference: str = Field(min_length=1)
    signed: dt.date


class ContactDecl(StrictModel):
    """A business contact (the DPO, GDPR Art. 37(7)); never written to the audit log."""

    name: str = Field(min_length=1)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class SiteManifest(StrictModel):
    """Who a site is and under which terms it takes part."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    organisation: str = Field(min_length=1)
    role: Role = "controller"
    jurisdiction: str = Field(min_length=2, max_length=2, description="ISO 3166-1 alpha-2")
    sector: Sector = "health"
    lawful_basis: LawfulBasis | None = None
    art9_condition: Art9Condition | None = None
    purposes: list[str] = Field(default_factory=list)
    consent: ConsentDecl | None = None
    data_categories: list[str] = Field(
        default_factory=list,
        description=(
            "e.g. health, demographic, financial; GDPR Art. 9(1) special categories "
            "(health, genetic, biometric, ...) need art9_condition"
        ),
    )
    data_subjects: list[str] = Field(default_factory=list, description="e.g. patients, customers")
    retention_days: int | None = Field(default=None, gt=0, description="how long the site keeps the data")
    dpia: DpiaDecl | None = None
    agreements: list[AgreementDecl] = Field(default_factory=list)
    transfer_safeguard: TransferSafeguard = "none"
    dpo: ContactDecl | None = None
    policy_packs: list[str] = Field(default_factory=list, description="the site's own packs; empty = sector default")
    dataset: DatasetDecl | None = None
    budget: BudgetCaps = Field(default_factory=BudgetCaps)

    @field_validator("jurisdiction")
    @classmethod
    def _iso_code(cls, value: str) -> str:
        code = value.upper()
        if code not in iso3166_alpha2():
            raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code (e.g. DE, FR, US)")
        return code


def load_site(path: Path | str) -> SiteManifest:
    """Load and validate a ``site.toml``."""
    return load_model(SiteManifest, path)
