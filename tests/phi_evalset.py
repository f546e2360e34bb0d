"""An evaluation set for the PHI/PII scanner built from sources the detectors were not written for.

Identifiers come from Faker (its own locales, formats and check digits: names, addresses,
postal codes, plates, VINs, IBANs, SSNs, phones...), decoys from real public tables shipped
inside packages (statsmodels' datasets, scikit-learn's bundled data) plus Faker values that
are not identifiers (companies, jobs, years, codes). Column names are neutral (``col_07``) or
misleading (``lab_value``, ``batch``) for most identifier columns, so a detector that reads
names instead of values fails here.

Truth is the Safe Harbor *family* of a column (45 CFR 164.514(b)(2)(i)), not a detector kind:
record, account, licence, certificate and device serial numbers share one family,
``record_number``, because their values have the same shape and are told apart only by
context (the column name or a data dictionary).

Everything is generated from a seed: ``evaluation_tables(seed)`` is deterministic.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from faker import Faker

Cells = list[str | None]

#: Safe Harbor family of each truth label (the letter of 164.514(b)(2)(i)).
FAMILIES = {
    "name": "A",
    "address": "B",
    "city": "B",
    "postal_code": "B",
    "date": "C",
    "age_over_89": "C",
    "phone": "D/E",
    "email": "F",
    "ssn": "G",
    "record_number": "H-K, M",
    "financial_account": "J",
    "vehicle": "L",
    "device": "M",
    "url": "N",
    "ip_address": "O",
    "photo_or_biometric": "P/Q",
    "free_text": "R",
}

#: Scanner kind -> evaluation family: a column is found when its kind maps to its truth.
KIND_FAMILY = {
    "name": "name",
    "geography": "address",
    "city": "city",
    "zip_code": "postal_code",
    "postal_code": "postal_code",
    "restricted_zip3": "postal_code",
    "date": "date",
    "age_over_89": "age_over_89",
    "phone": "phone",
    "email": "email",
    "ssn": "ssn",
    "record_number": "record_number",
    "medical_record_number": "record_number",
    "health_plan_number": "record_number",
    "account_number": "record_number",
    "licence_number": "record_number",
    "device_serial": "record_number",
    "mbi": "record_number",
    "card_number": "financial_account",
    "iban": "financial_account",
    "vin": "vehicle",
    "vehicle_plate": "vehicle",
    "imei": "device",
    "mac_address": "device",
    "url": "url",
    "ip_address": "ip_address",
    "photo_reference": "photo_or_biometric",
    "free_text": "free_text",
}


LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "nl_NL", "en_IE", "it_IT", "es_ES")
#: Faker locales whose ``city()`` draws from a list of real towns (checked against GeoNames
#: by hand: en_*, fr_FR, no_NO and pt_BR invent names such as "Lake Amanda"; it_IT, nl_NL and
#: da_DK list real hamlets, 35-50% of them below GeoNames' 1,000-people cut - bench/phi.py
#: reports their coverage separately).
REAL_CITY_LOCALES = ("de_DE", "es_ES", "pl_PL", "sv_SE", "pt_PT", "de_AT", "de_CH", "cs_CZ", "fi_FI")
NEUTRAL = ("col", "field", "var", "x", "attr", "c", "value", "item", "f")
MISLEADING = (
    "lab_value",
    "batch",
    "score",
    "category",
    "result",
    "measure",
    "code",
    "ref",
    "group",
    "amount",
    "index",
    "level",
    "status",
    "comment",
    "flag",
    "reading",
)
_REF = dt.date(2024, 6, 30)
_DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y", "%d/%m/%Y", "%d %b %Y", "%B %d, %Y", "%Y%m%d", "%d-%b-%Y")


@dataclass
class EvalColumn:
    """One generated column: its cells and the truth family (``None`` = not an identifier)."""

    cells: Cells
    truth: str | None
    source: str


Gen = Callable[[Faker, random.Random, int], Cells]


def _in_locale(locale: str, r: random.Random, fn: Callable[[Faker], Cells]) -> Cells:
    g = Faker(locale)
    g.seed_instance(r.getrandbits(32))
    return fn(g)


def _each(fn: Callable[[Faker], object]) -> Gen:
    return lambda f, r, n: [str(fn(f)) for _ in range(n)]


def _ages(lo: int, hi: int, mode: float) -> Gen:
    return lambda f, r, n: [str(round(r.triangular(lo, hi, mode))) for _ in range(n)]


def _dates(f: Faker, r: random.Random, n: int) -> Cells:
    fmt = r.choice(_DATE_FORMATS)
    kind = r.choice(("dob", "recent", "datetime"))
    out: Cells = []
    for _ in range(n):
        if kind == "dob":
            d = f.date_of_birth(minimum_age=0, maximum_age=95)
        elif kind == "recent":
            d = f.date_between(start_date=dt.date(2015, 1, 1), end_date=_REF)
        else:
            out.append(
                f.date_time_between(start_date=dt.datetime(2018, 1, 1), end_date=dt.datetime(2024, 1, 1)).isoformat()
            )
            continue
        out.append(d.strftime(fmt))
    return out


def _note(f: Faker, r: random.Random, n: int) -> Cells:
    """Clinical-style notes; about a third mention a person or carry a contact detail."""
    out: Cells = []
    for _ in range(n):
        body = f.sentence(nb_words=r.randint(6, 12))
        roll = r.random()
        if roll < 0.12:
            out.append(f"Patient {f.name()} seen today. {body}")
        elif roll < 0.2:
            out.append(f"{body} Discussed with {r.choice(('Dr.', 'Mr.', 'Mrs.', 'Ms.'))} {f.last_name()}.")
        elif roll < 0.26:
            out.append(f"{body} Call back on {f.phone_number()}.")
        elif roll < 0.3:
            out.append(f"{body} Family contact: {f.first_name()} {f.last_name()}, daughter.")
        elif roll < 0.34:
            out.append(f"{body} Follow-up on {f.date_between(start_date=_REF, end_date=_REF + dt.timedelta(days=90))}.")
        else:
            out.append(body)
    return out


def _real_city(r: random.Random, n: int) -> Cells:
    """Real towns from one of :data:`REAL_CITY_LOCALES`, as a clinic's records would spell them."""
    return _in_locale(r.choice(REAL_CITY_LOCALES), r, lambda g: [g.city() for _ in range(n)])


def _residence_note(f: Faker, r: random.Random, n: int) -> Cells:
    """Notes of which about a quarter say where the patient lives, and nothing else identifying."""
    towns = _real_city(r, n)
    phrases = ("Lives in {}.", "Moved to {} last year.", "Patient is a resident of {}.", "Referred from {}.")
    out: Cells = []
    for town in towns:
        body = f.sentence(nb_words=r.randint(6, 12))
        out.append(f"{body} {r.choice(phrases).format(town)}" if r.random() < 0.25 else body)
    return out


def _ward_with_town_words(f: Faker, r: random.Random, n: int) -> Cells:
    """Decoy: a category column where a few labels happen to be town names (Orange, Reading)."""
    labels = ("Cardiology", "Oncology", "Orange", "Surgery", "Reading", "Mobile", "Emergency", "ICU", "Radiology")
    return [r.choice(labels) for _ in range(n)]


def _plain_text(f: Faker, r: random.Random, n: int) -> Cells:
    """Decoy: sentences and clinical boilerplate without anyone in them."""
    stock = (
        "Patient stable, continue current regimen.",
        "No acute distress. Vitals within normal limits.",
        "Follow up in two weeks if symptoms persist.",
        "Mild headache reported; advised hydration and rest.",
        "Dr. visit rescheduled at the patient's request.",
    )
    return [r.choice(stock) if r.random() < 0.4 else f.sentence(nb_words=r.randint(6, 12)) for _ in range(n)]


def _identifier_gens() -> dict[str, list[tuple[str, Gen]]]:
    return {
        "name": [
            ("name", _each(lambda f: f.name())),
            ("first_name", _each(lambda f: f.first_name())),
            ("last_name", _each(lambda f: f.last_name())),
            ("first+last", _each(lambda f: f"{f.first_name()} {f.last_name()}")),
        ],
        "address": [
            ("street_address", _each(lambda f: f.street_address())),
            ("address", _each(lambda f: f.address().replace("\n", ", "))),
        ],
        "city": [
            ("city", lambda f, r, n: _real_city(r, n)),
            ("county (en_IE)", lambda f, r, n: _in_locale("en_IE", r, lambda g: [g.county() for _ in range(n)])),
            ("province (it_IT)", lambda f, r, n: _in_locale("it_IT", r, lambda g: [g.state() for _ in range(n)])),
        ],
        "postal_code": [("postcode", _each(lambda f: f.postcode()))],
        "date": [("date", _dates)],
        "age_over_89": [
            ("age 0-104", _ages(0, 104, 55)),
            ("age 60-103", _ages(60, 103, 78)),
            ("age 18-99", _ages(18, 99, 50)),
        ],
        "phone": [("phone_number", _each(lambda f: f.phone_number()))],
        "email": [("email", _each(lambda f: f.email())), ("company_email", _each(lambda f: f.company_email()))],
        "ssn": [("ssn (en_US)", lambda f, r, n: _in_locale("en_US", r, lambda g: [g.ssn() for _ in range(n)]))],
        "record_number": [
            ("numerify 8", _each(lambda f: f.numerify("########"))),
            ("bothify MRN", _each(lambda f: f.bothify("MRN-#######"))),
            ("bothify ??######", _each(lambda f: f.bothify("??######", letters="ABCDEFGHJKLMNPRSTUVWXYZ"))),
            ("bban", _each(lambda f: f.bban())),
            ("passport", _each(lambda f: f.passport_number())),
            ("licence", _each(lambda f: f.bothify("?###-####-####", letters="ABCDEFGHIJKLMNOPQRSTUVWXYZ"))),
            ("serial", _each(lambda f: f.bothify("SN-????-########", letters="ABCDEFGHJKLMNPQRSTUVWXYZ"))),
        ],
        "financial_account": [
            ("credit_card_number", _each(lambda f: f.credit_card_number())),
            ("iban", _each(lambda f: f.iban())),
        ],
        "vehicle": [("vin", _each(lambda f: f.vin())), ("license_plate", _each(lambda f: f.license_plate()))],
        "device": [("mac_address", _each(lambda f: f.mac_address()))],
        "url": [("url", _each(lambda f: f.url())), ("uri", _each(lambda f: f.uri()))],
        "ip_address": [
            ("ipv4", _each(lambda f: f.ipv4())),
            ("ipv6", _each(lambda f: f.ipv6())),
            ("ipv4_private", _each(lambda f: f.ipv4_private())),
        ],
        "photo_or_biometric": [
            ("image file_name", _each(lambda f: f.file_name(category="image"))),
            ("image file_path", _each(lambda f: f.file_path(depth=2, category="image"))),
        ],
        "free_text": [("clinical note with names", _note), ("note with place of residence", _residence_note)],
    }


def _faker_decoys() -> list[tuple[str, Gen]]:
    return [
        ("company", _each(lambda f: f.company())),
        ("ean13 product code", _each(lambda f: f.ean13())),
        ("job", _each(lambda f: f.job())),
        ("year", _each(lambda f: f.year())),
        ("ages 18-89", lambda f, r, n: [str(r.randint(18, 89)) for _ in range(n)]),
        (
            "icd10-shaped codes",
            lambda f, r, n: [r.choice([f.bothify("?##.#") for _ in range(40)]).upper() for _ in range(n)],
        ),
        ("row index", lambda f, r, n: [str(i) for i in range(n)]),
        ("row index from 1", lambda f, r, n: [str(i + 1) for i in range(n)]),
        ("shuffled row id", lambda f, r, n: [str(i) for i in r.sample(range(10_000, 10_000 + n), n)]),
        ("heart rate", lambda f, r, n: [str(round(r.gauss(78, 12))) for _ in range(n)]),
        ("lab value", lambda f, r, n: [f"{r.gauss(100, 15):.1f}" for _ in range(n)]),
        ("count", lambda f, r, n: [str(r.randint(0, 20)) for _ in range(n)]),
        ("sex", lambda f, r, n: [r.choice("MF") for _ in range(n)]),
        ("boolean", lambda f, r, n: [r.choice(("true", "false")) for _ in range(n)]),
        ("country", _each(lambda f: f.country())),
        ("us state", lambda f, r, n: _in_locale("en_US", r, lambda g: [g.state() for _ in range(n)])),
        ("de state", lambda f, r, n: _in_locale("de_DE", r, lambda g: [g.state() for _ in range(n)])),
        ("nl province", lambda f, r, n: _in_locale("nl_NL", r, lambda g: [g.province() for _ in range(n)])),
        ("ward with town-like labels", _ward_with_town_words),
        ("currency_code", _each(lambda f: f.currency_code())),
        ("color", _each(lambda f: f.color_name())),
        ("word", _each(lambda f: f.word())),
        ("plain text", _plain_text),
        ("year-month", lambda f, r, n: [f.date_between(dt.date(2015, 1, 1), _REF).strftime("%Y-%m") for _ in range(n)]),
        ("price", lambda f, r, n: [f"{r.uniform(1, 500):.2f}" for _ in range(n)]),
        (
            "uuid-free batch label",
            lambda f, r, n: [r.choice(["A", "B", "C", "D"]) + str(r.randint(1, 9)) for _ in range(n)],
        ),
    ]


def _real_tables() -> list[tuple[str, list[str], str | None]]:
    """Columns of real public tables (statsmodels, scikit-learn) as strings, with truth.

    A real column is an identifier only where the data is what Safe Harbor names: an ``age``
    column (ANES 1996 has respondents older than 89) is ``age_over_89`` when the rows drawn
    hold an age above 89; the third item is ``"age"`` for such columns.
    """
    import statsmodels.api as sm
    from sklearn import datasets as skd

    out: list[tuple[str, list[str], str | None]] = []

    def add(prefix: str, frame: object) -> None:
        for name in frame.columns:  # type: ignore[attr-defined]
            col = frame[name]  # type: ignore[index]
            values = ["" if v != v else str(v) for v in col.tolist()]
            out.append((f"{prefix}.{name}", values, "age" if str(name).lower() == "age" else None))

    for ds in (
        "anes96",
        "fair",
        "heart",
        "grunfeld",
        "macrodata",
        "randhie",
        "star98",
        "statecrime",
        "scotland",
        "sunspots",
        "fertility",
        "modechoice",
        "ccard",
        "longley",
        "copper",
        "cpunish",
        "spector",
        "strikes",
        "nile",
    ):
        add(f"statsmodels.{ds}", getattr(sm.datasets, ds).load_pandas().data)
    add("sklearn.diabetes", skd.load_diabetes(as_frame=True, scaled=False).frame)
    add("sklearn.breast_cancer", skd.load_breast_cancer(as_frame=True).frame)
    add("sklearn.wine", skd.load_wine(as_frame=True).frame)
    add("sklearn.iris", skd.load_iris(as_frame=True).frame)
    add("sklearn.linnerud", skd.load_linnerud(as_frame=True).frame)
    return out


def _real_place_columns() -> list[tuple[str, list[str], str | None]]:
    """Place-like text columns of real statsmodels tables, in every evaluation table.

    China smoking's ``Location`` (eight Chinese cities) is a city column; US states
    (Statecrime, Capital punishment), House committees and Grunfeld's firms are not places
    below state level and must stay unflagged.
    """
    import io
    from importlib import resources

    import pandas as pd
    import statsmodels.api as sm

    def csv(dataset: str, column: str) -> list[str]:
        text = (resources.files(f"statsmodels.datasets.{dataset}") / f"{dataset}.csv").read_text()
        return [str(v) for v in pd.read_csv(io.StringIO(text))[column].tolist()]

    return [
        (
            "statsmodels.china_smoking.Location",
            [str(v) for v in sm.datasets.china_smoking.load_pandas().data.index],
            "city",
        ),
        ("statsmodels.statecrime.state", [str(v) for v in sm.datasets.statecrime.load_pandas().data.index], None),
        ("statsmodels.cpunish.STATE", csv("cpunish", "STATE"), None),
        ("statsmodels.committee.COMMITTEE", csv("committee", "COMMITTEE"), None),
        ("statsmodels.grunfeld.firm", [str(v) for v in sm.datasets.grunfeld.load_pandas().data["firm"]], None),
    ]


def _fit(values: list[str], n: int, r: random.Random) -> Cells:
    """Resample a real column to ``n`` rows (with replacement when it is shorter)."""
    cells = [v or None for v in values]
    if len(cells) >= n:
        start = r.randrange(len(cells) - n + 1)
        return cells[start : start + n]
    return [r.choice(cells) for _ in range(n)]


def _column_name(r: random.Random, i: int, honest: str) -> str:
    honest = "".join(ch if ch.isalnum() else "_" for ch in honest.split(" ")[0])
    roll = r.random()
    if roll < 0.45:
        return f"{r.choice(NEUTRAL)}_{i:02d}"
    if roll < 0.9:
        return f"{r.choice(MISLEADING)}_{i:02d}"
    return f"{honest}_{i:02d}"


def evaluation_tables(
    seed: int = 0, *, rows: int = 400, tables: int = 6
) -> Iterator[tuple[dict[str, Cells], dict[str, str | None], dict[str, str]]]:
    """Yield ``(table, truth, source)`` per generated table: every identifier generator and decoy
    appears in every table, each under a freshly drawn neutral or misleading name."""
    r = random.Random(seed)
    real = _real_tables()
    places = _real_place_columns()
    ident = _identifier_gens()
    decoys = _faker_decoys()
    for t in range(tables):
        locale = LOCALES[t % len(LOCALES)]
        f = Faker(locale)
        f.seed_instance(seed * 1000 + t)
        cols: list[tuple[str, EvalColumn]] = []
        for family, gens in ident.items():
            for label, gen in gens:
                cols.append((label, EvalColumn(gen(f, r, rows), family, f"faker[{locale}].{label}")))
        for label, gen in decoys:
            cols.append((label, EvalColumn(gen(f, r, rows), None, f"faker[{locale}].{label}")))
        for label, values, kind in r.sample(real, 40):
            cells = _fit(values, rows, r)
            truth = "age_over_89" if kind == "age" and any(v is not None and float(v) > 89 for v in cells) else None
            cols.append((label.rsplit(".", 1)[-1], EvalColumn(cells, truth, label)))
        for label, values, place in places:
            cols.append((label.rsplit(".", 1)[-1], EvalColumn(_fit(values, rows, r), place, label)))
        r.shuffle(cols)
        table: dict[str, Cells] = {}
        truth: dict[str, str | None] = {}
        source: dict[str, str] = {}
        for i, (honest, col) in enumerate(cols):
            name = _column_name(r, i, honest)
            cells = [None if v is None else v.replace("\n", ", ") for v in col.cells]
            table[name], truth[name], source[name] = cells, col.truth, col.source
        yield table, truth, source
