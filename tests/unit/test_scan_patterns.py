"""Identifier validators against published example numbers, and column-name tokens."""

from __future__ import annotations

import pytest

from fedinfra.policy.scan import _patterns as p
from fedinfra.policy.scan._detectors import tokens


@pytest.mark.parametrize(
    "number", ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117", "4111 1111 1111 1111"]
)
def test_published_test_card_numbers_are_cards(number: str) -> None:
    assert p.is_card_number(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "411111111111"])
def test_bad_check_digit_or_length_is_not_a_card(number: str) -> None:
    assert not p.is_card_number(number)


@pytest.mark.parametrize("iban", ["GB82WEST12345698765432", "DE89 3704 0044 0532 0130 00", "NL91ABNA0417164300"])
def test_iso_13616_example_ibans_validate(iban: str) -> None:
    assert p.is_iban(iban)


def test_iban_with_a_wrong_check_digit_fails() -> None:
    assert not p.is_iban("GB83WEST12345698765432")


def test_vin_check_digit() -> None:
    assert p.is_vin("1M8GDM9AXKP042788")
    assert not p.is_vin("1M8GDM9A1KP042788")


def test_imei_luhn_example() -> None:
    assert p.is_imei("490154203237518")
    assert not p.is_imei("490154203237519")


@pytest.mark.parametrize(
    ("ssn", "ok"),
    [
        ("078-05-1120", True),
        ("666-12-3456", False),
        ("912-12-3456", False),
        ("123-00-4567", False),
        ("123-45-0000", False),
        ("000-45-6789", False),
    ],
)
def test_ssn_never_issued_ranges(ssn: str, ok: bool) -> None:
    assert p.is_ssn(ssn) is ok


@pytest.mark.parametrize("value", ["(212) 555-0147", "212-555-0147", "+1 212 555 0147", "+44 20 7946 0958"])
def test_phone_formats(value: str) -> None:
    assert p.is_phone(value)


@pytest.mark.parametrize("value", ["2124", "5.5", "078-05-1120", "2023-04-15"])
def test_not_phones(value: str) -> None:
    assert not p.is_phone(value)


@pytest.mark.parametrize(
    "value", ["2023-04-15", "04/15/2023", "15.04.2023", "12-Jan-2020", "Jan 5, 2021", "2023-04-15T10:20:00"]
)
def test_dates_more_precise_than_the_year(value: str) -> None:
    assert p.is_date(value)


@pytest.mark.parametrize("value", ["2023", "2023-13-01", "20230415", "L2023-0415-B", "2023-Q2", "7.25", "E11.9"])
def test_years_codes_and_invalid_dates_are_not_dates(value: str) -> None:
    assert not p.is_date(value)


def test_ip_addresses() -> None:
    assert p.is_ip("192.0.2.1")
    assert p.is_ip("2001:db8::1")
    assert not p.is_ip("1.2.3")


def test_free_text_with_embedded_identifiers() -> None:
    assert p.has_embedded_identifier("Called Mr. Smith about results")
    assert p.has_embedded_identifier("reach me at jo@example.org")
    assert not p.has_embedded_identifier("Patient stable, continue current regimen.")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PatientDOB", {"patient", "birth", "date"}),
        ("zip_code", {"zip", "code"}),
        ("EmailAddress", {"email", "address"}),
        ("lastName", {"last", "name"}),
        ("MRN", {"mrn"}),
    ],
)
def test_column_names_split_into_tokens(name: str, expected: set[str]) -> None:
    assert tokens(name) == expected
