"""Mask expansion: a 32-byte seed -> a vector uniform modulo ``2^bits`` (AES-128-CTR keystream).

The seed is first keyed through HKDF-SHA256 with a label naming the purpose (pairwise mask,
self-mask, trailer), the run and the round, so the same X25519 secret never expands to the
same mask twice (Bonawitz et al., CCS 2017, section 4: masks are PRG(s_uv) with a fresh
agreement per round; Bell et al., CCS 2020, section 3 for SecAgg+). Masks modulo a power of
two are uniform because the keystream is (reduction by a bit mask loses no uniformity).

The PRG is AES-128 in counter mode (NIST SP 800-38A, section 6.5), as in the SecAgg paper
(Bonawitz et al., CCS 2017, section 6: "AES in counter mode" as the PRG), with AES-NI the
fastest cryptographic generator OpenSSL offers here (about 9.5 GB/s against 6-7 GB/s for
ChaCha20 on the bench machine). The key is the first 16 bytes of HKDF-SHA256 output (RFC
5869: a shorter ``L`` is a prefix of the same expansion) and the counter block starts at
zero: every ``(seed, label)`` gets its own key, so no counter block is ever reused under one
key. A 128-bit key does not lower the protocol's security level: the seeds come from X25519,
which targets about 128-bit security (RFC 7748, section 1), and NIST SP 800-57 part 1 rev. 5,
table 2, rates AES-128 at the same 128-bit strength. A mask of ``n`` values reads ``8 n``
keystream bytes or fewer (rejection sampling modulo ``t`` reads at most twice that on
average), so ``q <= n`` AES blocks; the keystream of a pseudo-random permutation is
distinguishable from random with advantage at most ``q^2 / 2^129`` beyond AES's own
(PRP/PRF switching lemma), below 2^-89 for a mask of 1M values.

Masks are never materialised whole: every mask's keystream is read block by block
(:data:`BLOCK_BYTES` at a time) into one reused buffer and folded into the block of the
accumulator while both are in cache; all masks of a block are applied before the block is
written back (one pass over the accumulator). The keystream is the same however it is cut,
so the result equals expanding each mask in one piece and adding it (tests check this at
the block boundaries).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedinfra.crypto.secagg import _primitives

U64 = npt.NDArray[np.uint64]

#: Keystream bytes read per mask per step: small enough that the keystream block and the
#: accumulator block stay in the L2 cache, large enough that the per-call cost is amortised.
BLOCK_BYTES = 1 << 16


def derive_key(seed: bytes, label: str) -> bytes:
    """The 16-byte AES-128 key of one mask: HKDF-SHA256(seed, info = "fedinfra/secagg/v1/" + label, L = 16)."""
    return _primitives.hkdf(seed, ("fedinfra/secagg/v1/" + label).encode(), _primitives.MASK_KEY_BYTES)


def _stream(seed: bytes, label: str) -> _primitives.Keystream:
    return _primitives.Keystream(derive_key(seed, label))


def _check_width(bits: int) -> None:
    if not 1 <= bits <= 64:
        raise ValueError(f"mask width {bits} bits must be between 1 and 64")


def _check_count(count: int) -> None:
    if count < 0:
        raise ValueError("negative mask length")


def expand(seed: bytes, label: str, count: int, bits: int) -> U64:
    """Return ``count`` values uniform in ``[0, 2^bits)`` expanded from ``seed`` under ``label``.

    Deterministic in ``(seed, label, count, bits)``; 4 keystream bytes per value when
    ``bits <= 32``, 8 otherwise (little-endian words, the high bits cut off).
    """
    _check_width(bits)
    _check_count(count)
    out = np.zeros(count, dtype=np.uint64)
    apply_masks(out, bits, [(seed, label, False)])
    return out


def raw_words(seed: bytes, label: str, count: int) -> npt.NDArray[np.uint32]:
    """``count`` raw 32-bit keystream words (a read-only view, no copy)."""
    raw = _primitives.keystream(derive_key(seed, label), count * 4)
    return np.frombuffer(raw, dtype="<u4")


def apply_masks(acc: U64, bits: int, masks: list[tuple[bytes, str, bool]]) -> None:
    """``acc += sum(+/- PRG(seed, label))  (mod 2^bits)`` for every ``(seed, label, subtract)``; reduces ``acc``.

    Block by block: for ``bits <= 32`` the block is summed in uint32, whose wrap-around is
    arithmetic modulo 2^32 (a multiple of 2^bits), for wider masks in uint64 (modulo 2^64);
    each block is reduced modulo ``2^bits`` once, after all its masks. Equal to adding
    :func:`expand` of every mask in turn.
    """
    _check_width(bits)
    n = acc.shape[0]
    if n == 0:
        return
    streams = [(_stream(seed, label), subtract) for seed, label, subtract in masks]
    width = 4 if bits <= 32 else 8
    step = min(n, BLOCK_BYTES // width)
    words = np.empty(step, dtype="<u4" if width == 4 else "<u8")
    raw = words.data.cast("B")
    work = np.empty(step, dtype=np.uint32) if width == 4 else None
    low = (1 << bits) - 1
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        block = acc[lo:hi]
        if work is None:
            w: npt.NDArray[np.unsignedinteger] = block
        else:
            w = work[: hi - lo]
            np.copyto(w, block, casting="unsafe")  # modulo 2^32, like astype(uint32)
        k = words[: hi - lo]
        kb = raw[: (hi - lo) * width]
        for stream, subtract in streams:
            stream.read_into(kb)
            if subtract:
                np.subtract(w, k, out=w)
            else:
                np.add(w, k, out=w)
        if bits < 8 * width:
            np.bitwise_and(w, w.dtype.type(low), out=w)
        if work is not None:
            np.copyto(block, w)


def expand_into(acc: U64, seed: bytes, label: str, bits: int, *, subtract: bool = False) -> None:
    """``acc = acc +/- expand(seed, label, len(acc), bits)  (mod 2^bits)``, in place."""
    apply_masks(acc, bits, [(seed, label, subtract)])


class _Uniform:
    """Values exactly uniform below ``modulus`` from one keystream, read in order (see :func:`expand_mod`)."""

    def __init__(self, seed: bytes, label: str, modulus: int, step: int) -> None:
        self._stream = _stream(seed, label)
        self._top = np.uint64((1 << (modulus - 1).bit_length()) - 1)
        self._m = np.uint64(modulus)
        self._words = np.empty(step, dtype="<u8")
        self._raw = self._words.data.cast("B")
        self._kept: U64 = np.empty(0, dtype=np.uint64)
        self._pos = 0

    def take(self, out: U64) -> None:
        """Fill ``out`` with the next ``len(out)`` kept values of the stream."""
        n = out.shape[0]
        filled = 0
        while filled < n:
            if self._pos == self._kept.shape[0]:
                self._stream.read_into(self._raw)
                np.bitwise_and(self._words, self._top, out=self._words)
                self._kept = self._words[self._words < self._m]  # a copy: the word buffer is reused
                self._pos = 0
            take = min(n - filled, self._kept.shape[0] - self._pos)
            out[filled : filled + take] = self._kept[self._pos : self._pos + take]
            filled += take
            self._pos += take


def _check_modulus(modulus: int) -> None:
    if not 2 <= modulus < 2**63:
        raise ValueError(f"modulus {modulus} must be in [2, 2^63)")


def _mod_step(count: int) -> int:
    """Words read per keystream step for ``count`` values: a block, or less for a short mask."""
    return max(1, min(BLOCK_BYTES // 8, count + count // 8 + 64))


def expand_mod(seed: bytes, label: str, count: int, modulus: int) -> U64:
    """``count`` values uniform in ``[0, modulus)`` (any modulus below 2^63, e.g. a BFV plain prime).

    Rejection sampling: each 64-bit keystream word is cut to the bit length of ``modulus``
    and kept only if below it, so every kept value is exactly uniform (no modulo bias; NIST
    SP 800-90A rev. 1, appendix A.5.1, "simple discard method") and no division is needed.
    For a BFV plain prime just below a power of two almost every word is kept (at worst
    half); the keystream is read on until ``count`` words are kept: the result is the first
    ``count`` kept words, a function of ``(seed, label, count, modulus)`` only.
    """
    _check_modulus(modulus)
    _check_count(count)
    out = np.empty(count, dtype=np.uint64)
    _Uniform(seed, label, modulus, _mod_step(count)).take(out)
    return out


def apply_masks_mod(acc: U64, modulus: int, masks: list[tuple[bytes, str, bool]]) -> None:
    """``acc += sum(+/- expand_mod(seed, label))  (mod modulus)`` in place; ``acc`` already below it.

    Block by block (as :func:`apply_masks`): masks (``m`` added, ``modulus - m`` for a
    subtraction) are summed without reduction while the uint64 total cannot overflow, then
    reduced once.
    """
    _check_modulus(modulus)
    n = acc.shape[0]
    if n == 0:
        return
    m = np.uint64(modulus)
    per_pass = max(1, ((1 << 64) - 1) // modulus - 1)  # terms below modulus that fit with acc
    streams = [(_Uniform(seed, label, modulus, _mod_step(n)), subtract) for seed, label, subtract in masks]
    step = min(n, BLOCK_BYTES // 8)
    total_buf = np.empty(step, dtype=np.uint64)
    mask_buf = np.empty(step, dtype=np.uint64)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        total, mask = total_buf[: hi - lo], mask_buf[: hi - lo]
        np.copyto(total, acc[lo:hi])
        pending = 0
        for uniform, subtract in streams:
            uniform.take(mask)
            if subtract:
                np.subtract(m, mask, out=mask)  # in (0, modulus]: still one term below 2 * modulus
            np.add(total, mask, out=total)
            pending += 2 if subtract else 1
            if pending >= per_pass - 2:
                np.remainder(total, m, out=total)
                pending = 0
        np.remainder(total, m, out=total)
        acc[lo:hi] = total
