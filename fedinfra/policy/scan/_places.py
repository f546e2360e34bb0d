"""Cities, towns and counties, in a column or inside free text (45 CFR 164.514(b)(2)(i)(B)).

Safe Harbor removes "all geographic subdivisions smaller than a State, including street
address, city, county, precinct ..."; GDPR Art. 4(1) counts location data as an identifier.
A city has no check digit or fixed shape, so the rule is a list: the GeoNames places shipped
as ``compliance/reference/places-geonames.txt`` (CC BY 4.0; every place >= 15,000 people
worldwide, >= 1,000 in Europe, the US, Canada, Australia and New Zealand) and the US county
names (Census FIPS list, public domain). Countries and US states are not in it: they are not
subdivisions below a state.

A list alone is not enough. Many surnames are towns ("Houston", "Jackson", "Florence"):
80% of a column of US surnames are some place's name. So a value that is also a census
given name or surname (:mod:`._names`) counts only as *ambiguous* place evidence, and a
column is a place column only when, besides most values being places, a good share are
places that are not names.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from fedinfra.policy.scan import _names

_FILE = "places-geonames.txt"
_PUNCT = re.compile(r"[-'’./_()]")
_ABBREV = {"saint": "st", "sainte": "ste", "sankt": "st"}


def normalise(value: str) -> str:
    """Lower case, accents removed, ``ß`` -> ``ss``, punctuation -> space, ``Saint``/``St.`` alike.

    The shipped list was written through this function, so a lookup matches "St. Louis",
    "Saint Louis", "SAINT-LOUIS" and "Saint-Louis" alike.
    """
    low = unicodedata.normalize("NFKD", value.lower().replace("ß", "ss"))
    bare = "".join(ch for ch in low if not unicodedata.combining(ch))
    words = _PUNCT.sub(" ", bare).split()
    return " ".join(_ABBREV.get(w, w) for w in words)


def place_lists() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """``(cities, counties, bare_counties)``: normalised names from the shipped list.

    ``bare_counties`` are county names without their suffix ("cook" for "Cook County").
    """
    return _lists()[:3]


def regions() -> frozenset[str]:
    """Normalised names of countries and US states (not places below state level)."""
    return _lists()[3]


@lru_cache(maxsize=1)
def _lists() -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    sections = _names.reference_sections(_FILE, ("city", "county", "region"))
    counties = sections["county"]
    bare = {_COUNTY_SUFFIX.sub("", c) for c in counties}
    return (
        frozenset(sections["city"]),
        frozenset(counties),
        frozenset(b for b in bare if b),
        frozenset(sections["region"]),
    )


_COUNTY_SUFFIX = re.compile(r" (?:county|parish|borough|census area|city and borough|municipality|municipio)$")
_COUNTY_WORD = re.compile(r"^(?:county|co) ")  # "County Cork", "Co. Kerry" (Ireland)
_TAIL = re.compile(r"^(?P<head>[^,(]+?)\s*(?:,\s*[A-Za-z .]{2,30}|\(\s*[\w .]{1,30}\))$")


def _lookup(key: str) -> bool:
    cities, counties, bare = place_lists()
    if key in cities or key in counties:
        return True
    if key.endswith(" co"):  # "Cook Co."
        return key[:-3] + " county" in counties
    m = _COUNTY_WORD.match(key)
    if m is not None:
        rest = key[m.end() :]
        return rest in cities or rest in bare
    return False


def is_place(value: str) -> bool:
    """The value names a city, town or county, alone or with a state/country after a comma.

    "Springfield", "Springfield, IL", "Lyon (Rhône)", "Cook County", "Co. Cork".
    """
    if len(value) < 3 or len(value) > 60 or any(ch.isdigit() for ch in value):
        return False
    if _lookup(normalise(value)):
        return True
    m = _TAIL.match(value)
    return m is not None and _lookup(normalise(m["head"]))


def is_region(value: str) -> bool:
    """The value names a country or a US state ("Jordan", "Georgia", "Chad")."""
    if len(value) < 3 or any(ch.isdigit() for ch in value):
        return False
    return normalise(value.split("(")[0]) in regions()


def is_name_too(value: str) -> bool:
    """The value is also a census given name or surname ("Houston", "Florence", "Jackson")."""
    given, surnames = _names.name_lists()
    head = value.split(",")[0].strip().lower()
    return head in given or head in surnames


def is_clear_place(value: str) -> bool:
    """A place that is not also a person's name: the evidence a place column needs."""
    return is_place(value) and not is_name_too(value)


#: Phrases after which a capitalised place name is where someone lives or comes from.
_CONTEXT = re.compile(
    r"\b(?i:lives|living|resides|residing|resident|residence|moved|relocated|born|native|home|"
    r"hometown|address|from|wohnt|wohnhaft|aus|habite|domicili[eé]e?|vive|abita|woont)"
    r"(?:\s+(?i:in|at|of|to|near|outside|from|a|à|en|nach|te))?\s+"
    r"(?P<place>[A-ZÀ-ÖØ-Þ][\w'’.-]*(?:\s+(?:(?:am|an|der|de|del|di|la|le|sur|upon|on|im|in|bei)\s+)?"
    r"[A-ZÀ-ÖØ-Þ][\w'’.-]*){0,3})"
)
_NOT_PLACES = frozenset(
    {
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "home",
        "work",
        "hospital",
        "clinic",
        "emergency",
    }
)


def text_has_place(text: str) -> bool:
    """A city, town or county inside free text after a residence phrase ("lives in Leeds").

    The longest run of up to four capitalised words after the phrase that is a known place
    counts; month and weekday names ("from March") do not.
    """
    for m in _CONTEXT.finditer(text):
        words = m["place"].rstrip(".,").split()
        for end in range(len(words), 0, -1):
            candidate = " ".join(words[:end]).rstrip(".,;:")
            key = normalise(candidate)
            if key in _NOT_PLACES:
                break
            if _lookup(key):
                return True
    return False
