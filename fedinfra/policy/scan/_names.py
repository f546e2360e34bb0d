"""Personal names, in a column or inside free text (45 CFR 164.514(b)(2)(i)(A); GDPR Art. 4(1)).

The name lists are the U.S. Census Bureau's 1990 given-name and surname frequency tables
(public domain, shipped as ``compliance/reference/names-census-1990.txt``). A list alone is
not enough - "Will", "Young" and "Bill" are names and words - so the rules combine it with
what a human reader uses: capitalisation, a title ("Mr", "Dr"), a context word ("patient",
"daughter", "seen by") and the shape of a full name (given name then surname).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from fedinfra.errors import ConfigError

_FILE = "names-census-1990.txt"


def reference_sections(file: str, names: tuple[str, ...]) -> dict[str, set[str]]:
    """The ``[section]`` lines of a list shipped in ``compliance/reference/`` (``#`` comments skipped)."""
    ref = resources.files("fedinfra._compliance") / "reference" / file
    try:
        text = ref.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"compliance/reference/{file}: cannot read ({exc}); reinstall fedinfra") from exc
    sections: dict[str, set[str]] = {name: set() for name in names}
    current: set[str] | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections[line.strip("[]")]
        elif current is not None:
            current.add(line)
    return sections


@lru_cache(maxsize=1)
def name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """``(given, surnames)``, lower case, from the shipped census tables."""
    sections = reference_sections(_FILE, ("given", "surname"))
    return frozenset(sections["given"]), frozenset(sections["surname"])


#: Lower-case particles inside surnames ("Lisa de Bruijn", "Ludwig van Beethoven").
_PARTICLES = frozenset(
    {"de", "van", "von", "der", "den", "da", "di", "del", "della", "la", "le", "du", "ter", "ten", "y", "zu"}
)
#: Words that make a capitalised phrase an organisation, not a person.
_ORG = frozenset(
    {
        "inc",
        "llc",
        "ltd",
        "plc",
        "gmbh",
        "ag",
        "kg",
        "sa",
        "sarl",
        "sas",
        "srl",
        "spa",
        "bv",
        "nv",
        "co",
        "corp",
        "group",
        "sons",
        "and",
        "und",
        "et",
        "e",
        "&",
        "company",
        "hospital",
        "clinic",
        "bank",
        "university",
        "motors",
        "electric",
        "steel",
        "oil",
        "chemical",
        "foods",
        "partners",
        "associates",
        "ltda",
        "oy",
        "ab",
    }
)
_TOKEN = re.compile(
    r"^[A-ZÀ-ÖØ-Þ][A-Za-zÀ-ÖØ-öø-ÿ'’]*[a-zà-öø-ÿ][A-Za-zà-öø-ÿ'’]*(?:-[A-ZÀ-ÖØ-Þ][A-Za-zà-öø-ÿ'’]+)*\.?$"
)
#: Academic degrees and generational suffixes after a name ("MBA", "B.Sc.", "Jr.").
_DEGREE = re.compile(r"^(?:(?:[A-Z][A-Za-z]{0,3}\.-?){1,3}[A-Za-z]*\.?|MBA|PhD|MD|Jr|Sr|II|III|IV|BSc|MSc|BA|MA)\.?$")
_TITLES = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "miss",
        "mx",
        "dr",
        "prof",
        "sir",
        "dame",
        "herr",
        "frau",
        "mme",
        "mlle",
        "m",
        "sr",
        "sra",
        "sig",
    }
)


def _known(token: str, given: frozenset[str], surnames: frozenset[str]) -> bool:
    low = token.lower().rstrip(".")
    return any(part in given or part in surnames for part in low.split("-"))


_LONG_TITLES = frozenset({"univ.prof.", "dipl.-ing.", "dipl.-kfm.", "prof.dr.", "dr.med.", "ing.", "mag."})


def _core(value: str) -> list[str] | None:
    words = value.replace(",", " ").split()
    if not 1 <= len(words) <= 6:
        return None
    while len(words) > 1 and (words[0].lower().rstrip(".") in _TITLES or words[0].lower() in _LONG_TITLES):
        words = words[1:]
    while len(words) > 1 and _DEGREE.match(words[-1]):
        words = words[:-1]
    if any(w.lower().strip(".") in _ORG for w in words):
        return None
    core = [w for w in words if w.lower() not in _PARTICLES]
    if not core or len(core) > 4 or not all(_TOKEN.match(w) or re.fullmatch(r"[A-Z]\.", w) for w in core):
        return None
    return core


def is_name_shaped(value: str) -> bool:
    """One to four capitalised words, surname particles allowed, no organisation word."""
    return _core(value) is not None


def is_person_name(value: str) -> bool:
    """One to four capitalised words (surname particles allowed) of which one is a census name.

    A single word must itself be a census name; two or more need one census name and no
    organisation word ("Inc", "and", "GmbH").
    """
    core = _core(value)
    if core is None:
        return False
    given, surnames = name_lists()
    return any(_known(w, given, surnames) for w in core if len(w) > 2)


#: Words after which a capitalised census name is a person (clinical notes, letters).
_CONTEXT = frozenset(
    {
        "patient",
        "pt",
        "mr",
        "mrs",
        "ms",
        "miss",
        "dr",
        "prof",
        "nurse",
        "physician",
        "doctor",
        "seen",
        "by",
        "with",
        "named",
        "name",
        "contact",
        "mother",
        "father",
        "wife",
        "husband",
        "son",
        "daughter",
        "brother",
        "sister",
        "spouse",
        "partner",
        "guardian",
        "caregiver",
        "called",
        "visited",
        "referred",
        "herr",
        "frau",
        "mme",
        "madame",
        "monsieur",
        "signor",
        "signora",
        "sr",
        "sra",
        "dear",
        "attn",
        "from",
        "to",
        "cc",
    }
)
_WORD = re.compile(r"[A-Za-zÀ-ÖØ-öø-ÿ'’-]+\.?")


def text_has_name(text: str) -> bool:
    """A person's name inside free text.

    Fires on a capitalised census name right after a title or context word ("Patient John
    Doe", "Dr. Smith", "daughter Mary"), or on a capitalised given name followed by a
    capitalised census surname anywhere but as the first word of a sentence ("... with
    Maria Lopez").
    """
    given, surnames = name_lists()
    words = _WORD.findall(text)
    prev = ""
    for i, w in enumerate(words):
        bare = w.rstrip(".")
        if len(bare) > 1 and bare[0].isupper() and not bare.isupper():
            low = bare.lower()
            if prev in _CONTEXT and (low in given or low in surnames):
                return True
            if low in given and i + 1 < len(words):
                nxt = words[i + 1].rstrip(".")
                if nxt[:1].isupper() and not nxt.isupper() and nxt.lower() in surnames and i > 0:
                    return True
        ends_sentence = w.endswith(".") and bare.lower() not in _TITLES
        prev = "" if ends_sentence else bare.lower()
    return False
