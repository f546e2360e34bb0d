"""In-memory Merkle trees: a full tree for proofs and a compact range for streaming roots.

These are the thin stateful shells around :mod:`fedinfra.audit.merkle`. :class:`MerkleTree`
keeps every complete, aligned subtree hash (``2n`` hashes, 64 bytes per leaf) so roots and
proofs cost O(log n); :class:`CompactRange` keeps only the O(log n) "mountain" peaks and is
what the verifier streams a million entries through.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedinfra.audit.merkle import EMPTY_ROOT, HASH_SIZE, consistency_path, inclusion_path, node_hash, split_point


class MerkleTree:
    """An append-only Merkle tree over leaf hashes (RFC 9162 §2.1).

    ``levels[h]`` holds the hashes of the complete subtrees of ``2**h`` leaves, left to
    right, as one packed ``bytearray``.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        for leaf in leaf_hashes:
            self.append(leaf)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._size

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash, completing every subtree it closes."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, got {len(leaf)}")
        self._levels[0] += leaf
        self._size += 1
        count, height, node = self._size, 0, leaf
        while count % 2 == 0:
            left = self._node(height, count - 2)
            node = node_hash(left, node)
            height += 1
            count //= 2
            if height == len(self._levels):
                self._levels.append(bytearray())
            self._levels[height] += node

    def truncate(self, size: int) -> None:
        """Drop every leaf from ``size`` on (undo appends whose transaction failed)."""
        if not 0 <= size <= self._size:
            raise ValueError(f"cannot truncate a tree of size {self._size} to {size}")
        for height, level in enumerate(self._levels):
            del level[(size >> height) * HASH_SIZE :]
        self._size = size

    def _node(self, height: int, index: int) -> bytes:
        start = index * HASH_SIZE
        return bytes(self._levels[height][start : start + HASH_SIZE])

    def leaf(self, index: int) -> bytes:
        """Return the hash of leaf ``index``."""
        if not 0 <= index < self._size:
            raise IndexError(f"leaf {index} is outside a tree of size {self._size}")
        return self._node(0, index)

    def subtree(self, lo: int, hi: int) -> bytes:
        """Return the Merkle tree hash of leaves ``[lo, hi)`` (``0 <= lo < hi <= size``)."""
        if not 0 <= lo < hi <= self._size:
            raise ValueError(f"no subtree [{lo}, {hi}) in a tree of size {self._size}")
        width = hi - lo
        if width & (width - 1) == 0 and lo % width == 0:
            return self._node(width.bit_length() - 1, lo // width)
        k = split_point(width)
        return node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        """Return the root of the tree's first ``size`` leaves (default: all)."""
        size = self._size if size is None else size
        if not 0 <= size <= self._size:
            raise ValueError(f"tree size {size} is outside 0..{self._size}")
        return EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Return the RFC 9162 §2.1.3 inclusion proof of leaf ``index`` in the tree of ``size``."""
        if size > self._size:
            raise ValueError(f"tree size {size} exceeds the log size {self._size}")
        return inclusion_path(index, size, self.subtree)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Return the RFC 9162 §2.1.4 consistency proof from ``old_size`` to ``new_size``."""
        if new_size > self._size:
            raise ValueError(f"tree size {new_size} exceeds the log size {self._size}")
        return consistency_path(old_size, new_size, self.subtree)


class CompactRange:
    """The peaks of a growing Merkle tree: enough to give its root at every size.

    A leaf merges with the peak of equal height to its left, as in binary addition, so the
    stack holds one peak per set bit of the size; folding the peaks right to left yields
    the RFC 9162 root, because the largest-power-of-two split is exactly that fold.
    """

    def __init__(self) -> None:
        self._peaks: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended."""
        return self._size

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash."""
        peaks = self._peaks
        node = leaf
        self._size += 1
        count = self._size
        while count % 2 == 0:
            node = node_hash(peaks.pop(), node)
            count //= 2
        peaks.append(node)

    def root(self) -> bytes:
        """Return the root of every leaf appended so far."""
        if not self._peaks:
            return EMPTY_ROOT
        root = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            root = node_hash(peak, root)
        return root
