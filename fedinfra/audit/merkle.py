"""RFC 9162 Merkle tree hashing and proofs, as pure functions.

Everything here follows RFC 9162 §2.1 (Certificate Transparency v2, which keeps the tree
of RFC 6962): a leaf hash is ``SHA-256(0x00 || data)`` and an interior node is
``SHA-256(0x01 || left || right)``; the two prefixes keep a leaf from ever being passed
off as a node (second-preimage resistance, RFC 9162 §2.1.1). Trees of any size split at
the largest power of two smaller than the size.

Proof *generation* takes a callback ``mth(lo, hi)`` returning the hash of the subtree over
leaves ``[lo, hi)``; :class:`fedinfra.audit.tree.MerkleTree` answers it in O(log n), and
:func:`subtree_hasher` builds one from a plain list of leaf hashes. Proof *verification*
needs only hashes and sizes and raises :class:`~fedinfra.errors.VerificationError` with one
fixed message per proof kind, so a failure does not say which step broke.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from fedinfra.errors import VerificationError

HASH_SIZE = 32
"""Bytes in a SHA-256 digest, the only hash this log uses."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the empty tree: the hash of the empty string (RFC 9162 §2.1.1)."""

SubtreeHash = Callable[[int, int], bytes]
"""``mth(lo, hi)``: the Merkle tree hash of leaves ``[lo, hi)``, ``0 <= lo < hi``."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 §2.1.1 leaf hash ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 §2.1.1 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def split_point(size: int) -> int:
    """Return the largest power of two strictly smaller than ``size`` (``size >= 2``)."""
    return 1 << ((size - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash of ``leaf_hashes`` (RFC 9162 §2.1.1), iteratively.

    Pairs are combined level by level; an odd last node is carried up unchanged, which
    yields the same root as the recursive split at the largest power of two.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def subtree_hasher(leaf_hashes: Sequence[bytes]) -> SubtreeHash:
    """Return an ``mth(lo, hi)`` callback over an in-memory list of leaf hashes (O(n) a call)."""

    def mth(lo: int, hi: int) -> bytes:
        return root_of(leaf_hashes[lo:hi])

    return mth


def inclusion_path(index: int, size: int, mth: SubtreeHash) -> list[bytes]:
    """Return the inclusion proof of leaf ``index`` in the tree of ``size`` leaves.

    RFC 9162 §2.1.3.1, ``PATH(m, D[n])``, written as a loop from the root down; the
    result is ordered leaf-to-root as the RFC specifies.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index - lo < k:
            path.append(mth(lo + k, hi))
            hi = lo + k
        else:
            path.append(mth(lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_path(old_size: int, new_size: int, mth: SubtreeHash) -> list[bytes]:
    """Return the consistency proof between trees of ``old_size`` and ``new_size`` leaves.

    RFC 9162 §2.1.4.1, ``PROOF(m, D[n]) = SUBPROOF(m, D[n], true)`` for ``0 < m < n``;
    equal sizes, and the empty old tree, need no proof (the empty list).
    """
    if old_size == 0 <= new_size:
        return []
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    path: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while m != hi - lo:
        k = split_point(hi - lo)
        if m <= k:
            path.append(mth(lo + k, hi))
            hi = lo + k
        else:
            path.append(mth(lo, lo + k))
            lo += k
            m -= k
            complete = False
    if not complete:
        path.append(mth(lo, hi))
    path.reverse()
    return path


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """Recompute the root implied by an inclusion proof (RFC 9162 §2.1.3.2, steps 1-4).

    Raises
    ------
    VerificationError
        If the index is outside the tree or the path has the wrong shape.
    """
    if not 0 <= index < size or len(leaf) != HASH_SIZE or any(len(p) != HASH_SIZE for p in path):
        raise VerificationError("inclusion proof does not verify")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise VerificationError("inclusion proof does not verify")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof does not verify")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf`` sits at ``index`` of the tree of ``size`` leaves with ``root``.

    RFC 9162 §2.1.3.2.

    Raises
    ------
    VerificationError
        If the proof does not verify (one message whatever the cause).
    """
    if root_from_inclusion(index, size, leaf, path) != root:
        raise VerificationError("inclusion proof does not verify")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    RFC 9162 §2.1.4.2. Equal sizes need an empty proof and equal roots. Every tree
    extends the empty one, so from size 0 the proof must be empty and the old root must
    be the empty tree's hash, the new one a SHA-256 digest (C2SP tlog-checkpoint allows
    size-0 checkpoints; the transparency-dev verifier accepts an empty proof from size 0).

    Raises
    ------
    VerificationError
        If the proof does not verify (one message whatever the cause).
    """
    bad = VerificationError("consistency proof does not verify")
    if old_size < 0 or new_size < old_size:
        raise bad
    if old_size == 0:
        if path or old_root != EMPTY_ROOT or len(new_root) != HASH_SIZE or (new_size == 0 and new_root != old_root):
            raise bad
        return
    if old_size == new_size:
        if path or old_root != new_root:
            raise bad
        return
    if not path or any(len(p) != HASH_SIZE for p in path):
        raise bad
    nodes = list(path)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is a subtree
        nodes.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            raise bad
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise bad
