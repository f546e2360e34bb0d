"""RFC 9162 proofs against the transparency-dev Merkle test vectors (tests/vectors/merkle)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from fedinfra.audit.merkle import (
    EMPTY_ROOT,
    consistency_path,
    inclusion_path,
    leaf_hash,
    root_of,
    subtree_hasher,
    verify_consistency,
    verify_inclusion,
)
from fedinfra.errors import VerificationError

VECTORS = Path(__file__).parent.parent / "vectors" / "merkle"


def _load(kind: str) -> list[Any]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [pytest.param(json.loads(f.read_text()), id=str(f.relative_to(VECTORS))) for f in files]


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def _hashes(items: list[str] | None) -> list[bytes]:
    return [_b(x) for x in items or []]


INCLUSION = _load("inclusion")
CONSISTENCY = _load("consistency")


def test_the_vector_directory_holds_every_case() -> None:
    assert len(INCLUSION) > 60
    assert len(CONSISTENCY) > 60


@pytest.mark.parametrize("case", INCLUSION)
def test_inclusion_vector(case: dict[str, Any]) -> None:
    def run() -> None:
        verify_inclusion(
            case["leafIdx"], case["treeSize"], _b(case["leafHash"]), _hashes(case["proof"]), _b(case["root"])
        )

    if case["wantErr"]:
        with pytest.raises(VerificationError):
            run()
    else:
        run()


@pytest.mark.parametrize("case", CONSISTENCY)
def test_consistency_vector(case: dict[str, Any]) -> None:
    def run() -> None:
        verify_consistency(
            case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]), _hashes(case["proof"])
        )

    if case["wantErr"]:
        with pytest.raises(VerificationError):
            run()
    else:
        run()


# The vectors' happy paths are proofs over the 8-leaf reference tree of RFC 6962's test data.
REFERENCE_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]


def _happy(cases: list[Any], size_key: str) -> list[Any]:
    return [c for c in cases if not c.values[0]["wantErr"] and c.values[0]["proof"] and c.values[0][size_key] <= 8]


@pytest.mark.parametrize("data", _happy(INCLUSION, "treeSize"))
def test_generated_inclusion_proofs_equal_the_vectors(data: dict[str, Any]) -> None:
    leaves = [leaf_hash(x) for x in REFERENCE_LEAVES[: data["treeSize"]]]
    assert root_of(leaves) == _b(data["root"])
    assert inclusion_path(data["leafIdx"], data["treeSize"], subtree_hasher(leaves)) == _hashes(data["proof"])


@pytest.mark.parametrize("case", _happy(CONSISTENCY, "size2"))
def test_generated_consistency_proofs_equal_the_vectors(case: dict[str, Any]) -> None:
    leaves = [leaf_hash(x) for x in REFERENCE_LEAVES[: case["size2"]]]
    assert root_of(leaves[: case["size1"]]) == _b(case["root1"])
    assert consistency_path(case["size1"], case["size2"], subtree_hasher(leaves)) == _hashes(case["proof"])


def test_the_empty_tree_hashes_to_the_hash_of_nothing() -> None:
    assert root_of([]) == EMPTY_ROOT
    assert _b("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=") == EMPTY_ROOT
