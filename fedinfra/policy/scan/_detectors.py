"""Detectors for the HIPAA Safe Harbor identifiers that tabular data can hold.

45 CFR 164.514(b)(2)(i) lists 18 identifiers (A)-(R) that must be removed for data to be
de-identified under Safe Harbor; GDPR Art. 4(1) adds location data and online identifiers.
Photographs and biometrics (P, Q) appear in tables as references to image, scan or
template files. A detector judges a column **by its values**, as a reviewer who was handed
the column without its header would:

* the structural check of each scheme (Luhn, mod-97, VIN check digit, postcode and plate
  formats; see :mod:`._patterns`), or the statistical shape of the column (ages: whole
  numbers in a human lifespan; record numbers: near-unique, one fixed pattern, not a
  measurement), or a shipped public list (census names, :mod:`._names`; GeoNames places
  and US counties, :mod:`._places`);
* the column *name*, split into tokens (``PatientDOB`` -> ``patient``, ``dob``), only
  adjusts the confidence: a matching name raises it (and lets a looser value shape
  count), a measurement name ("amount", "price") lowers the confidence of weak value
  rules. Strong value evidence flags a column whatever it is called.

Every detector runs; the finding with the highest confidence (ties: registration order)
labels the column when it reaches :data:`THRESHOLD`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from fedinfra.policy._reference import restricted_zip3
from fedinfra.policy.scan import _names, _places
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


class Column:
    """One column as the detectors see it: name tokens, a spread sample and all non-null values."""

    def __init__(self, *, name: str, sample: list[str], values: Sequence[str], numeric: bool) -> None:
        self.name = name
        self.tokens = tokens(name)
        self.sample = sample
        self.values = values
        self.non_null = len(values)
        self.numeric = numeric

    def share(self, pred: Callable[[str], bool]) -> float:
        """Share of sampled values for which ``pred`` holds."""
        if not self.sample:
            return 0.0
        head = self.sample[:_HEAD]
        share = sum(1 for v in head if pred(v)) / len(head)
        if share < 0.25 or len(self.sample) <= _HEAD:
            return share  # clearly below every threshold: the head decides (keeps scans fast)
        return sum(1 for v in self.sample if pred(v)) / len(self.sample)

    @cached_property
    def distinct(self) -> set[str]:
        """Distinct values over the whole column."""
        return set(self.values)

    @cached_property
    def distinct_ratio(self) -> float:
        """Distinct values / sampled values (identifiers are high-cardinality)."""
        return len(set(self.sample)) / len(self.sample) if self.sample else 0.0

    @cached_property
    def numbers(self) -> list[float] | None:
        """The sample as numbers, or ``None`` when a value is not a decimal number."""
        if not self.numeric:
            return None
        return [float(v) for v in self.sample]

    def named(self, *alternatives: tuple[str, ...], exclude: frozenset[str] = frozenset()) -> bool:
        """``True`` when all tokens of one alternative appear and no excluded token does."""
        if self.tokens & exclude:
            return False
        return any(self.tokens.issuperset(alt) for alt in alternatives)

    @cached_property
    def measurement_name(self) -> bool:
        """The name says the column is a quantity (lowers the confidence of weak value rules)."""
        return bool(self.tokens & _MEASURES)


_MEASURES = frozenset(
    {
        "amount",
        "price",
        "cost",
        "income",
        "salary",
        "total",
        "sum",
        "count",
        "qty",
        "quantity",
        "balance",
        "weight",
        "height",
        "bmi",
        "rate",
        "pulse",
        "bpm",
        "hr",
        "pressure",
        "systolic",
        "diastolic",
        "glucose",
        "score",
        "pct",
        "percent",
        "usd",
        "eur",
        "gbp",
        "revenue",
        "volume",
        "duration",
        "minutes",
        "seconds",
    }
)


@dataclass(frozen=True)
class Detection:
    """An identifier found in a column: kind, evidence basis, matched share, confidence and rule."""

    kind: str
    basis: str
    share: float
    confidence: float = 1.0
    rule: str = ""


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
THRESHOLD = 0.5  # confidence at which a column is flagged
LOOSE = 0.75  # strength of a loose value shape that counts only with a matching column name
SH = "45 CFR 164.514(b)(2)(i)"


def detector(
    kind: str, label: str, para: str
) -> Callable[[Callable[[Column], Detection | None]], Callable[[Column], Detection | None]]:
    """Register the decorated function as the detector of identifier ``kind``."""

    def wrap(fn: Callable[[Column], Detection | None]) -> Callable[[Column], Detection | None]:
        DETECTORS.append(Detector(kind=kind, label=label, citation=f"{SH}({para})", fn=fn))
        return fn

    return wrap


def confidence(share: float, *, strength: float, named: bool, measurement: bool = False) -> float:
    """Confidence that a column holds an identifier, from value evidence and the name hint.

    ``share`` of sampled values satisfy a rule of ``strength`` (1.0 for check digits, less
    for shapes that other data can take). A matching name adds 0.25 once half the values
    fit; a measurement name takes 0.35 off rules weaker than 0.9 (strong rules ignore it).
    """
    conf = share * strength
    if named and share >= WEAK:
        conf += 0.25
    if measurement and strength < 0.9:
        conf -= 0.35
    return max(0.0, min(1.0, conf))


def _decide(
    kind: str,
    col: Column,
    named: bool,
    pred: Callable[[str], bool],
    *,
    unique: float = 0.0,
    strength: float = 1.0,
    rule: str = "",
) -> Detection | None:
    share = col.share(pred)
    if share == 0.0 or col.distinct_ratio < unique:
        return None
    conf = confidence(share, strength=strength, named=named, measurement=col.measurement_name)
    if conf < THRESHOLD:
        return None
    basis = "name+values" if named and share >= WEAK else "values"
    return Detection(kind, basis, share, round(conf, 3), rule or kind)


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
        found = _decide("ssn", col, True, p.is_ssn_digits, strength=LOOSE)
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
        return _decide("vin", col, True, lambda v: bool(p.VIN_CHARS.match(v.upper())), strength=LOOSE)
    return _decide("vin", col, False, p.is_vin)


@detector("mbi", "health plan beneficiary number (Medicare MBI)", "I")
def _mbi(col: Column) -> Detection | None:
    return _decide("mbi", col, col.named(("mbi",)), lambda v: bool(p.MBI.match(v.replace("-", ""))))


@detector("phone", "telephone or fax number", "D/E")
def _phone(col: Column) -> Detection | None:
    named = col.named(("phone",), ("telephone",), ("tel",), ("mobile",), ("cell",), ("fax",), ("contact", "number"))
    written = _decide("phone", col, named, _written_phone, strength=0.95)
    if written is not None:
        return written
    # People type numbers both ways in one column ("+39 0574 361468", "3534515522"): when a
    # good share is written as a phone, bare 9-12 digit strings beside it are phones too.
    if col.share(_written_phone) >= 0.3:
        return _decide("phone", col, named, _phone_or_bare, strength=0.9, rule="phone, mixed formats")
    return None


def _written_phone(v: str) -> bool:
    return p.is_phone(v) or p.is_phone_lenient(v)


def _phone_or_bare(v: str) -> bool:
    return _written_phone(v) or (v.isdigit() and 9 <= len(v) <= 12)


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
    found = _decide("date", col, named, p.is_day_date, strength=0.95)
    if found is None and named:
        found = _decide("date", col, True, p.is_compact_date, strength=LOOSE)
    return found


_AGE_EXCLUDE = frozenset(
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
)
OLDEST = 89  # Safe Harbor: "all ages over 89" are identifiers, 164.514(b)(2)(i)(C)
LIFESPAN = 105  # ages above this are rare enough that many of them mean "not an age"


def looks_like_ages(col: Column) -> bool:
    """Whole numbers within a human lifespan, spread like ages (many values, a wide range)."""
    nums = col.numbers
    if not nums or not all(x.is_integer() for x in nums):
        return False
    lo, hi = min(nums), max(nums)
    if lo < 0 or hi > 120 or hi < 50 or hi - lo < 25 or len(set(nums)) < 12:
        return False
    mode = max(nums.count(x) for x in set(nums))
    return mode <= 0.15 * len(nums)  # ages spread out; a spike (zeros, a default) is a measurement


def _whole_column(col: Column) -> list[float]:
    try:
        return [float(v) for v in col.values]
    except ValueError:
        return []


@detector("age_over_89", "age over 89", "C")
def _age(col: Column) -> Detection | None:
    named = col.named(("age",), exclude=_AGE_EXCLUDE)
    if not named and not looks_like_ages(col):
        return None
    values = _whole_column(col) if col.numeric else []
    if not values:
        return None
    old = sum(1 for v in values if v > OLDEST)
    if old == 0:
        return None
    share = old / len(values)
    if named:
        return Detection("age_over_89", "name+values", share, 1.0, "age > 89")
    beyond = sum(1 for v in values if v > LIFESPAN)
    if beyond > max(1, len(values) // 1000) or share > 0.4:
        return None  # more values past a human lifespan than ages have: a measurement
    return Detection("age_over_89", "values", share, 0.9, "age-shaped column with values > 89")


def _dense_integers(col: Column) -> bool:
    """Distinct integers packed into their range: a row index or counter, not codes."""
    try:
        ints = {int(v) for v in col.distinct}
    except ValueError:
        return False
    return len(ints) > 1 and len(ints) / (max(ints) - min(ints) + 1) > 0.5


@detector("zip_code", "ZIP or 5-digit postal code beyond 3 digits", "B")
def _zip(col: Column) -> Detection | None:
    named = col.named(
        ("zip",), ("postal", "code"), ("zip5",), ("postal",), ("postcode",), ("plz",), exclude=frozenset({"zip3"})
    )
    plus4 = _decide("zip_code", col, named, p.ZIP_PLUS4.match, rule="ZIP+4")  # type: ignore[arg-type]
    if plus4 is not None:
        return plus4
    five = col.share(p.ZIP5.match)  # type: ignore[arg-type]
    if five < WEAK or (not named and five < 0.9) or _dense_integers(col):
        return None
    leading_zero = any(v[0] == "0" for v in col.sample)
    strength = 0.95 if leading_zero else 0.75
    conf = confidence(five, strength=strength, named=named, measurement=col.measurement_name)
    if conf < THRESHOLD:
        return None
    rule = "5-digit postal code" + (" with leading zeros" if leading_zero else "")
    return Detection("zip_code", "name+values" if named else "values", five, round(conf, 3), rule)


def _upper_match(rx: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda v: bool(rx.match(v.upper()))


@detector("postal_code", "postal code (UK, NL, IE formats)", "B")
def _postal(col: Column) -> Detection | None:
    named = col.named(("postal",), ("postcode",), ("eircode",), ("zip",))
    best: Detection | None = None
    for rule, rx in (("UK postcode", p.POSTCODE_UK), ("NL postcode", p.POSTCODE_NL), ("IE Eircode", p.POSTCODE_IE)):
        found = _decide("postal_code", col, named, _upper_match(rx), rule=rule)
        if found is not None and (best is None or found.confidence > best.confidence):
            best = found
    return best


@detector("restricted_zip3", "ZIP3 of an area of 20,000 people or fewer", "B")
def _zip3(col: Column) -> Detection | None:
    if not col.named(("zip3",), ("zip",), ("postal",)) or col.share(p.ZIP3.match) < WEAK:  # type: ignore[arg-type]
        return None
    _, restricted = restricted_zip3()
    hits = sum(1 for v in col.sample if v in restricted)
    if any(v in restricted for v in col.distinct):
        return Detection("restricted_zip3", "name+values", hits / len(col.sample), 1.0, "restricted ZIP3 list")
    return None


#: Names saying the place belongs to a thing (a branch, a plant), not to a person.
_PLACE_OF_A_THING = frozenset(
    {
        "site",
        "branch",
        "store",
        "shop",
        "office",
        "hospital",
        "clinic",
        "facility",
        "plant",
        "factory",
        "warehouse",
        "depot",
        "airport",
        "station",
        "team",
        "club",
        "vendor",
        "supplier",
        "manufacturer",
        "headquarters",
        "hq",
        "venue",
        "event",
        "conference",
    }
)
PLACE_SHARE = 0.6  # share of values (and of distinct values) that must be known places
PLACE_CLEAR = 0.25  # share that must be places which are not also census names
PLACE_DISTINCT = 3  # distinct clear places a column needs (a category with one "Orange" is not it)


@detector("city", "city, town or county name", "B")
def _place(col: Column) -> Detection | None:
    """Cities, towns and counties by the shipped GeoNames/Census list (164.514(b)(2)(i)(B)).

    Most values, and most distinct values, must be known places, and at least
    :data:`PLACE_CLEAR` of them places that are not also census names: a column of US
    surnames is 70% town names ("Houston", "Jackson") but almost none of them is *only* a
    town. A matching name adds 0.25; a name saying the place is a thing's (a branch, a plant)
    takes 0.4 off.
    """
    if col.numeric:
        return None
    named = col.named(
        ("city",),
        ("town",),
        ("county",),
        ("municipality",),
        ("village",),
        ("hometown",),
        ("birthplace",),
        ("residence",),
        ("locality",),
        ("place", "of", "birth"),
        ("ort",),
        ("ville",),
        ("commune",),
        ("comune",),
        ("ciudad",),
        ("gemeente",),
        ("woonplaats",),
        exclude=frozenset({"state", "country", "code", "id"}),
    )
    needed = WEAK if named else PLACE_SHARE
    share = col.share(_places.is_place)
    if share < needed:
        return None
    distinct = set(col.sample)
    places = [v for v in distinct if _places.is_place(v)]
    clear = sum(1 for v in places if not _places.is_name_too(v))
    if len(places) < needed * len(distinct) or clear < PLACE_DISTINCT:
        return None
    clear_share = col.share(_places.is_clear_place)
    if clear_share < PLACE_CLEAR:
        return None
    conf = min(1.0, 0.9 * share + 0.3 * clear_share) + (0.25 if named else 0.0)
    if col.tokens & _PLACE_OF_A_THING:
        conf -= 0.4
    conf = max(0.0, min(1.0, conf))
    if conf < THRESHOLD:
        return None
    rule = "place names (GeoNames cities, US counties)"
    return Detection("city", "name+values" if named else "values", share, round(conf, 3), rule)


@detector("geography", "geographic subdivision below state", "B")
def _geo(col: Column) -> Detection | None:
    if col.named(("latitude",), ("longitude",), ("lat",), ("lon",), ("lng",), ("geo",)):
        return _decide(
            "geography", col, True, lambda v: p.is_number(v) and "." in v and len(v.split(".")[1]) >= 2, strength=LOOSE
        )
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
    loose = _decide("geography", col, True, lambda v: _text(v) and "@" not in v, strength=LOOSE) if named else None
    found = _decide("geography", col, named, p.is_street_address, strength=0.9, rule="street address")
    return max((d for d in (loose, found) if d is not None), key=lambda d: d.confidence, default=None)


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
        return _decide(
            "name", col, True, lambda v: _text(v) and not any(ch.isdigit() for ch in v), unique=0.2, strength=LOOSE
        )
    if col.numeric or col.share(_places.is_region) >= 0.3:
        return None  # countries and states ("Jordan", "Georgia", "Chad") are census names too
    found = _decide("name", col, False, _names.is_person_name, unique=0.3, strength=0.9, rule="census name list")
    if found is not None or (col.distinct_ratio < 0.6 and len(set(col.sample)) < 300):
        return found  # closed vocabularies (countries, colours) repeat; names keep coming
    shaped = col.share(_names.is_name_shaped)
    known = col.share(_names.is_person_name)
    if shaped >= 0.8 and known >= 0.1:
        return Detection("name", "values", shaped, 0.8, "capitalised name-shaped words, some census names")
    return None


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
    return _decide("medical_record_number", col, named, _opaque_id, unique=0.3, strength=LOOSE) if named else None


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
    return _decide("health_plan_number", col, named, _opaque_id, unique=0.3, strength=LOOSE) if named else None


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
    return _decide("account_number", col, named, _opaque_id, unique=0.3, strength=LOOSE) if named else None


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
    return _decide("licence_number", col, named, _opaque_id, unique=0.3, strength=LOOSE) if named else None


@detector("vehicle_plate", "licence plate", "L")
def _plate(col: Column) -> Detection | None:
    named = col.named(("plate",), ("license", "plate"), ("registration", "number"))
    if named:
        loose = _decide(
            "vehicle_plate", col, True, lambda v: _opaque_id(v.replace(" ", "")), unique=0.3, strength=LOOSE
        )
        if loose is not None:
            return loose
    letters = {"".join(ch for ch in v if ch.isalpha()) for v in col.sample}
    if not named and len(letters) < 0.3 * len(col.sample):
        return None  # one letter prefix on every value ("BR-430"): an internal code family, not plates
    return _decide("vehicle_plate", col, named, p.is_plate, unique=0.5, strength=0.9, rule="plate formats")


@detector("device_serial", "device serial number", "M")
def _serial(col: Column) -> Detection | None:
    named = col.named(
        ("serial",), ("device", "id"), ("udi",), ("device", "number"), exclude=frozenset({"type", "model"})
    )
    return _decide("device_serial", col, named, _opaque_id, unique=0.3, strength=LOOSE) if named else None


_SHAPE = str.maketrans("0123456789" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz", "9" * 10 + "A" * 52)


def _id_shaped(v: str) -> bool:
    return 6 <= len(v) <= 32 and any(ch.isdigit() for ch in v) and not any(ch.isspace() or ch in ".,:/@" for ch in v)


#: Names of things that get one number each (a specimen, a transaction): a near-unique
#: number under such a name is the thing's, not a person's. Group nouns ("lot", "batch",
#: "run", "product") are not here: many rows share one lot, so a near-unique column under
#: such a name contradicts its own name, and the values decide (a lot code stamped with its
#: year and month is still recognised by its values, below).
_OBJECT_IDS = frozenset(
    {
        "barcode",
        "sample",
        "specimen",
        "txn",
        "transaction",
        "order",
        "invoice",
        "ticket",
        "shipment",
        "tracking",
    }
)
_YEAR_MONTH = re.compile(r"(?:^|\D)(19[89]\d|20[0-4]\d)(0[1-9]|1[0-2])?")


_HEX_TAIL = re.compile(r"^(?:[A-Za-z]{1,4}[-_])?(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{6,}$")


def _random_hex(v: str) -> bool:
    return bool(_HEX_TAIL.match(v))


def _date_stamped(v: str) -> bool:
    m = _YEAR_MONTH.search(v)
    return m is not None and (m.start(1) <= 1) and (m[2] is not None or not v.isdigit())


@detector("record_number", "record, account, certificate, licence or serial number", "H)-(K), (M")
def _record(col: Column) -> Detection | None:
    """Near-unique values of one fixed pattern that are not measurements (164.514(b)(2)(i)(H)-(K), (M)).

    Value shape cannot tell a chart number from an account or a device serial; the kind is
    the generic ``record_number`` and a matching column name picks the paragraph's own kind.
    """
    share = col.share(_id_shaped)
    if share < 0.9 or col.distinct_ratio < 0.9:
        return None
    shapes: dict[str, int] = {}
    for v in col.sample:
        key = v.translate(_SHAPE)
        shapes[key] = shapes.get(key, 0) + 1
    coarse: dict[tuple[int, str], int] = {}
    for v in col.sample:
        key2 = (len(v), "".join(ch for ch in v if not ch.isalnum()))
        coarse[key2] = coarse.get(key2, 0) + 1
    fixed = max(max(shapes.values()), max(coarse.values())) / len(col.sample)
    if fixed < 0.8:
        return None
    if all(v.isdigit() for v in col.sample[:_HEAD]) and (_dense_integers(col) or col.share(p.gs1_ok) >= 0.9):
        return None  # a row counter, or GS1 product codes (GTIN check digit), not a person's number
    if col.share(_random_hex) >= 0.9:
        return None  # a random pseudonym: a re-identification code 164.514(c) allows
    if col.share(_date_stamped) >= 0.95:
        return None  # a batch, lot or run code stamped with its year and month
    conf = confidence(min(share, fixed), strength=0.85, named=False, measurement=col.measurement_name)
    if col.tokens & _OBJECT_IDS:
        conf -= 0.4  # the name says the number belongs to a thing (a sample, a transaction)
    if conf < THRESHOLD:
        return None
    return Detection("record_number", "values", min(share, fixed), round(conf, 3), "near-unique fixed-pattern id")


@detector("photo_reference", "photograph, image or biometric file reference", "P)/(Q")
def _media(col: Column) -> Detection | None:
    named = col.named(("photo",), ("image",), ("picture",), ("scan",), ("fingerprint",), ("biometric",), ("face",))
    return _decide("photo_reference", col, named, p.is_media_reference, strength=0.95, rule="image/biometric file")


def _has_identifier(text: str) -> bool:
    return p.has_embedded_identifier(text) or _names.text_has_name(text) or _places.text_has_place(text)


@detector("free_text", "free text holding identifiers", "R")
def _free_text(col: Column) -> Detection | None:
    if col.numeric or not col.sample:
        return None
    words = [w for v in col.sample for w in v.split()]
    if len(words) < 4 * len(col.sample):
        return None
    if sum(1 for w in words if w[:1].islower()) < 0.3 * len(words):
        return None  # capitalised word lists (addresses, titles) are not running text
    share = sum(1 for v in col.sample if _has_identifier(v)) / len(col.sample)
    if share < 0.02:
        return None
    return Detection("free_text", "values", share, round(min(1.0, 0.6 + share), 3), "names and identifiers in text")


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

#: Identifier kinds that are also quasi-identifiers (HIPAA Expert Determination guidance
#: 2012, section 2.2: dates, ZIP codes and ages are the classic linkable fields).
QUASI_KINDS = frozenset({"age_over_89", "zip_code", "postal_code", "restricted_zip3", "date", "city"})
_SEX_VALUES = frozenset({"m", "f", "male", "female", "u", "x", "unknown", "other", "w", "d", "man", "woman"})


def quasi_by_values(col: Column) -> bool:
    """A quasi-identifier judged by values: sex codes, ages, 5-digit postcodes or dates.

    Sweeney (2002) found ZIP, birth date and sex single out 87% of the US population; the
    column name is not needed to see that a column holds one of them.
    """
    sample = col.sample
    if not sample:
        return False
    distinct = {v.lower() for v in sample[:_HEAD]}
    if 2 <= len(distinct) <= 4 and distinct <= _SEX_VALUES:
        return True
    if looks_like_ages(col):
        return True
    if col.share(p.ZIP5.match) >= 0.9 and not _dense_integers(col):  # type: ignore[arg-type]
        return True
    return col.share(p.is_day_date) >= STRONG
