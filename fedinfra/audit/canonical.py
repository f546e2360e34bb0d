"""Canonical JSON (RFC 8785, JCS) for audit entries, with a fast path.

Every leaf of the log is the RFC 8785 serialisation of one entry, so the same entry always
hashes to the same leaf whoever serialises it. For values without floats, without integers
beyond I-JSON's ±(2**53 - 1) and without object keys at or above U+D800, RFC 8785 output is
exactly ``orjson``'s sorted compact output: strings are escaped the same way (RFC 8785
§3.2.2.2) and code-point order equals UTF-16 order below the surrogates (§3.2.3). Other
values take a small encoder of ECMAScript number layout and UTF-16 key order (§3.2.2.3,
§3.2.3). Property tests pin both paths byte for byte to the ``rfc8785`` reference package.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from fedinfra.errors import VerificationError

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer I-JSON (RFC 7493 §2.2) and so RFC 8785 represent exactly."""

_SURROGATES = "\ud800"
_INF = float("inf")


def _needs_reference(value: Any) -> bool:
    """Return whether ``value`` holds anything the fast encoder may render differently."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                continue
            return True
        if kind is dict:
            for key in item:
                if not key.isascii() and max(key) >= _SURROGATES:
                    return True
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        else:
            return True  # floats, subclasses and anything unexpected
    return False


def is_fast_path_safe(value: Any) -> bool:
    """Return whether ``orjson``'s sorted output of ``value`` is its RFC 8785 form."""
    return not _needs_reference(value)


def fast_canonical_json(value: Any) -> bytes:
    """Encode ``value`` with ``orjson`` (caller checked :func:`is_fast_path_safe`).

    Raises
    ------
    ValueError
        If a string is not valid Unicode (a lone surrogate).
    """
    try:
        fast: bytes = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"value has no RFC 8785 form: {exc}") from exc
    return fast


def es6_number(value: float) -> str:
    """Render a finite double as ECMAScript's Number.prototype.toString (RFC 8785 §3.2.2.3).

    Python's ``repr`` already yields the shortest digits that round-trip, as ECMA-262
    §6.1.6.1.20 requires; only the layout differs (no ``.0``, no exponent below 1e21,
    exponent without leading zeros).
    """
    if value != value or value in (_INF, -_INF):
        raise ValueError("value has no RFC 8785 form: NaN and infinities are not JSON")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exp = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp) if exp else 0)  # value = 0.<digits> * 10**point
    significant = digits.lstrip("0")
    point -= len(digits) - len(significant)
    digits = significant.rstrip("0")
    k = len(digits)
    if k <= point <= 21:
        text = digits + "0" * (point - k)
    elif 0 < point <= 21:
        text = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        power = point - 1
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if power > 0 else "-") + str(abs(power))
    return sign + text


def _utf16_order(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _encode(value: Any) -> str:
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ValueError("value has no RFC 8785 form: integer beyond 2**53 - 1 (I-JSON)")
        return str(value)
    if kind is float:
        return es6_number(value)
    if kind is str:
        return fast_canonical_json(value).decode()
    if kind is list or kind is tuple:
        return "[" + ",".join(_encode(item) for item in value) + "]"
    if kind is dict:
        if any(type(key) is not str for key in value):
            raise ValueError("value has no RFC 8785 form: object keys must be strings")
        if all(key.isascii() for key in value):
            members = sorted(value.items())
        else:
            members = sorted(value.items(), key=lambda item: _utf16_order(item[0]))
        return "{" + ",".join(_encode(key) + ":" + _encode(item) for key, item in members) + "}"
    raise ValueError(f"value has no RFC 8785 form: {kind.__name__} is not a JSON type")


def canonical_with_details(value: dict[str, Any]) -> bytes:
    """Encode an audit entry whose fields other than ``details`` are already known safe.

    Only ``details`` may hold floats, so only it goes through the reference encoder when
    needed; its canonical bytes are spliced in place of the ``"details":null`` member.
    That member is unambiguous: keys are sorted, so it follows the ``actor`` object, whose
    values are strings, in which a quote is always escaped (RFC 8785 §3.2.2.2).

    Raises
    ------
    ValueError
        If ``details`` has no RFC 8785 form.
    """
    details = value["details"]
    if not _needs_reference(details):
        return fast_canonical_json(value)
    head = fast_canonical_json({**value, "details": None})
    return head.replace(b'"details":null', b'"details":' + canonical_json(details), 1)


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical JSON bytes of ``value``.

    Raises
    ------
    ValueError
        If ``value`` has no RFC 8785 form (NaN, infinities, integers beyond 2**53, ...).
    """
    if not _needs_reference(value):
        return fast_canonical_json(value)
    return _encode(value).encode()


def _int_or_float(text: str) -> int | float:
    number = int(text)
    return number if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER else float(text)


def parse_canonical(data: bytes) -> Any:
    """Parse ``data`` and check that it is already in RFC 8785 canonical form.

    An integral double of 2**53 or more is written without exponent below 1e21 (RFC 8785
    §3.2.2.3, ECMAScript number-to-string), so it reads back as a big integer; such
    numbers are re-read as doubles before the comparison.

    Raises
    ------
    VerificationError
        If ``data`` is not JSON or not canonical.
    """
    try:
        value = orjson.loads(data)
        try:
            again = canonical_json(value)
        except ValueError:
            value = json.loads(data, parse_int=_int_or_float)
            again = canonical_json(value)
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise VerificationError("entry is not canonical JSON (RFC 8785)") from exc
    if again != data:
        raise VerificationError("entry is not canonical JSON (RFC 8785)")
    return value
