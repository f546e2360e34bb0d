"""Hypothesis: every RFC 9162 proof the log generates verifies, and any flipped bit breaks it."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedinfra.audit.merkle import (
    inclusion_path,
    leaf_hash,
    root_of,
    subtree_hasher,
    verify_consistency,
    verify_inclusion,
)
from fedinfra.audit.tree import CompactRange, MerkleTree
from fedinfra.errors import VerificationError

MAX = 300
_TREE = MerkleTree(leaf_hash(i.to_bytes(4, "big")) for i in range(MAX))
_LEAVES = [_TREE.leaf(i) for i in range(MAX)]


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


@st.composite
def index_and_size(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX))
    return draw(st.integers(0, size - 1)), size


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(2, MAX))
    return draw(st.integers(1, new - 1)), new


@given(index_and_size())
def test_every_inclusion_proof_verifies(case: tuple[int, int]) -> None:
    index, size = case
    proof = _TREE.inclusion_proof(index, size)

    verify_inclusion(index, size, _LEAVES[index], proof, _TREE.root(size))


@given(two_sizes())
def test_every_consistency_proof_verifies(case: tuple[int, int]) -> None:
    old, new = case

    verify_consistency(old, new, _TREE.root(old), _TREE.root(new), _TREE.consistency_proof(old, new))


@given(index_and_size(), st.integers(0, 2**16), st.sampled_from(["proof", "root", "leaf"]))
def test_flipping_any_bit_breaks_an_inclusion_proof(case: tuple[int, int], bit: int, part: str) -> None:
    index, size = case
    proof, root, leaf = _TREE.inclusion_proof(index, size), _TREE.root(size), _LEAVES[index]
    if part == "proof" and proof:
        k = bit % len(proof)
        proof[k] = _flip(proof[k], bit // len(proof))
    elif part == "root":
        root = _flip(root, bit)
    else:  # the leaf (also when a one-leaf tree has no proof to flip)
        leaf = _flip(leaf, bit)

    with pytest.raises(VerificationError):
        verify_inclusion(index, size, leaf, proof, root)


@given(two_sizes(), st.integers(0, 2**16), st.sampled_from(["proof", "old_root", "new_root"]))
def test_flipping_any_bit_breaks_a_consistency_proof(case: tuple[int, int], bit: int, part: str) -> None:
    old, new = case
    proof, old_root, new_root = _TREE.consistency_proof(old, new), _TREE.root(old), _TREE.root(new)
    if part == "proof":
        k = bit % len(proof)
        proof[k] = _flip(proof[k], bit // len(proof))
    elif part == "old_root":
        old_root = _flip(old_root, bit)
    else:
        new_root = _flip(new_root, bit)

    with pytest.raises(VerificationError):
        verify_consistency(old, new, old_root, new_root, proof)


@settings(max_examples=50)
@given(st.integers(0, MAX))
def test_the_three_root_computations_agree(size: int) -> None:
    compact = CompactRange()
    for leaf in _LEAVES[:size]:
        compact.append(leaf)

    assert _TREE.root(size) == root_of(_LEAVES[:size]) == compact.root()


@settings(max_examples=50)
@given(index_and_size())
def test_the_tree_and_the_list_give_the_same_proofs(case: tuple[int, int]) -> None:
    index, size = case

    assert _TREE.inclusion_proof(index, size) == inclusion_path(index, size, subtree_hasher(_LEAVES[:size]))


@settings(max_examples=30)
@given(st.integers(1, MAX), st.integers(0, MAX))
def test_truncating_the_tree_restores_its_earlier_state(size: int, cut: int) -> None:
    cut = min(cut, size)
    tree = MerkleTree(_LEAVES[:size])

    tree.truncate(cut)

    assert tree.size == cut
    assert tree.root() == _TREE.root(cut)
    tree.append(hashlib.sha256(b"x").digest())
    assert tree.size == cut + 1
