"""Detectors for the HIPAA Safe Harbor identifiers that tabular data can hold.

45 CFR 164.514(b)(2)(i) lists 18 identifiers (A)-(R) that must be removed for data to be
de-identified under Safe Harbor. Biometrics (P) and full-face photographs (Q) do not
appear as table cells; every other one has a detector here. A detector looks at two
kinds of evidence, as a human reviewer would:

* the column *name*, split into tokens (``PatientDOB`` -> ``patient``, ``dob``), with
  exclusions so that ``drug_name`` or ``age_group`` do not fire; and
* the column *values*, with the structural check of each scheme (Luhn, mod-97, VIN
  check digit...; see :mod:`._patterns`).

Structured values alone flag a column when most of them match; weak value shapes (a
5-digit number, an opaque id) need the column name too. Detectors register by name in
``DETECTORS`` and run in order; the first that fires labels the column.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from fedinfra.policy._reference import restricted_zip3
from fedinfra.policy.scan import _patterns as p

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_GLUED = {
    "firstname": ("first", "name"),
    "lastname": ("last", "name"),
    "fullname": ("full", "name"),
    "surname": ("surname",),
    "zipcode": ("zip", "code"),
    "postcode": ("postal", "code"),
    "postalcode": ("postal", "code"),
    "birthdate": ("birth", "date"),
    "dateofbirth": ("birth", "date"),
    "phonenumber": ("phone", "number"),
    "licenseplate": ("license", "plate"),
    "emailaddress": ("email", "address"),
    "ipaddress": ("ip", "address"),
    "accountnumber": ("account", "number"),
    "cardnumber": ("card", "number"),
    "dob": ("birth", "date"),
    "e-mail": ("email",),
}


def tokens(column: str) -> frozenset[str]:
    """Lower-case tokens of a column name: snake, kebab, camel case and glued words."""
    out: set[str] = set()
    for part in _SPLIT.split(_CAMEL.sub(" ", column)):
        low = part.lower()
        if not low:
            continue
        out.update(_GLUED.get(low, (low,)))
    return frozenset(out)


_HEAD = 200


@dataclass(frozen=True)
class Column:
    """One column as the detectors see it: its name, tokens and a sample of non-null values."""

    name: str
    tokens: frozenset[str]
    sample: list[str]
    distinct: set[str]
    non_null: int
    numeric: bool

    def share(self, pred: Callable[[str], bool]) -> float:
        """Share of sampled values for which ``pred`` holds."""
        if not self.sample:
            return 0.0
        head = self.sample[:_HEAD]
        share = sum(1 for v in head if pred(v)) / len(head)
        if share < 0.25 or len(self.sample) <= _HEAD:
            return share  # clearly below every threshold: the head decides (keeps scans fast)
        return sum(1 for v in self.sample if pred(v)) / len(self.sample)

    @property
    def distinct_ratio(self) -> float:
        """Distinct values / sampled values (identifiers are high-cardinality)."""
        return len(set(self.sample)) / len(self.sample) if self.sample else 0.0

    def named(self, *alternatives: tuple[str, ...], exclude: frozenset[str] = frozenset()) -> bool:
        """``True`` when all tokens of one alternative appear and no excluded token does."""
        if self.tokens & exclude:
            return False
        return any(self.tokens.issuperset(alt) for alt in alternatives)


@dataclass(frozen=True)
class Detection:
    """An identifier found in a column."""

    kind: str
    basis: str
    share: float


@dataclass(frozen=True)
class Detector:
    """A registered detector: identifier kind, Safe Harbor paragraph, function."""

    kind: str
    label: str
    citation: str
    fn: Callable[[Column], Detection | None]


DETECTORS: list[Detector] = []
STRONG = 0.6  # share of values that must match when the values alone decide
WEAK = 0.5  # share of values that must fit the shape when the name already matches
SH = "45 CFR 164.514(b)(2)(i)"


def detector(
    kind: str, label: str, para: str
) -> Callable[[Callable[[Column], Detection | None]], Callable[[Column], Detection | None]]:
    """Register the decorated function as the detector of identifier ``kind``."""

    def wrap(fn: Callable[[Column], Detection | None]) -> Callable[[Column], Detection | None]:
        DETECTORS.append(Detector(kind=kind, label=label, citation=f"{SH}({para})", fn=fn))
        return fn

    return wrap


def _decide(
    kind: str, col: Column, named: bool, pred: Callable[[str], bool], *, unique: float = 0.0
) -> Detection | None:
    share = col.share(pred)
    if named and share >= WEAK and col.distinct_ratio >= unique:
        return Detection(kind, "name+values", share)
    if share >= STRONG and col.distinct_ratio >= unique:
        return Detection(kind, "values", share)
    return None


def _text(v: str) -> bool:
    return any(ch.isalpha() for ch in v)


def _opaque_id(v: str) -> bool:
    return any(ch.isdigit() for ch in v) and len(v) >= 4 and " " not in v.strip()


_ID = frozenset({"id", "number", "no", "num", "nr", "key", "code"})


@detector("email", "email address", "F")
def _email(col: Column) -> Detection | None:
    return _decide("email", col, col.named(("email",), ("mail",)), p.EMAIL.match)  # type: ignore[arg-type]


@detector("url", "web URL", "N")
def _url(col: Column) -> Detection | None:
    return _decide("url", col, col.named(("url",), ("website",), ("homepage",)), p.URL.match)  # type: ignore[arg-type]


@detector("ip_address", "IP address", "O")
def _ip(col: Column) -> Detection | None:
    return _decide("ip_address", col, col.named(("ip",), ("ipv4",), ("ipv6",)), p.is_ip)


@detector("ssn", "social security number", "G")
def _ssn(col: Column) -> Detection | None:
    named = col.named(("ssn",), ("social", "security"), ("sin",), ("tin",))
    found = _decide("ssn", col, named, p.is_ssn)
    if found is None and named:
        found = _decide("ssn", col, True, p.is_ssn_digits)
    return found


@detector("card_number", "payment card number (Luhn)", "J")
def _card(col: Column) -> Detection | None:
    named = col.named(
        ("card",), ("pan",), ("cc", "number"), exclude=frozenset({"type", "brand", "product", "count", "limit"})
    )
    return _decide("card_number", col, named, p.is_card_number)


@detector("iban", "bank account number (IBAN mod-97)", "J")
def _iban(col: Column) -> Detection | None:
    return _decide("iban", col, col.named(("iban",)), p.is_iban)


@detector("imei", "device identifier (IMEI)", "M")
def _imei(col: Column) -> Detection | None:
    return _decide("imei", col, col.named(("imei",)), p.is_imei)


@detector("mac_address", "device identifier (MAC address)", "M")
def _mac(col: Column) -> Detection | None:
    return _decide("mac_address", col, col.named(("mac",)), p.MAC.match)  # type: ignore[arg-type]


@detector("vin", "vehicle identification number", "L")
def _vin(col: Column) -> Detection | None:
    named = col.named(("vin",), ("vehicle", "id"), ("vehicle", "number"))
    if named:
        return _decide("vin", col, True, lambda v: bool(p.VIN_CHARS.match(v.upper())))
    return _decide("vin", col, False, p.is_vin)


@detector("mbi", "health plan beneficiary number (Medicare MBI)", "I")
def _mbi(col: Column) -> Detection | None:
    return _decide("mbi", col, col.named(("mbi",)), lambda v: bool(p.MBI.match(v.replace("-", ""))))


@detector("phone", "telephone or fax number", "D/E")
def _phone(col: Column) -> Detection | None:
    named = col.named(("phone",), ("telephone",), ("tel",), ("mobile",), ("cell",), ("fax",), ("contact", "number"))
    return _decide("phone", col, named, p.is_phone)


@detector("date", "date more precise than the year", "C")
def _date(col: Column) -> Detection | None:
    named = col.named(
        ("date",),
        ("birth",),
        ("dob",),
        ("admission",),
        ("admitted",),
        ("discharge",),
        ("discharged",),
        ("death",),
        ("deceased",),
        ("visit", "on"),
        ("timestamp",),
        ("datetime",),
        ("time",),
        exclude=frozenset({"year", "yr", "code", "count", "days", "years", "months", "lag", "duration", "length"}),
    )
    found = _decide("date", col, named, p.is_date)
    if found is None and named:
        found = _decide("date", col, True, p.is_compact_date)
    return found


@detector("age_over_89", "age over 89", "C")
def _age(col: Column) -> Detection | None:
    if not col.named(
        ("age",),
        exclude=frozenset(
            {
                "group",
                "band",
                "range",
                "bucket",
                "category",
                "class",
                "bin",
                "account",
                "months",
                "days",
                "weeks",
                "tenure",
                "loan",
                "vehicle",
                "device",
            }
        ),
    ):
        return None
    numbers = [float(v) for v in col.distinct if p.is_number(v)]
    old = {v for v in col.sample if p.is_number(v) and float(v) > 89}
    if numbers and max(numbers) > 89:
        return Detection("age_over_89", "name+values", len([v for v in col.sample if v in old]) / len(col.sample))
    return None


@detector("zip_code", "ZIP code beyond 3 digits", "B")
def _zip(col: Column) -> Detection | None:
    named = col.named(("zip",), ("postal", "code"), ("zip5",), ("postal",), exclude=frozenset({"zip3"}))
    if named:
        return _decide("zip_code", col, True, p.ZIP5.match)  # type: ignore[arg-type]
    return _decide("zip_code", col, False, p.ZIP_PLUS4.match)  # type: ignore[arg-type]


@detector("restricted_zip3", "ZIP3 of an area of 20,000 people or fewer", "B")
def _zip3(col: Column) -> Detection | None:
    if not col.named(("zip3",), ("zip",), ("postal",)) or col.share(p.ZIP3.match) < WEAK:  # type: ignore[arg-type]
        return None
    _, restricted = restricted_zip3()
    hits = sum(1 for v in col.sample if v in restricted)
    if any(v in restricted for v in col.distinct):
        return Detection("restricted_zip3", "name+values", hits / len(col.sample))
    return None


@detector("geography", "geographic subdivision below state", "B")
def _geo(col: Column) -> Detection | None:
    if col.named(("latitude",), ("longitude",), ("lat",), ("lon",), ("lng",), ("geo",)):
        return _decide("geography", col, True, lambda v: p.is_number(v) and "." in v and len(v.split(".")[1]) >= 2)
    named = col.named(
        ("address",),
        ("street",),
        ("city",),
        ("town",),
        ("county",),
        ("precinct",),
        ("addr",),
        ("suburb",),
        ("village",),
        ("municipality",),
        ("neighborhood",),
        ("neighbourhood",),
        exclude=frozenset({"ip", "email", "mac", "web", "url", "state", "country"}),
    )
    found = _decide("geography", col, True, lambda v: _text(v) and "@" not in v) if named else None
    if found is None:
        found = _decide("geography", col, False, p.STREET.match)  # type: ignore[arg-type]
    return found


_NOT_A_PERSON = frozenset(
    {
        "drug",
        "test",
        "product",
        "brand",
        "branch",
        "hospital",
        "facility",
        "file",
        "lab",
        "plan",
        "medication",
        "company",
        "bank",
        "merchant",
        "procedure",
        "device",
        "model",
        "column",
        "field",
        "clinic",
        "ward",
        "department",
        "insurer",
        "payer",
        "employer",
        "campaign",
        "segment",
        "channel",
        "category",
        "study",
        "site",
        "unit",
        "org",
        "organisation",
        "organization",
        "vendor",
        "host",
        "domain",
        "diagnosis",
    }
)


@detector("name", "personal name", "A")
def _name(col: Column) -> Detection | None:
    named = col.named(("name",), ("surname",), ("maiden",), ("forename",), exclude=_NOT_A_PERSON)
    if named:
        return _decide("name", col, True, lambda v: _text(v) and not any(ch.isdigit() for ch in v), unique=0.2)
    return _decide("name", col, False, p.PERSON_NAME.match, unique=0.5)  # type: ignore[arg-type]


@detector("medical_record_number", "medical record number", "H")
def _mrn(col: Column) -> Detection | None:
    named = col.named(
        ("mrn",),
        ("medical", "record"),
        ("patient", "id"),
        ("patient", "number"),
        ("patient", "no"),
        ("chart", "number"),
        ("chart", "id"),
        ("record", "number"),
        ("hospital", "number"),
    )
    return _decide("medical_record_number", col, named, _opaque_id, unique=0.3) if named else None


@detector("health_plan_number", "health plan beneficiary number", "I")
def _plan(col: Column) -> Detection | None:
    named = col.named(
        ("member", "id"),
        ("member", "number"),
        ("beneficiary",),
        ("subscriber", "id"),
        ("insurance", "id"),
        ("insurance", "number"),
        ("policy", "number"),
        ("medicaid",),
        ("medicare", "id"),
        ("health", "plan", "id"),
    )
    return _decide("health_plan_number", col, named, _opaque_id, unique=0.3) if named else None


@detector("account_number", "account number", "J")
def _account(col: Column) -> Detection | None:
    named = col.named(
        ("account",),
        ("acct",),
        ("routing",),
        exclude=frozenset(
            {
                "type",
                "age",
                "tenure",
                "balance",
                "status",
                "count",
                "opened",
                "open",
                "months",
                "years",
                "kind",
                "category",
                "product",
                "class",
                "segment",
                "manager",
                "officer",
                "fee",
                "limit",
            }
        ),
    )
    return _decide("account_number", col, named, _opaque_id, unique=0.3) if named else None


@detector("licence_number", "certificate or licence number", "K")
def _licence(col: Column) -> Detection | None:
    named = col.named(
        ("license",),
        ("licence",),
        ("certificate",),
        ("passport",),
        ("dl", "number"),
        ("driver", "license"),
        exclude=frozenset({"type", "class", "status", "expiry", "expires", "state", "country", "plate", "valid"}),
    )
    return _decide("licence_number", col, named, _opaque_id, unique=0.3) if named else None


@detector("vehicle_plate", "licence plate", "L")
def _plate(col: Column) -> Detection | None:
    named = col.named(("plate",), ("license", "plate"), ("registration", "number"))
    return _decide("vehicle_plate", col, named, lambda v: _opaque_id(v.replace(" ", "")), unique=0.3) if named else None


@detector("device_serial", "device serial number", "M")
def _serial(col: Column) -> Detection | None:
    named = col.named(
        ("serial",), ("device", "id"), ("udi",), ("device", "number"), exclude=frozenset({"type", "model"})
    )
    return _decide("device_serial", col, named, _opaque_id, unique=0.3) if named else None


@detector("free_text", "free text holding identifiers", "R")
def _free_text(col: Column) -> Detection | None:
    if col.numeric or not col.sample:
        return None
    mean_words = sum(len(v.split()) for v in col.sample) / len(col.sample)
    if mean_words < 4:
        return None
    share = col.share(p.has_embedded_identifier)
    return Detection("free_text", "values", share) if share >= 0.02 else None


#: Tokens of columns that are quasi-identifiers: not identifiers alone, but linkable in
#: combination (Sweeney 2002: ZIP, birth date and sex identify 87% of the US population).
QUASI_TOKENS: tuple[tuple[str, ...], ...] = (
    ("age",),
    ("sex",),
    ("gender",),
    ("zip",),
    ("zip3",),
    ("postal",),
    ("race",),
    ("ethnicity",),
    ("marital",),
    ("birth",),
    ("yob",),
    ("occupation",),
    ("nationality",),
    ("county",),
    ("city",),
)
