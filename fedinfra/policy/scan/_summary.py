"""The scan summary: the only output of a PHI/PII scan that may leave the site.

It carries column names, types, counts and shares - never a cell value - so it can be
sent to the coordinator and written to the audit log (GDPR Art. 5(1)(c) data
minimisation; DESIGN.md "no personal data in the audit log").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Basis = Literal["name", "values", "name+values"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnReport(_Frozen):
    """What the scanner found in one column."""

    column: str
    dtype: Literal["integer", "float", "date", "string", "boolean", "empty"]
    non_null: int = Field(ge=0)
    identifier: str | None = None
    label: str | None = None
    citation: str | None = None
    basis: Basis | None = None
    share: float = Field(default=0.0, ge=0.0, le=1.0, description="share of sampled values that match")
    confidence: float = Field(default=0.0, ge=0.0, le=1.0, description="value evidence adjusted by the name")
    rule: str | None = Field(default=None, description="the rule that fired (never a value)")
    in_training: bool = True
    blocking: bool = False
    quasi_identifier: bool = False


class ScanSummary(_Frozen):
    """Per-column findings plus a k-anonymity estimate over the quasi-identifiers.

    ``k_anonymity`` is the size of the smallest group of scanned rows that share the
    same quasi-identifier values (Sweeney 2002, "k-Anonymity: A Model for Protecting
    Privacy"); ``None`` when no quasi-identifier column was found.
    """

    source: str
    format: Literal["csv", "parquet", "table"]
    rows_scanned: int = Field(ge=0)
    truncated: bool = False
    columns: list[ColumnReport]
    quasi_identifiers: list[str] = Field(default_factory=list)
    k_anonymity: int | None = None
    rows_in_small_groups: int = Field(default=0, ge=0, description="rows in groups smaller than k_target")
    k_target: int = 5

    @property
    def flagged(self) -> list[ColumnReport]:
        """Columns holding an identifier."""
        return [c for c in self.columns if c.identifier is not None]

    @property
    def blocking(self) -> list[ColumnReport]:
        """Flagged columns that would be used in training (they block the site)."""
        return [c for c in self.columns if c.blocking]

    @property
    def clean(self) -> bool:
        """``True`` when no blocking identifier column is present."""
        return not self.blocking
