"""Hypothesis: the fast canonical encoder is byte-identical to the RFC 8785 reference."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from fedinfra.audit.canonical import canonical_json, canonical_with_details, es6_number, parse_canonical
from fedinfra.errors import VerificationError

SAFE = 2**53 - 1
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-SAFE, SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_equals_the_reference_encoder(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@given(json_values)
def test_canonical_bytes_parse_back_as_canonical(value: Any) -> None:
    data = canonical_json(value)

    assert canonical_json(parse_canonical(data)) == data


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers(0, 10), min_size=2, max_size=5))
def test_reordered_keys_are_not_canonical(value: dict[str, int]) -> None:
    data = canonical_json(value)
    reordered = b"{" + b",".join(reversed(data[1:-1].split(b","))) + b"}"

    if reordered != data:
        with pytest.raises(VerificationError):
            parse_canonical(reordered)


@pytest.mark.parametrize("value", [2**53, -(2**53), float("nan"), float("inf")])
def test_values_outside_i_json_have_no_canonical_form(value: Any) -> None:
    with pytest.raises(ValueError, match="RFC 8785"):
        canonical_json(value)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.text(), st.integers(0, SAFE))
def test_an_entry_with_any_details_encodes_as_the_reference(details: dict[str, Any], text: str, seq: int) -> None:
    entry = {
        "seq": seq, "ts": text, "run_id": None, "round": 1, "type": "run.created",
        "actor": {"kind": "site", "id": text, "key_id": None}, "outcome": "success", "subject": None,
        "details": details,
    }
    assert canonical_with_details(entry) == rfc8785.dumps(entry)


@settings(max_examples=1000)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_double_renders_as_ecmascript_does(value: float) -> None:
    assert es6_number(value).encode() == rfc8785.dumps(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.5, "0.5"), (2.0, "2"), (-0.0, "0"), (1e-7, "1e-7"), (1e-6, "0.000001"), (1e21, "1e+21"),
     (1e20, "100000000000000000000"), (123.456, "123.456"), (5e-324, "5e-324"), (2.0**53, "9007199254740992")],
)
def test_known_doubles_render_as_ecmascript_does(value: float, text: str) -> None:
    assert es6_number(value) == text
