"""Seeded generators of realistic patient and bank tables with planted identifiers.

They exist to *measure* the scanner (column-level precision and recall) and to give the
demo a site whose data holds a blocking identifier. Every person, number and address is
synthetic; check digits (Luhn, IBAN mod-97, VIN) are computed so the identifiers look
real to a validator. Decoys are the columns that fool naive scanners: lab values,
date-like codes, opaque ids that are not PHI, organisation names, short free text.

Each generator returns ``(table, truth)``: string cells by column, and for each column the
identifier kind planted there or ``None`` for a decoy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedinfra.policy.scan._patterns import luhn_ok

Cells = list[str | None]
Table = dict[str, Cells]
Truth = dict[str, str | None]
Gen = Callable[[np.random.Generator, int], list[str]]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST = _words(
    """
    Olivia Liam Emma Noah Ava Elijah Sophia James Isabella William Mia Lucas Amelia Henry Harper
    Theodore Evelyn Jack Abigail Levi Emily Alexander Ella Mateo Elizabeth Daniel Camila Michael
    Luna Mason Sofia Sebastian Avery Ethan Mila Logan Aria Owen Scarlett Samuel Penelope Jacob Layla
    Asher Chloe Aiden Victoria John Madison Joseph Eleanor Wyatt Grace David Nora Leo Riley Luke
    Zoey Julian Hannah Hudson Hazel Grayson Lily Matthew Ellie Ezra Violet Gabriel Lillian Carter
    Zoe Isaac Stella Jayden Aurora Luca Natalie Anthony Emilia Dylan Everly Lincoln Leah Thomas
    Aubrey Maverick Willow Elias Addison Josiah Lucy Charles Audrey Caleb Bella Christopher Nova
    Ezekiel Brooklyn Miles Paisley Jaxon Savannah Isaiah Claire Andrew Skylar Joshua Isla Nathan
    Genesis Nolan Naomi Adrian Elena
    """
)
_LAST_ROOTS = _words(
    """
    Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
    Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris
    Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill
    Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Muller Schmidt
    Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Dubois Lefebvre Moreau Laurent
    Bernard Rossi Russo Ferrari Esposito Bianchi Romano Colombo Jansen Visser Bakker Janssen
    Kowalski Nowak Wisniewski
    """
)
_SUFFIX = ("", "", "", "son", "er", "ing", "man", "ez", "ini", "sen", "berg", "feld", "ski", "ton")
_STREETS = _words(
    """
    Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Sunset Ridge Church River Mill Highland
    Forest Meadow Spring Valley Chestnut Walnut Franklin Lincoln Jefferson
    """
)
_ST_TYPES = ("St", "Street", "Ave", "Avenue", "Rd", "Road", "Blvd", "Ln", "Dr", "Way", "Ct", "Pl")
_CITIES = _words(
    """
    Springfield Riverside Franklin Greenville Bristol Clinton Fairview Salem Madison Georgetown
    Arlington Ashland Burlington Manchester Milton Newport Oxford Dayton Lexington Dover Auburn
    Hudson Kingston Marion Jackson Chester Clayton Monroe Hamilton Centerville
    """
)
_STATES = _words(
    """
    CA NY TX FL IL PA OH GA NC MI NJ VA WA AZ MA TN IN MO MD WI CO MN SC AL LA KY OR OK CT
    """
)
_VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
_VIN_VALUE = {
    **{str(i): i for i in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_W = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
_MBI_LETTERS = "ACDEFGHJKMNPQRTUVWXY"


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str], n: int) -> list[str]:
    return [items[i] for i in rng.integers(0, len(items), n)]


def _digits(rng: np.random.Generator, k: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, k))


def _last(rng: np.random.Generator, n: int) -> list[str]:
    return [a + b for a, b in zip(_pick(rng, _LAST_ROOTS, n), _pick(rng, _SUFFIX, n), strict=True)]


def _first(rng: np.random.Generator, n: int) -> list[str]:
    return _pick(rng, _FIRST, n)


def _full(rng: np.random.Generator, n: int) -> list[str]:
    return [f"{a} {b}" for a, b in zip(_first(rng, n), _last(rng, n), strict=True)]


def _luhn_complete(body: str) -> str:
    for d in "0123456789":
        if luhn_ok(body + d):
            return body + d
    raise AssertionError("unreachable")  # pragma: no cover


def _card(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for _ in range(n):
        kind = int(rng.integers(0, 3))
        if kind == 0:
            num = _luhn_complete("4" + _digits(rng, 14))
        elif kind == 1:
            num = _luhn_complete(str(int(rng.integers(51, 56))) + _digits(rng, 13))
        else:
            num = _luhn_complete(("34", "37")[int(rng.integers(0, 2))] + _digits(rng, 12))
        out.append(" ".join(num[i : i + 4] for i in range(0, len(num), 4)) if rng.random() < 0.3 else num)
    return out


def _iban(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for _ in range(n):
        country, bban = [("DE", _digits(rng, 18)), ("NL", "ABNA" + _digits(rng, 10)), ("FR", _digits(rng, 23))][
            int(rng.integers(0, 3))
        ]
        numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
        out.append(f"{country}{98 - int(numeric) % 97:02d}{bban}")
    return out


def _vin(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for _ in range(n):
        chars = [_VIN_ALPHABET[i] for i in rng.integers(0, len(_VIN_ALPHABET), 17)]
        total = sum(_VIN_VALUE[c] * w for c, w in zip(chars, _VIN_W, strict=True)) % 11
        chars[8] = "X" if total == 10 else str(total)
        out.append("".join(chars))
    return out


def _imei(rng: np.random.Generator, n: int) -> list[str]:
    return [_luhn_complete(("35", "86", "01")[int(rng.integers(0, 3))] + _digits(rng, 12)) for _ in range(n)]


def _ssn(rng: np.random.Generator, n: int) -> list[str]:
    return [
        f"{int(rng.integers(1, 666)):03d}-{int(rng.integers(1, 100)):02d}-{int(rng.integers(1, 10000)):04d}"
        for _ in range(n)
    ]


def _phone(rng: np.random.Generator, n: int) -> list[str]:
    fmts = ("({a}) {b}-{c}", "{a}-{b}-{c}", "+1 {a} {b} {c}", "{a}.{b}.{c}")
    return [
        fmts[int(rng.integers(0, 4))].format(
            a=int(rng.integers(201, 990)), b=int(rng.integers(200, 999)), c=_digits(rng, 4)
        )
        for _ in range(n)
    ]


def _email(rng: np.random.Generator, n: int) -> list[str]:
    doms = ("example.com", "mail.example.org", "patients.example.net", "inbox.example")
    return [
        f"{f.lower()}.{last.lower()}{int(rng.integers(1, 99))}@{d}"
        for f, last, d in zip(_first(rng, n), _last(rng, n), _pick(rng, doms, n), strict=True)
    ]


def _date(rng: np.random.Generator, n: int, lo: int = 1930, hi: int = 2024) -> list[str]:
    days = rng.integers(0, (hi - lo) * 365, n)
    base = np.datetime64(f"{lo}-01-01")
    iso = [str(base + np.timedelta64(int(d), "D")) for d in days]
    if rng.random() < 0.3:
        return [f"{s[5:7]}/{s[8:10]}/{s[:4]}" for s in iso]
    return iso


def _address(rng: np.random.Generator, n: int) -> list[str]:
    return [
        f"{int(rng.integers(1, 9999))} {s} {t}"
        for s, t in zip(_pick(rng, _STREETS, n), _pick(rng, _ST_TYPES, n), strict=True)
    ]


def _zip5(rng: np.random.Generator, n: int) -> list[str]:
    return [
        f"{int(rng.integers(1001, 99950)):05d}" + (f"-{_digits(rng, 4)}" if rng.random() < 0.1 else "")
        for _ in range(n)
    ]


def _zip3_restricted(rng: np.random.Generator, n: int) -> list[str]:
    vals = [f"{int(rng.integers(100, 999)):03d}" for _ in range(n)]
    for i in rng.integers(0, n, max(1, n // 50)):
        vals[int(i)] = ("036", "059", "692", "878")[int(rng.integers(0, 4))]
    return vals


def _zip3_safe(rng: np.random.Generator, n: int) -> list[str]:
    return _pick(rng, ["100", "112", "606", "900", "021", "770", "331", "981", "606", "191"], n)


def _age_old(rng: np.random.Generator, n: int) -> list[str]:
    return [str(int(a)) for a in np.clip(rng.normal(62, 17, n), 18, 103)]


def _age_young(rng: np.random.Generator, n: int) -> list[str]:
    return [str(int(a)) for a in np.clip(rng.normal(45, 14, n), 18, 89)]


def _mrn(rng: np.random.Generator, n: int) -> list[str]:
    return [f"MRN{_digits(rng, 8)}" if rng.random() < 0.5 else _digits(rng, 9) for _ in range(n)]


def _member(rng: np.random.Generator, n: int) -> list[str]:
    return [f"{_MBI_LETTERS[int(rng.integers(0, 20))]}{_digits(rng, 2)}-{_digits(rng, 7)}" for _ in range(n)]


def _mbi(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for _ in range(n):
        a, b, c, d, e = (_MBI_LETTERS[i] for i in rng.integers(0, 20, 5))
        n1, n2, n3 = _digits(rng, 1), _digits(rng, 1), _digits(rng, 2)
        out.append(f"{int(rng.integers(1, 10))}{a}{b}{n1}{c}{d}{n2}{e}{a}{n3}")
    return out


def _opaque(prefix: str, k: int) -> Gen:
    return lambda rng, n: [f"{prefix}{_digits(rng, k)}" for _ in range(n)]


def _ip(rng: np.random.Generator, n: int) -> list[str]:
    return [".".join(str(int(x)) for x in rng.integers(1, 255, 4)) for _ in range(n)]


def _url(rng: np.random.Generator, n: int) -> list[str]:
    return [f"https://portal.example.org/patient/{_digits(rng, 7)}" for _ in range(n)]


def _mac(rng: np.random.Generator, n: int) -> list[str]:
    return [":".join(f"{int(x):02x}" for x in rng.integers(0, 256, 6)) for _ in range(n)]


def _notes_with_ids(rng: np.random.Generator, n: int) -> list[str]:
    plain = (
        "Patient stable, continue current regimen and review in four weeks.",
        "Reports mild dizziness after dose change; advised hydration and rest.",
        "Follow-up labs ordered; no acute distress noted during the visit.",
    )
    out = _pick(rng, plain, n)
    for i in range(n):
        if rng.random() < 0.25:
            name = _last(rng, 1)[0]
            out[i] = (
                f"Called Mr. {name} at {_phone(rng, 1)[0]} about results.",
                f"Seen on {_date(rng, 1, 2020, 2024)[0]}, MRN {_digits(rng, 7)}, plan unchanged.",
            )[int(rng.integers(0, 2))]
    return out


def _notes_clean(rng: np.random.Generator, n: int) -> list[str]:
    plain = (
        "Patient stable, continue current regimen and review in four weeks.",
        "Reports mild dizziness after dose change; advised hydration and rest.",
        "Follow-up labs ordered; no acute distress noted during the visit.",
        "Blood pressure improved on the new dose, continue monitoring at home.",
    )
    return _pick(rng, plain, n)


def _floats(mu: float, sd: float, digits: int = 1) -> Gen:
    return lambda rng, n: [f"{v:.{digits}f}" for v in rng.normal(mu, sd, n)]


def _ints(lo: int, hi: int) -> Gen:
    return lambda rng, n: [str(int(v)) for v in rng.integers(lo, hi, n)]


def _choice(*items: str) -> Gen:
    return lambda rng, n: _pick(rng, items, n)


def _hex_ids(prefix: str) -> Gen:
    return lambda rng, n: [f"{prefix}{int(v):08x}" for v in rng.integers(0, 2**32, n)]


def _batch_code(rng: np.random.Generator, n: int) -> list[str]:
    return [
        f"{int(y)}{int(m):02d}{int(d):02d}{_digits(rng, 2)}"
        for y, m, d in zip(rng.integers(2019, 2025, n), rng.integers(1, 13, n), rng.integers(1, 29, n), strict=True)
    ]


def _lot(rng: np.random.Generator, n: int) -> list[str]:
    return [f"L{int(y)}-{_digits(rng, 4)}-{'ABCD'[int(rng.integers(0, 4))]}" for y in rng.integers(2019, 2025, n)]


def _statement_month(rng: np.random.Generator, n: int) -> list[str]:
    return [f"{int(y)}-Q{int(q)}" for y, q in zip(rng.integers(2019, 2025, n), rng.integers(1, 5, n), strict=True)]


def _random_digits(k: int) -> Gen:
    return lambda rng, n: [_digits(rng, k) for _ in range(n)]


# (names the column may take, generator, planted identifier kind or None for a decoy)
Spec = tuple[tuple[str, ...], Gen, str | None]

PATIENT_COLUMNS: tuple[Spec, ...] = (
    (("patient_name", "PatientName", "full_name", "name"), _full, "name"),
    (("first_name", "FirstName", "given_name"), _first, "name"),
    (("last_name", "surname", "LastName", "family_name"), _last, "name"),
    (("mrn", "MRN", "medical_record_number", "PatientID", "patient_id"), _mrn, "medical_record_number"),
    (("ssn", "SSN", "social_security_number"), _ssn, "ssn"),
    (("date_of_birth", "DOB", "birthDate", "birth_date"), _date, "date"),
    (("admission_date", "AdmitDate", "admitted_on"), lambda r, n: _date(r, n, 2018, 2024), "date"),
    (("zip", "ZipCode", "postal_code", "zip_code"), _zip5, "zip_code"),
    (("zip3", "ZIP3"), _zip3_restricted, "restricted_zip3"),
    (("street_address", "address", "home_address"), _address, "geography"),
    (("city", "City", "home_town"), lambda r, n: _pick(r, _CITIES, n), "geography"),
    (("phone", "PhoneNumber", "mobile", "fax_number"), _phone, "phone"),
    (("email", "EmailAddress", "contact_email"), _email, "email"),
    (("contact",), _email, "email"),
    (("age", "Age", "age_years"), _age_old, "age_over_89"),
    (("member_id", "insurance_id", "subscriber_id"), _member, "health_plan_number"),
    (("mbi", "medicare_id"), _mbi, "mbi"),
    (("device_serial", "pump_serial_number", "SerialNo"), _opaque("SN-", 9), "device_serial"),
    (("imei", "phone_imei"), _imei, "imei"),
    (("portal_url", "record_url"), _url, "url"),
    (("last_login_ip", "ip_address", "client_ip"), _ip, "ip_address"),
    (("drivers_license", "license_number", "licence_no"), _opaque("D", 8), "licence_number"),
    (("vin", "vehicle_vin"), _vin, "vin"),
    (("wearable_mac", "mac_address"), _mac, "mac_address"),
    (("clinical_notes", "note_text"), _notes_with_ids, "free_text"),
    (("x7", "field_12"), _ssn, "ssn"),
    # decoys
    (("glucose_mg_dl", "glucose"), _floats(105, 25), None),
    (("hba1c", "HbA1c_pct"), _floats(6.1, 1.1), None),
    (("systolic_bp", "SBP"), _ints(95, 180), None),
    (("creatinine",), _floats(1.0, 0.3, 2), None),
    (("icd10_code", "diagnosis_code"), _choice("E11.9", "I10", "J45.909", "N18.3", "E78.5", "I25.10"), None),
    (("loinc_code",), _choice("2345-7", "4548-4", "2160-0", "718-7", "2093-3"), None),
    (("visit_number", "encounter_seq"), _ints(1, 12), None),
    (("study_id", "pseudonym", "subject_key"), _hex_ids("S-"), None),
    (("sample_barcode",), _random_digits(12), None),
    (("batch_code", "assay_run"), _batch_code, None),
    (("reagent_lot", "lot_number"), _lot, None),
    (("protocol_version",), _choice("2.1.3", "2.2.0", "3.0.1"), None),
    (("age", "age_years"), _age_young, None),
    (("age_group", "age_band"), _choice("18-29", "30-44", "45-64", "65-79", "80-89"), None),
    (("sex", "gender"), _choice("F", "M"), None),
    (("state",), lambda r, n: _pick(r, _STATES, n), None),
    (("zip3", "zip3_prefix"), _zip3_safe, None),
    (("birth_year", "year_of_birth"), _ints(1930, 2005), None),
    (("admission_year",), _ints(2018, 2025), None),
    (
        ("hospital_name", "facility_name"),
        _choice("St. Mary Medical Center", "General Hospital", "Mercy Clinic", "Riverside Hospital"),
        None,
    ),
    (
        ("drug_name", "medication_name"),
        _choice("Metformin", "Lisinopril", "Atorvastatin", "Amlodipine", "Insulin Glargine"),
        None,
    ),
    (("length_of_stay_days", "los_days"), _ints(1, 30), None),
    (("diagnosis",), _choice("Type 2 diabetes", "Hypertension", "Asthma", "Chronic kidney disease"), None),
    (("discharge_disposition",), _choice("Home", "Skilled Nursing Facility", "Home Health", "Rehab"), None),
    (("notes_clean", "triage_comment"), _notes_clean, None),
    (("readmitted", "outcome"), _choice("0", "1"), None),
)

BANK_COLUMNS: tuple[Spec, ...] = (
    (("customer_name", "CustomerName", "account_holder_name"), _full, "name"),
    (("iban", "IBAN", "payout_iban"), _iban, "iban"),
    (("card_number", "CardNumber", "pan"), _card, "card_number"),
    (("account_number", "acct_no", "AccountNumber"), _random_digits(10), "account_number"),
    (("email", "email_address"), _email, "email"),
    (("phone", "phone_number", "mobile"), _phone, "phone"),
    (("ssn", "tin", "tax_id_ssn"), _ssn, "ssn"),
    (("address", "mailing_address"), _address, "geography"),
    (("zip", "zip_code"), _zip5, "zip_code"),
    (("dob", "date_of_birth"), _date, "date"),
    (("login_ip", "ip_address"), _ip, "ip_address"),
    (("device_imei",), _imei, "imei"),
    (("auto_loan_vin", "vin"), _vin, "vin"),
    (("drivers_license", "license_number"), _opaque("DL", 7), "licence_number"),
    (("ref_a", "col_19"), _card, "card_number"),
    (("beneficiary_account",), _iban, "iban"),
    # decoys
    (("balance", "current_balance"), _floats(5200, 3000, 2), None),
    (("credit_limit",), _ints(500, 25000), None),
    (("transaction_amount", "txn_amount"), _floats(80, 60, 2), None),
    (("mcc", "merchant_category_code"), _choice("5411", "5812", "5541", "4111", "5999"), None),
    (("branch_id", "branch_code"), _opaque("BR-", 3), None),
    (
        ("product_name", "card_product"),
        _choice("Gold Card", "Platinum Rewards", "Everyday Checking", "Student Saver"),
        None,
    ),
    (("card_type", "card_brand"), _choice("VISA", "MASTERCARD", "AMEX"), None),
    (("account_type",), _choice("checking", "savings", "credit"), None),
    (("account_age_months", "tenure_months"), _ints(1, 360), None),
    (("num_accounts",), _ints(1, 6), None),
    (("credit_score", "fico"), _ints(520, 850), None),
    (("txn_reference", "transaction_ref"), _random_digits(16), None),
    (("statement_period",), _statement_month, None),
    (("region", "segment"), _choice("Northeast", "Midwest", "South", "West"), None),
    (("default", "churned"), _choice("0", "1"), None),
    (("customer_since_year",), _ints(1990, 2025), None),
    (("risk_band",), _choice("A", "B", "C", "D"), None),
)


def _generate(specs: tuple[Spec, ...], *, rows: int, seed: int, keep: float, missing: float) -> tuple[Table, Truth]:
    rng = np.random.default_rng(seed)
    table: Table = {}
    truth: Truth = {}
    for names, gen, kind in specs:
        if rng.random() > keep:
            continue
        free = [n for n in names if n not in table]
        if not free:
            continue
        name = free[int(rng.integers(0, len(free)))]
        cells: Cells = list(gen(rng, rows))
        for i in np.flatnonzero(rng.random(rows) < missing):
            cells[int(i)] = None
        table[name] = cells
        truth[name] = kind
    return table, truth


def patient_table(*, rows: int = 500, seed: int = 0, keep: float = 0.8, missing: float = 0.05) -> tuple[Table, Truth]:
    """A hospital table: planted PHI columns plus clinical and administrative decoys."""
    return _generate(PATIENT_COLUMNS, rows=rows, seed=seed, keep=keep, missing=missing)


def bank_table(*, rows: int = 500, seed: int = 0, keep: float = 0.8, missing: float = 0.05) -> tuple[Table, Truth]:
    """A retail-bank table: planted customer identifiers plus financial decoys."""
    return _generate(BANK_COLUMNS, rows=rows, seed=seed, keep=keep, missing=missing)
