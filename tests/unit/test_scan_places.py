"""Cities, towns and counties are found by their values (45 CFR 164.514(b)(2)(i)(B)).

Town names come from Faker locales that list real towns and from a real statsmodels table,
not from the shipped GeoNames list; column names say nothing or mislead. Decoys are the
look-alikes a place list trips over: surnames that are also towns, states and countries
(not below state level), and category labels of which a few are town names.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from faker import Faker

from fedinfra.policy.scan import scan_table
from fedinfra.policy.scan._places import is_place, normalise, place_lists, text_has_place

ROWS = 300


def _faker(locale: str, seed: int = 21) -> Faker:
    f = Faker(locale)
    f.seed_instance(seed)
    return f


def _many(locale: str, method: str, seed: int = 21) -> list[str]:
    f = _faker(locale, seed)
    return [str(getattr(f, method)()) for _ in range(ROWS)]


def _column(values: list[str], name: str) -> tuple[str | None, bool]:
    col = scan_table({name: list(values)}).columns[0]
    return col.identifier, col.quasi_identifier


TOWNS: list[tuple[str, Callable[[], list[str]]]] = [
    *[
        (f"towns {loc}", lambda loc=loc: _many(loc, "city"))  # type: ignore[misc]
        for loc in ("de_DE", "es_ES", "pl_PL", "cs_CZ", "pt_PT", "fi_FI")
    ],
    ("irish counties", lambda: _many("en_IE", "county")),
    ("italian provinces", lambda: _many("it_IT", "state")),
    (
        "chinese cities (statsmodels china_smoking)",
        lambda: [
            str(v)
            for v in random.Random(3).choices(
                list(__import__("statsmodels.api").api.datasets.china_smoking.load_pandas().data.index), k=ROWS
            )
        ],
    ),
    (
        "us counties with their suffix",
        lambda: random.Random(4).choices(
            ["Cook County", "Harris County", "Maricopa County", "King County", "Orleans Parish", "Travis County"],
            k=ROWS,
        ),
    ),
]


@pytest.mark.parametrize(("case", "gen"), TOWNS, ids=[t[0] for t in TOWNS])
@pytest.mark.parametrize("name", ["lab_value", "col_07", "category_3"])
def test_towns_and_counties_are_found_by_their_values_under_any_name(
    case: str, gen: Callable[[], list[str]], name: str
) -> None:
    kind, quasi = _column(gen(), name)
    assert kind == "city", case
    assert quasi  # a place below state level is a quasi-identifier too (k-anonymity)


def test_an_honestly_named_town_column_is_a_city_finding_not_just_the_name_hint() -> None:
    values = _many("de_AT", "city")
    col = scan_table({"Wohnort": values, "city": values}).columns
    assert [c.identifier for c in col] == ["city", "city"]
    assert col[1].basis == "name+values"


@pytest.mark.parametrize(
    ("decoy", "gen", "allowed"),
    [
        # 70% of these surnames are some town's name ("Houston", "Jackson"): still names.
        ("us surnames", lambda: _many("en_US", "last_name"), {"name"}),
        ("gb surnames", lambda: _many("en_GB", "last_name"), {"name"}),
        ("us given names", lambda: _many("en_US", "first_name"), {"name"}),
        ("es surnames", lambda: _many("es_ES", "last_name"), {"name"}),
        ("us states", lambda: _many("en_US", "state"), {None}),
        ("german states", lambda: _many("de_DE", "state"), {None}),
        ("dutch provinces", lambda: _many("nl_NL", "province"), {None}),
        ("countries", lambda: _many("en_US", "country"), {None}),
        ("companies", lambda: _many("en_US", "company"), {None}),
        ("colours", lambda: _many("en_US", "color_name"), {None}),
        (
            "ward labels, three of nine town names",
            lambda: random.Random(5).choices(
                ["Cardiology", "Oncology", "Orange", "Surgery", "Reading", "Mobile", "Emergency", "ICU", "Radiology"],
                k=ROWS,
            ),
            {None},
        ),
        (
            "sex labels (Malé is a capital)",
            lambda: random.Random(6).choices(["Male", "Female"], k=ROWS),
            {None},
        ),
        (
            "compass wards",
            lambda: random.Random(7).choices(["North", "South", "East", "West", "Central"], k=ROWS),
            {None},
        ),
    ],
)
def test_place_look_alikes_are_not_cities(decoy: str, gen: Callable[[], list[str]], allowed: set[str | None]) -> None:
    kind, _ = _column(gen(), "col_1")
    assert kind in allowed, decoy


def test_a_name_saying_the_place_is_a_things_lowers_confidence() -> None:
    values = _many("sv_SE", "city")
    person = scan_table({"v": values}).columns[0]
    branch = scan_table({"branch_site": values}).columns[0]
    assert person.identifier == "city"
    assert branch.confidence < person.confidence


def test_place_values_are_normalised_and_qualified_forms_are_known() -> None:
    assert normalise("Saint-Étienne") == normalise("St. Etienne") == "st etienne"
    assert normalise("Meißen") == "meissen"
    for value in ("Springfield, IL", "Lyon (Rhône)", "Cook Co.", "County Cork", "MÜNCHEN", "Frankfurt am Main"):
        assert is_place(value), value
    for value in ("Georgia", "Washington", "Bavaria", "12345 Berlin", "Cardiology"):
        assert not is_place(value), value


def test_the_shipped_list_has_cities_and_counties_and_no_states_or_countries() -> None:
    cities, counties, bare = place_lists()
    assert len(cities) > 100_000
    assert "cook county" in counties
    assert "cook" in bare
    assert {"texas", "germany", "france", "new jersey"}.isdisjoint(cities)


@pytest.mark.parametrize(
    "text",
    [
        "Patient lives in Leeds with her son.",
        "Moved to Frankfurt am Main last year.",
        "Pt is a resident of Cook County, on insulin.",
        "Born in Saint-Étienne, no allergies.",
        "Referred from Guadalajara for a second opinion.",
    ],
)
def test_a_place_of_residence_inside_free_text_is_found(text: str) -> None:
    assert text_has_place(text)


@pytest.mark.parametrize(
    "text",
    [
        "Referred from March clinic notes.",
        "Moved to ICU overnight, stable.",
        "Lives alone, independent with ADLs.",
        "Reading glasses prescribed.",
        "Symptoms from Monday to Friday.",
    ],
)
def test_words_after_a_residence_phrase_that_are_not_places_are_not_found(text: str) -> None:
    assert not text_has_place(text)


def test_a_notes_column_that_names_where_patients_live_is_flagged() -> None:
    f = _faker("en_GB", seed=22)
    towns = _many("pl_PL", "city", seed=23)
    notes = [
        f"{f.sentence(nb_words=9)} Lives in {towns[i]}." if i % 4 == 0 else f.sentence(nb_words=9) for i in range(ROWS)
    ]
    col = scan_table({"comment": notes}).columns[0]
    assert col.identifier == "free_text"
    assert 0.15 < col.share < 0.35
