"""Pure validators for identifier values (no state, no I/O).

Each function answers "is this one string an X?" with the check digit or structure the
issuing scheme defines, so random digit strings rarely pass:

* payment card numbers: the Luhn mod-10 check (ISO/IEC 7812-1 Annex B) plus issuer
  prefixes and lengths;
* IBAN: ISO 13616-1 mod-97 (the remainder of the rearranged number is 1);
* VIN: the North American check digit in position 9 (49 CFR 565.15);
* IMEI: 15 digits with a Luhn check digit (3GPP TS 23.003 section 6.2);
* SSN: the SSA's never-issued areas (000, 666, 900-999), groups 00 and serials 0000;
* Medicare Beneficiary Identifier: CMS's 11-character MBI format.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re

EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
EMAIL_IN = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
SSN_DASHED = re.compile(r"^(\d{3})-(\d{2})-(\d{4})$")
SSN_IN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
PHONE_NANP = re.compile(r"^(?:\+?1[\s.-]?)?(?:\([2-9]\d{2}\)\s?|[2-9]\d{2}[\s.-])[2-9]\d{2}[\s.-]\d{4}$")
PHONE_INTL = re.compile(r"^\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}$")
PHONE_IN = re.compile(r"(?:\(\d{3}\)\s?|\b\d{3}[.-])\d{3}[.-]\d{4}\b|\+\d{1,3}[\s.-]\d{2,4}[\s.-]\d{3,4}[\s.-]?\d{0,4}")
URL = re.compile(r"^(?:(?:https?|ftp)://|www\.)[^\s/$.?#].[^\s]*$", re.IGNORECASE)
URL_IN = re.compile(r"(?:https?|ftp)://\S+|www\.\S+\.\S+", re.IGNORECASE)
MAC = re.compile(r"^(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")
VIN_CHARS = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
MBI = re.compile(
    r"^[1-9][AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9]\d[AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9]\d[AC-HJKMNP-RT-Y]{2}\d{2}$"
)
IBAN_SHAPE = re.compile(r"^[A-Z]{2}\d{2}[A-Z0-9]{11,30}$")
ZIP5 = re.compile(r"^\d{5}(?:-\d{4})?$")
ZIP_PLUS4 = re.compile(r"^\d{5}-\d{4}$")
ZIP3 = re.compile(r"^\d{3}$")
STREET = re.compile(
    r"^\d{1,6}\s+(?:[A-Z][A-Za-z]*\.?\s+){1,4}"
    r"(?:St|Street|Ave|Avenue|Rd|Road|Blvd|Boulevard|Ln|Lane|Dr|Drive|Way|Ct|Court|Pl|Place|"
    r"Ter|Terrace|Pkwy|Parkway|Hwy|Highway|Cir|Circle|Straße|Strasse|Weg|Laan)\.?"
    r"(?:,?\s+(?:Apt|Suite|Unit)\.?\s*\w+)?$"
)
PERSON_NAME = re.compile(
    r"^(?:(?:Mr|Mrs|Ms|Dr|Prof)\.?\s+)?[A-Z][a-z'\u00e0-\u00ff-]+(?:\s+[A-Z]\.)?(?:\s+[A-Z][a-z'\u00e0-\u00ff-]+){1,3}$"
)
TITLE_NAME_IN = re.compile(r"\b(?:Mr|Mrs|Ms|Dr)\.?\s+[A-Z][a-z]+")
MRN_IN = re.compile(r"\bMRN\s*[:#]?\s*\d{4,}", re.IGNORECASE)
DATE_IN = re.compile(r"\b(?:\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{4})\b")
NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
INTEGER = re.compile(r"^[+-]?\d+$")

_MONTHS = {
    m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))
}
_TIME = r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
_YMD = re.compile(r"^(\d{4})[-/](\d{1,2})[-/](\d{1,2})" + _TIME + "$")
_MDY = re.compile(r"^(\d{1,2})([/.-])(\d{1,2})\2(\d{4})" + _TIME + "$")
_D_MON_Y = re.compile(r"^(\d{1,2})[- ]([A-Za-z]{3,9})\.?[- ,]+(\d{4})$")
_MON_D_Y = re.compile(r"^([A-Za-z]{3,9})\.? (\d{1,2}),? (\d{4})$")
_COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_YM = re.compile(r"^(\d{4})[-/](\d{1,2})$|^(\d{1,2})/(\d{4})$")


def _valid(y: int, m: int, d: int) -> bool:
    if not 1900 <= y <= 2099:
        return False
    try:
        dt.date(y, m, d)
    except ValueError:
        return False
    return True


def _month(name: str) -> int:
    return _MONTHS.get(name[:3].lower(), 0)


def luhn_ok(digits: str) -> bool:
    """Luhn mod-10 check (ISO/IEC 7812-1 Annex B) over a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _digits(value: str) -> str | None:
    stripped = value.replace(" ", "").replace("-", "")
    return stripped if stripped.isdigit() else None


def is_card_number(value: str) -> bool:
    """A payment card number: issuer prefix and length of a major scheme (ISO/IEC 7812), and Luhn."""
    d = _digits(value)
    if d is None or not 12 <= len(d) <= 19 or not luhn_ok(d):
        return False
    n, two, three, four = len(d), int(d[:2]), int(d[:3]), int(d[:4])
    if d[0] == "4":
        return n in (13, 16, 19)  # Visa
    if two in (34, 37):
        return n == 15  # American Express
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16  # Mastercard
    if d.startswith(("6011", "65")) or 644 <= three <= 649:
        return 16 <= n <= 19  # Discover
    if 3528 <= four <= 3589:
        return 16 <= n <= 19  # JCB (a 15-digit "35..." is an IMEI with a common TAC, not a card)
    if 300 <= three <= 305 or two in (36, 38, 39):
        return 14 <= n <= 19  # Diners Club
    return (two == 50 or 56 <= two <= 69) and 12 <= n <= 19  # Maestro


def gs1_ok(digits: str) -> bool:
    """GS1 mod-10 check digit (GTIN-8/12/13/14): a product code, not a person's number."""
    if not digits.isdigit() or len(digits) not in (8, 12, 13, 14):
        return False
    body, check = digits[:-1], int(digits[-1])
    total = sum(int(ch) * (3 if i % 2 == 0 else 1) for i, ch in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def is_imei(value: str) -> bool:
    """A 15-digit IMEI with its Luhn check digit that is not also a card number."""
    d = _digits(value)
    return d is not None and len(d) == 15 and luhn_ok(d) and not is_card_number(d)


def is_iban(value: str) -> bool:
    """An IBAN: country + check digits + BBAN, and the ISO 13616 mod-97 remainder is 1."""
    v = value.replace(" ", "").upper()
    if not IBAN_SHAPE.match(v):
        return False
    rearranged = v[4:] + v[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


_VIN_VALUES = {**{str(i): i for i in range(10)}, **dict(zip("ABCDEFGH", range(1, 9), strict=True))}
_VIN_VALUES |= dict(zip("JKLMN", range(1, 6), strict=True)) | {"P": 7, "R": 9}
_VIN_VALUES |= dict(zip("STUVWXYZ", range(2, 10), strict=True))
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def is_vin(value: str) -> bool:
    """A 17-character VIN whose position-9 check digit holds (49 CFR 565.15)."""
    v = value.upper()
    if not VIN_CHARS.match(v) or v.isdigit():
        return False
    total = sum(_VIN_VALUES[ch] * w for ch, w in zip(v, _VIN_WEIGHTS, strict=True)) % 11
    return v[8] == ("X" if total == 10 else str(total))


def is_ssn(value: str) -> bool:
    """A dashed SSN outside the never-issued ranges (SSA: area 000/666/9xx, group 00, serial 0000)."""
    m = SSN_DASHED.match(value)
    if not m:
        return False
    area, group, serial = m.groups()
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def is_ssn_digits(value: str) -> bool:
    """Nine digits that would be a valid SSN once dashed (used only with an SSN column name)."""
    return len(value) == 9 and value.isdigit() and is_ssn(f"{value[:3]}-{value[3:5]}-{value[5:]}")


def is_phone(value: str) -> bool:
    """A formatted telephone or fax number (NANP, or international with a ``+`` prefix)."""
    if PHONE_NANP.match(value):
        return True
    if PHONE_INTL.match(value):
        n = sum(ch.isdigit() for ch in value)
        return 8 <= n <= 15
    return False


def is_ip(value: str) -> bool:
    """An IPv4 or IPv6 address."""
    if "." not in value and ":" not in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_date(value: str) -> bool:
    """A calendar date more precise than the year, in a common written form (years 1900-2099)."""
    if len(value) < 8 or len(value) > 32:
        return False
    if m := _YMD.match(value):
        return _valid(int(m[1]), int(m[2]), int(m[3]))
    if m := _MDY.match(value):
        a, b, y = int(m[1]), int(m[3]), int(m[4])
        return _valid(y, a, b) or _valid(y, b, a)
    if m := _D_MON_Y.match(value):
        return _valid(int(m[3]), _month(m[2]), int(m[1]))
    if m := _MON_D_Y.match(value):
        return _valid(int(m[3]), _month(m[1]), int(m[2]))
    return False


def is_compact_date(value: str) -> bool:
    """``YYYYMMDD``, ``YYYY-MM`` or ``MM/YYYY`` (used only with a date-like column name)."""
    if m := _COMPACT.match(value):
        return _valid(int(m[1]), int(m[2]), int(m[3]))
    if m := _YM.match(value):
        y, mo = (int(m[1]), int(m[2])) if m[1] else (int(m[4]), int(m[3]))
        return _valid(y, mo, 1)
    return False


def is_number(value: str) -> bool:
    """A decimal number."""
    return bool(NUMBER.match(value))


def has_embedded_identifier(text: str) -> bool:
    """Free text that contains an email, phone, SSN, URL, full date, titled name or MRN."""
    return any(p.search(text) for p in (EMAIL_IN, SSN_IN, PHONE_IN, URL_IN, DATE_IN, TITLE_NAME_IN, MRN_IN))


# --- postal codes (GDPR Art. 4(1) "location data"; 45 CFR 164.514(b)(2)(i)(B)) --------------
#: UK postcode (Royal Mail PAF format: outward code, space optional, inward code).
POSTCODE_UK = re.compile(r"^(?:GIR ?0AA|[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2})$")
#: Netherlands: four digits (no leading zero) and two letters (PostNL).
POSTCODE_NL = re.compile(r"^[1-9]\d{3} ?[A-Z]{2}$")
#: Ireland: Eircode routing key and unique identifier (An Post, 2015).
POSTCODE_IE = re.compile(r"^(?:[AC-FHKNPRTV-Y]\d{2}|D6W) ?[0-9AC-FHKNPRTV-Y]{4}$")
#: Five digits: US ZIP, German, French, Italian and Spanish postcodes share this shape.
POSTCODE_5 = re.compile(r"^\d{5}$")

# --- vehicle plates of the jurisdictions in compliance/reference (45 CFR 164.514(b)(2)(i)(L)) --
PLATES = (
    re.compile(r"^[A-Z]{2}\d{2} ?[A-Z]{3}$"),  # GB (2001 scheme)
    re.compile(r"^[A-ZÄÖÜ]{1,3}[- ][A-Z]{1,2}[- ]?\d{1,4}[EH]?$"),  # DE
    re.compile(r"^[A-Z]{2}-\d{3}-[A-Z]{2}$"),  # FR (SIV, 2009)
    re.compile(r"^\d{1,4}-?[A-Z]{2,3}-?\d{2}$"),  # FR (FNI, before 2009)
    re.compile(r"^(?=.*\d)(?=.*[A-Z])[A-Z\d]{1,3}-[A-Z\d]{1,3}-[A-Z\d]{1,3}$"),  # NL side codes
    re.compile(r"^[A-Z]{2} ?\d{3} ?[A-Z]{2}$"),  # IT
    re.compile(r"^\d{4} ?[B-DF-HJ-NP-TV-Z]{3}$|^[A-Z]{1,2} ?\d{4} ?[A-Z]{1,2}$"),  # ES (2000 / provincial)
    re.compile(r"^\d{2,3}-[A-Z]{1,2}-\d{1,6}$"),  # IE
)
#: US states: 5-7 letters and digits, mixed, in one or two groups.
PLATE_US = re.compile(r"^(?=.*\d)(?=.*[A-Z])[A-Z\d]{1,4}[- ]?[A-Z\d]{1,4}$")


def is_plate(value: str) -> bool:
    """A licence plate in one of the formats above, 4 to 8 letters and digits long."""
    v = value.upper()
    n = sum(ch.isalnum() for ch in v)
    if not 4 <= n <= 8 or v != value:
        return False
    return any(p.match(v) for p in PLATES) or (n <= 7 and bool(PLATE_US.match(v)))


# --- photographs and biometrics (45 CFR 164.514(b)(2)(i)(P), (Q); GDPR Art. 4(14), 9(1)) ------
_MEDIA = re.compile(
    r"^(?:[\w.~-]*[/\\])*[\w .~()-]+\.(?:jpe?g|png|gif|bmp|tiff?|webp|heic|raw|dcm|dicom|nii(?:\.gz)?|"
    r"wsq|fmr|iso19794|wav|flac|mp4|mov|avi)$",
    re.IGNORECASE,
)


def is_media_reference(value: str) -> bool:
    """A file name or path of an image, scan, recording or biometric template."""
    return len(value) <= 260 and bool(_MEDIA.match(value))


# --- telephone numbers, leniently: the way people write them ----------------------------------
_PHONE_CHARS = re.compile(r"^\+?[\d\s().-]+$")
_EXTENSION = re.compile(r"\s*(?:x|ext\.?|#)\s*\d{1,6}$", re.IGNORECASE)


def is_phone_lenient(value: str) -> bool:
    """A written telephone number: 10-15 digits (8+ after a ``+``) with separators or a prefix.

    Digits with separators are ambiguous with dates, SSNs, ZIP+4 and IP addresses; those
    shapes are excluded here and have their own rules.
    """
    v = _EXTENSION.sub("", value.strip())
    if not _PHONE_CHARS.match(v) or SSN_DASHED.match(v) or ZIP_PLUS4.match(v) or is_date(v):
        return False
    digits = sum(ch.isdigit() for ch in v)
    if v.startswith(("+", "00")):
        return 8 <= digits <= 15
    separated = sum(ch in " ().-" for ch in v) >= 1
    return separated and 10 <= digits <= 13 and v.count(".") != 3


# --- dates at day precision in more written forms ----------------------------------------------
_MDY2 = re.compile(r"^(\d{1,2})([/.-])(\d{1,2})\2(\d{2})$")
_MON_D_Y_LONG = re.compile(r"^([A-Za-z]{3,9})\.? (\d{1,2})(?:st|nd|rd|th)?,? (\d{4})$")


def is_day_date(value: str) -> bool:
    """A date more precise than the year: :func:`is_date`, ``YYYYMMDD`` or a 2-digit-year form."""
    if is_date(value):
        return True
    if m := _COMPACT.match(value):
        return _valid(int(m[1]), int(m[2]), int(m[3]))
    if m := _MDY2.match(value):
        a, b = int(m[1]), int(m[3])
        return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)
    if m := _MON_D_Y_LONG.match(value):
        return _valid(int(m[3]), _month(m[1]), int(m[2]))
    return False


# --- street addresses (45 CFR 164.514(b)(2)(i)(B): "street address") ----------------------------
#: Street suffixes: USPS Publication 28 Appendix C1 (common subset) and UK usage.
_STREET_WORDS = frozenset(
    [
        "alley",
        "allee",
        "aly",
        "anex",
        "arcade",
        "ave",
        "avenue",
        "bayou",
        "bch",
        "beach",
        "bend",
        "bluff",
        "bluffs",
        "blvd",
        "bottom",
        "boulevard",
        "branch",
        "bridge",
        "brook",
        "brooks",
        "burg",
        "burgs",
        "bypass",
        "camp",
        "canyon",
        "cape",
        "causeway",
        "center",
        "centers",
        "cir",
        "circle",
        "circles",
        "cliff",
        "cliffs",
        "club",
        "common",
        "commons",
        "corner",
        "corners",
        "course",
        "court",
        "courts",
        "cove",
        "coves",
        "creek",
        "crescent",
        "crest",
        "crossing",
        "crossroad",
        "curve",
        "dale",
        "dam",
        "divide",
        "dr",
        "drive",
        "drives",
        "estate",
        "estates",
        "expressway",
        "extension",
        "extensions",
        "falls",
        "ferry",
        "field",
        "fields",
        "flat",
        "flats",
        "ford",
        "fords",
        "forest",
        "forge",
        "forges",
        "fork",
        "forks",
        "fort",
        "freeway",
        "garden",
        "gardens",
        "gateway",
        "glen",
        "glens",
        "green",
        "greens",
        "grove",
        "groves",
        "harbor",
        "harbors",
        "haven",
        "heights",
        "highway",
        "hill",
        "hills",
        "hollow",
        "inlet",
        "island",
        "islands",
        "isle",
        "junction",
        "junctions",
        "key",
        "keys",
        "knoll",
        "knolls",
        "lake",
        "lakes",
        "landing",
        "lane",
        "ln",
        "light",
        "lights",
        "loaf",
        "lock",
        "locks",
        "lodge",
        "loop",
        "mall",
        "manor",
        "manors",
        "meadow",
        "meadows",
        "mews",
        "mill",
        "mills",
        "mission",
        "motorway",
        "mount",
        "mountain",
        "mountains",
        "neck",
        "orchard",
        "oval",
        "overpass",
        "park",
        "parks",
        "parkway",
        "parkways",
        "pass",
        "passage",
        "path",
        "pike",
        "pine",
        "pines",
        "pkwy",
        "place",
        "pl",
        "plain",
        "plains",
        "plaza",
        "point",
        "points",
        "port",
        "ports",
        "prairie",
        "radial",
        "ramp",
        "ranch",
        "rapid",
        "rapids",
        "rd",
        "rest",
        "ridge",
        "ridges",
        "river",
        "road",
        "roads",
        "route",
        "row",
        "rue",
        "run",
        "shoal",
        "shoals",
        "shore",
        "shores",
        "skyway",
        "spring",
        "springs",
        "spur",
        "spurs",
        "square",
        "squares",
        "st",
        "station",
        "stravenue",
        "stream",
        "street",
        "streets",
        "summit",
        "ter",
        "terrace",
        "throughway",
        "trace",
        "track",
        "trafficway",
        "trail",
        "trailer",
        "tunnel",
        "turnpike",
        "underpass",
        "union",
        "unions",
        "valley",
        "valleys",
        "viaduct",
        "view",
        "views",
        "village",
        "villages",
        "ville",
        "vista",
        "walk",
        "walks",
        "wall",
        "way",
        "ways",
        "well",
        "wells",
        "close",
        "gate",
        "wynd",
    ]
)
#: Words that open an address in European forms ("rue ...", "Via ...", "Flat 4, ...").
_STREET_LEADERS = (
    "rue",
    "avenue",
    "boulevard",
    "chemin",
    "place",
    "impasse",
    "allée",
    "quai",
    "route",
    "via",
    "viale",
    "piazza",
    "piazzale",
    "strada",
    "borgo",
    "vicolo",
    "corso",
    "largo",
    "contrada",
    "rotonda",
    "incrocio",
    "canale",
    "stretto",
    "calle",
    "avenida",
    "paseo",
    "plaza",
    "camino",
    "ronda",
    "cañada",
    "callejón",
    "acceso",
    "urbanización",
    "pasaje",
    "vía",
    "glorieta",
    "alameda",
    "carrera",
    "cuesta",
    "travesía",
    "rambla",
    "flat",
    "studio",
    "apartment",
    "suite",
    "unit",
    "c/",
    "c\\.",
    "avda\\.",
    "pl\\.",
    "pza\\.",
)
_STREET_A = re.compile(r"^\d{1,6}[A-Za-z]?,?\s+(?:[^\s,]+\s+){0,4}?([A-Za-z]+)\.?(?:[\s,]|$)")
_STREET_B = re.compile(
    r"^(?:\d{1,6},?\s+)?(?:" + "|".join(_STREET_LEADERS) + r")(?:\b|(?<=[./]))\.?\s*\S", re.IGNORECASE
)
_STREET_C = re.compile(
    r"\b\w*(?:straße|strasse|str\.|weg|platz|allee|ring|gasse|damm|ufer|straat|laan|plein|gracht|singel|hof|"
    r"baan|kade|dijk|steeg|markt)\s+\d{1,5}\b",
    re.IGNORECASE,
)


def is_street_address(value: str) -> bool:
    """A street address: number + street suffix (US/UK), a European opening word, or DE/NL form."""
    if len(value) > 160 or not any(ch.isalpha() for ch in value):
        return False
    if _STREET_B.match(value) or _STREET_C.search(value):
        return True
    if m := _STREET_A.match(value):
        words = re.findall(r"[A-Za-z]+", value.split(",")[0])
        return any(w.lower() in _STREET_WORDS for w in words[:7]) or m[1].lower() in _STREET_WORDS
    return False
