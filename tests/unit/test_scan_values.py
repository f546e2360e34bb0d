"""Value-first detection: identifiers under misleading names are found, decoys are not flagged.

Identifier values come from Faker (not from the project's generators); column names are
chosen to say nothing or to mislead.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest
from faker import Faker

from fedinfra.policy.scan import scan_table
from fedinfra.policy.scan._names import is_person_name, text_has_name

ROWS = 300


def _faker(locale: str = "en_US", seed: int = 7) -> Faker:
    f = Faker(locale)
    f.seed_instance(seed)
    return f


def _with_luhn(body: str) -> str:
    """``body`` plus its Luhn check digit (ISO/IEC 7812-1; IMEIs use it too, 3GPP TS 23.003)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def _kind(values: list[str], name: str = "lab_value") -> str | None:
    return scan_table({name: list(values)}).columns[0].identifier


CASES: list[tuple[str, str, Callable[[Faker], str], set[str]]] = [
    ("us_zip", "en_US", lambda f: f.zipcode(), {"zip_code"}),
    ("zip_plus4", "en_US", lambda f: f.zipcode_plus4(), {"zip_code"}),
    ("uk_postcode", "en_GB", lambda f: f.postcode(), {"postal_code"}),
    ("de_postcode", "de_DE", lambda f: f.postcode(), {"zip_code"}),
    ("fr_postcode", "fr_FR", lambda f: f.postcode(), {"zip_code"}),
    ("nl_postcode", "nl_NL", lambda f: f.postcode(), {"postal_code"}),
    ("ie_eircode", "en_IE", lambda f: f.postcode(), {"postal_code"}),
    ("dates_iso", "en_US", lambda f: f.date_of_birth().isoformat(), {"date"}),
    ("dates_us", "en_US", lambda f: f.date_of_birth().strftime("%m/%d/%Y"), {"date"}),
    ("dates_text", "en_US", lambda f: f.date_of_birth().strftime("%d %b %Y"), {"date"}),
    ("dates_compact", "en_US", lambda f: f.date_of_birth().strftime("%Y%m%d"), {"date"}),
    ("vin", "en_US", lambda f: f.vin(), {"vin"}),
    ("plate_gb", "en_GB", lambda f: f.license_plate(), {"vehicle_plate"}),
    ("plate_de", "de_DE", lambda f: f.license_plate(), {"vehicle_plate"}),
    ("plate_fr", "fr_FR", lambda f: f.license_plate(), {"vehicle_plate"}),
    ("plate_nl", "nl_NL", lambda f: f.license_plate(), {"vehicle_plate"}),
    ("plate_us", "en_US", lambda f: f.license_plate(), {"vehicle_plate"}),
    ("plate_it", "it_IT", lambda f: f.license_plate(), {"vehicle_plate"}),
    ("plate_es", "es_ES", lambda f: f.license_plate(), {"vehicle_plate"}),
    ("plate_ie", "en_IE", lambda f: f.license_plate(), {"vehicle_plate"}),
    # Medicare Beneficiary Identifier layout (CMS): C A AN N A AN N A A N N, no S L O I B Z.
    ("mbi", "en_US", lambda f: f.bothify("%?##-?##-??##", letters="ACDEFGHJKMNPQRTUVWXY"), {"mbi"}),
    ("imei", "en_US", lambda f: _with_luhn(f.numerify("35############")), {"imei"}),
    ("record_number", "en_US", lambda f: f.bothify("MRN-#######"), {"record_number"}),
    ("account_bban", "en_GB", lambda f: f.bban(), {"record_number"}),
    ("passport", "en_US", lambda f: f.passport_number(), {"record_number"}),
    ("serial", "en_US", lambda f: f.bothify("SN-????-########", letters="ABCDEFGHJKLMNPRSTUVWXYZ"), {"record_number"}),
    ("ssn", "en_US", lambda f: f.ssn(), {"ssn"}),
    ("iban", "de_DE", lambda f: f.iban(), {"iban"}),
    ("card", "en_US", lambda f: f.credit_card_number(), {"card_number"}),
    ("email", "en_US", lambda f: f.email(), {"email"}),
    ("phone", "en_GB", lambda f: f.phone_number(), {"phone"}),
    ("phone_mixed_formats", "it_IT", lambda f: f.phone_number(), {"phone"}),
    ("url", "en_US", lambda f: f.url(), {"url"}),
    ("ipv4", "en_US", lambda f: f.ipv4(), {"ip_address"}),
    ("ipv6", "en_US", lambda f: f.ipv6(), {"ip_address"}),
    ("mac", "en_US", lambda f: f.mac_address(), {"mac_address"}),
    ("photo_file", "en_US", lambda f: f.file_path(depth=2, category="image"), {"photo_reference"}),
    ("full_name", "fr_FR", lambda f: f.name(), {"name"}),
    ("given_names", "de_DE", lambda f: f.first_name(), {"name"}),
    ("surnames", "it_IT", lambda f: f.last_name(), {"name"}),
    ("street_address", "en_US", lambda f: f.street_address(), {"geography"}),
    ("street_de", "de_DE", lambda f: f.street_address(), {"geography"}),
]


@pytest.mark.parametrize(("case", "locale", "gen", "kinds"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("column", ["lab_value", "col_07"])
def test_identifier_is_found_by_its_values_under_a_misleading_name(
    case: str, locale: str, gen: Callable[[Faker], str], kinds: set[str], column: str
) -> None:
    f = _faker(locale)
    values = [gen(f) for _ in range(ROWS)]
    assert _kind(values, column) in kinds


def test_ages_above_89_under_a_neutral_name_are_flagged() -> None:
    r = random.Random(1)
    ages = [str(round(r.triangular(0, 100, 55))) for _ in range(ROWS)]
    assert any(int(a) > 89 for a in ages)
    column = scan_table({"value_3": ages}).columns[0]
    assert column.identifier == "age_over_89"
    assert column.quasi_identifier


@pytest.mark.parametrize(
    ("decoy", "values"),
    [
        ("ages at most 89", [str(random.Random(2).randint(18, 89)) for _ in range(ROWS)]),
        ("lab values", [f"{random.Random(i).gauss(100, 15):.1f}" for i in range(ROWS)]),
        (
            "icd10 codes",
            [random.Random(i).choice(["E11.9", "I10", "J45.909", "K21.9", "M54.5", "Z00.00"]) for i in range(ROWS)],
        ),
        ("years", [str(random.Random(i).randint(1950, 2020)) for i in range(ROWS)]),
        ("year-month", [f"20{10 + i % 14}-{1 + i % 12:02d}" for i in range(ROWS)]),
        ("row index", [str(i) for i in range(ROWS)]),
        ("shuffled 5-digit row ids", [str(v) for v in random.Random(3).sample(range(10_000, 10_000 + ROWS), ROWS)]),
        ("product codes (GTIN)", [_faker(seed=4).ean13() for _ in range(ROWS)]),
        ("countries", [_faker(seed=5).country() for _ in range(ROWS)]),
        ("companies", [_faker(seed=6).company() for _ in range(ROWS)]),
        ("jobs", [_faker(seed=6).job() for _ in range(ROWS)]),
        ("lot codes with one prefix", [f"BR-{random.Random(i).randint(100, 999)}" for i in range(ROWS)]),
        ("sentences", [_faker(seed=8).sentence(nb_words=8) for _ in range(ROWS)]),
        ("minutes with many zeros", [str(random.Random(i).choice([0, 0, 0, 15, 30, 45, 60, 95])) for i in range(ROWS)]),
    ],
)
def test_decoy_is_not_flagged(decoy: str, values: list[str]) -> None:
    assert _kind(values, "col_1") is None, decoy


def test_a_matching_name_raises_confidence_and_a_measurement_name_lowers_it_for_weak_rules() -> None:
    r = random.Random(9)
    fives = [f"{r.randint(10_000, 99_999)}" for _ in range(ROWS)]  # no leading zero: a weak postal shape
    plain = scan_table({"v": fives}).columns[0]
    named = scan_table({"zip": fives}).columns[0]
    money = scan_table({"amount_usd": fives}).columns[0]
    assert named.identifier == "zip_code"
    assert named.confidence > plain.confidence
    assert money.identifier is None


def test_names_inside_free_text_are_found() -> None:
    assert text_has_name("Patient John Doe seen on 3 March, stable.")
    assert text_has_name("Discussed results with daughter Mary by phone")
    assert text_has_name("Labs reviewed together with Maria Lopez yesterday")
    assert not text_has_name("Patient stable. Will review in two weeks.")
    assert not text_has_name("Mark the chart and continue current regimen")


def test_free_text_column_with_names_is_flagged() -> None:
    f = _faker(seed=10)
    notes = [f"Patient {f.name()} seen today." if i % 5 == 0 else f.sentence(nb_words=9) for i in range(ROWS)]
    column = scan_table({"comment": notes}).columns[0]
    assert column.identifier == "free_text"
    assert 0.1 < column.share < 0.4


def test_person_name_rule_rejects_organisations() -> None:
    assert is_person_name("Lisa de Bruijn")
    assert is_person_name("Dr. Mary Smith")
    assert not is_person_name("Smith, Jones and Brown")
    assert not is_person_name("Johnson Group")


def test_findings_carry_type_confidence_share_and_rule_but_never_a_value() -> None:
    f = _faker(seed=11)
    table = {"col_a": [f.ssn() for _ in range(50)], "col_b": [f.name() for _ in range(50)]}
    summary = scan_table(table)
    for column in summary.columns:
        assert column.identifier is not None
        assert 0.5 <= column.confidence <= 1.0
        assert 0 < column.share <= 1
        assert column.rule
    text = json.dumps(summary.model_dump())
    assert not [v for values in table.values() for v in values if v in text]


def test_k_anonymity_uses_quasi_identifiers_found_by_values() -> None:
    r = random.Random(12)
    table = {
        "c1": [r.choice("MF") for _ in range(ROWS)],
        "c2": [str(r.randint(20, 80)) for _ in range(ROWS)],
        "c3": [f"{r.gauss(5, 1):.2f}" for _ in range(ROWS)],
    }
    summary = scan_table(table)
    assert summary.quasi_identifiers == ["c1", "c2"]
    assert summary.k_anonymity is not None
    assert summary.k_anonymity < 5


def test_quasi_identifiers_outside_training_do_not_count() -> None:
    r = random.Random(13)
    table = {"c1": [r.choice("MF") for _ in range(ROWS)], "c2": [str(r.randint(20, 80)) for _ in range(ROWS)]}
    summary = scan_table(table, training_columns=["c1"])
    assert summary.quasi_identifiers == ["c1"]
    assert summary.k_anonymity is not None
    assert summary.k_anonymity > 100


def test_the_independent_evaluation_set_scores_at_least_095() -> None:
    import phi_evalset

    tp = fp = fn = 0
    for table, truth, _ in phi_evalset.evaluation_tables(5, rows=200, tables=2):
        for col in scan_table(table).columns:
            got = phi_evalset.KIND_FAMILY.get(col.identifier) if col.identifier else None
            want = truth[col.column]
            tp += want is not None and got == want
            fp += got is not None and got != want
            fn += want is not None and got != want
    assert tp / (tp + fp) >= 0.95
    assert tp / (tp + fn) >= 0.95


def test_a_name_saying_the_number_belongs_to_a_thing_keeps_a_record_shape_unflagged() -> None:
    # The trade-off of a weak rule: near-unique ids under "specimen"/"sample"/"transaction"
    # are the thing's own numbers far more often than patients' numbers; bench/phi.py counts
    # what such names cost.
    f = _faker(seed=14)
    values = [f.bothify("MRN-#######") for _ in range(ROWS)]
    assert _kind(values, "specimen_id") is None
    assert _kind(values, "mrn") == "medical_record_number"


@pytest.mark.parametrize("name", ["batch_05", "lot_number", "run_id"])
def test_a_group_noun_does_not_hide_a_near_unique_number(name: str) -> None:
    # Many rows share one lot or batch; a column of near-unique numbers under such a name
    # contradicts its name, so the values decide (164.514(b)(2)(i)(H)-(K)).
    f = _faker(seed=15)
    for values in ([f.bothify("MRN-#######") for _ in range(ROWS)], [f.passport_number() for _ in range(ROWS)]):
        assert _kind(values, name) == "record_number"


def test_a_lot_code_stamped_with_its_year_and_month_is_still_not_a_record_number() -> None:
    r = random.Random(16)
    values = [f"L{r.randint(2019, 2024)}{r.randint(1, 12):02d}-{r.randint(0, 99999):05d}" for _ in range(ROWS)]
    assert _kind(values, "batch_05") is None
    assert _kind(values, "col_3") is None
