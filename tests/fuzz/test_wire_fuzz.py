"""Fuzzed wire: every decoder either rejects clearly or decodes faithfully (issue 16).

Inputs are random bytes and mutations of valid encodings (bit flips, byte changes,
truncation, insertion, splices). Property for every decoder: the call returns within the
deadline, and either raises a clear rejection (fedinfra's error tree or a pydantic
validation error) or returns a value that is faithful to the bytes (see
``decoders.py``). Any other exception - an ``OverflowError``, a ``MemoryError``, a
``KeyError`` - fails the test, as does a hang.

The default run tries :data:`QUICK` cases per decoder; ``-m slow`` runs :data:`FULL`.
Each test prints how many cases its decoder saw.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.decoders import REJECTIONS, Decoder, build

QUICK = 200
FULL = 10_000

DECODERS = {d.name: d for d in build()}


HOSTILE = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**53, 2**60, 10**15, 10**400, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e308, 3.5e38, float("nan"), float("inf")]),
    st.text(max_size=1500),
    st.sampled_from(["x", "Evil Site", "../../etc/passwd", "\x00", ""]),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=80),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _paths(doc: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    return out


def _grammar(draw: st.DrawFn, seed: bytes) -> bytes | None:
    """A JSON seed with one field (or a new one) set to a hostile value."""
    try:
        doc = json.loads(seed)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    paths = _paths(doc)
    path = draw(st.sampled_from(paths))
    target = doc
    for key in path[:-1]:
        target = target[key]
    key = path[-1] if draw(st.integers(0, 4)) else draw(st.text(min_size=1, max_size=8))
    target[key] = draw(HOSTILE)
    return json.dumps(doc).encode()


@st.composite
def _inputs(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.binary(max_size=512))
    seed = draw(st.sampled_from(seeds))
    if choice <= 4:
        doc = _grammar(draw, seed)
        if doc is not None:
            return doc
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 5))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == 0 and data:  # flip one bit
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and data:  # replace a byte
            data[at] = draw(st.integers(0, 255))
        elif op == 2:  # truncate
            del data[at:]
        elif op == 3:  # insert bytes
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == 4 and data:  # delete a span
            del data[at : at + draw(st.integers(1, 16))]
        else:  # splice in a digit-heavy or boundary token (JSON/TOML numbers, lengths)
            token = draw(st.sampled_from([b"9" * 400, b"1e999", b"-1e308", b"NaN", b"\xff\xff\xff\xff", b"0", b"null"]))
            data[at:at] = token
    return bytes(data)


def _run(decoder: Decoder, cases: int) -> int:
    count = 0

    @settings(
        max_examples=cases,
        deadline=2000,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=_inputs(decoder.seeds))
    def check(data: bytes) -> None:
        nonlocal count
        count += 1
        try:
            value: Any = decoder.decode(data)
        except REJECTIONS:
            return
        assert decoder.faithful(data, value), f"{decoder.name}: accepted tampered input as something else"

    check()
    return count


def test_every_seed_decodes() -> None:
    for decoder in DECODERS.values():
        for seed in decoder.seeds:
            assert decoder.faithful(seed, decoder.decode(seed)), decoder.name


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_rejects_clearly_or_decodes_faithfully(name: str) -> None:
    count = _run(DECODERS[name], QUICK)
    print(f"fuzz {name}: {count} cases")
    assert count >= QUICK


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_survives_ten_thousand_cases(name: str) -> None:
    count = _run(DECODERS[name], FULL)
    print(f"fuzz {name}: {count} cases")
    assert count >= FULL


@pytest.mark.parametrize(
    ("name", "data"),
    [
        # Found by the 10,000-case run: a non-zero pad byte decoded to the same update
        # (two blobs, one update: the audited hash would not identify the update).
        (
            "compressed update",
            b"FQ\x01\x08\x00\x01\x08\x04\x02\x81@ \x80?\x17\x00\x00\x00\x17\x00\x00\x00?K\x92\x07\xe4A5+"
            b"\x04\xfc\x14\x03\xf0\x0b'\x1d\xeb\xda\xed\x01\xba\xf9\xda\xea\xf0\xf6\r \xfc*\xec",
        ),
        # Found by the 10,000-case run: a sparse bitmap with a padding bit set past ``dim``.
        (
            "compressed update",
            b"FQ\x01\x04\x03\x00\x92$I\x92$I\xc2?\x17\x00\x00\x00\x07\x00\x00\x00?K\x92\x07\xe4A5+"
            b"\xc0R\xa8\x02\x02\xfe\xfd\xfe\x02\x03",
        ),
        # Found by the 10,000-case run: .npy format version 1.1, which numpy itself refuses.
        (
            "record (.npy tensor)",
            b"\x93NUMPY\x01\x01v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"
            + b" " * 58 + b"\n" + np.arange(12, dtype=np.float32).tobytes(),
        ),
    ],
)
def test_inputs_the_long_fuzz_run_found_are_rejected(name: str, data: bytes) -> None:
    with pytest.raises(REJECTIONS):
        DECODERS[name].decode(data)
