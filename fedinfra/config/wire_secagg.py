"""Bounded wire documents of the secure-aggregation stages (Bonawitz et al., CCS 2017, fig. 4).

One document type per direction; every field is bounded so a hostile peer cannot make the
other side allocate without limit. Keys and shares travel hex-encoded inside the JSON.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedinfra.config._load import StrictModel

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_SITES = 10_000

Stage = Literal["advertise", "share", "mask", "consistency", "unmask"]
_SIG = r"^([0-9a-f]{128})?$"


class StageRequest(StrictModel):
    """Coordinator -> site: what this stage needs (the fields of the earlier stages' results)."""

    stage: Stage
    n: int = Field(default=0, ge=0, le=MAX_SITES)
    #: ``(name, c_pk, s_pk, identity signature)``, hex.
    roster: list[tuple[str, str, str, str]] = Field(default_factory=list, max_length=MAX_SITES)
    u2: list[str] = Field(default_factory=list, max_length=MAX_SITES)
    shares: dict[str, str] = Field(default_factory=dict, max_length=MAX_SITES)
    u3: list[str] = Field(default_factory=list, max_length=MAX_SITES)
    #: Survivors' signatures over ``u3`` (the consistency check), hex.
    signatures: dict[str, str] = Field(default_factory=dict, max_length=MAX_SITES)


class StageReply(StrictModel):
    """Site -> coordinator: public keys, sealed shares, or unmasking shares."""

    stage: Stage
    site: str = Field(pattern=_NAME)
    c_pk: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    s_pk: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    #: advertise: Ed25519 signature of the site's identity key over its keys; consistency: over U3.
    signature: str = Field(default="", pattern=_SIG)
    boxes: dict[str, str] = Field(default_factory=dict, max_length=MAX_SITES)
    commitment: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    shares: dict[str, tuple[Literal["b", "s"], str]] = Field(default_factory=dict, max_length=MAX_SITES)
    refused: str = Field(default="", max_length=240)


__all__ = ["StageReply", "StageRequest"]
