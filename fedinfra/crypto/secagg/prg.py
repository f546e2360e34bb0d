"""Mask expansion: a 32-byte seed -> a vector uniform modulo ``2^bits`` (ChaCha20 keystream).

The seed is first keyed through HKDF-SHA256 with a label naming the purpose (pairwise mask,
self-mask, trailer), the run and the round, so the same X25519 secret never expands to the
same mask twice (Bonawitz et al., CCS 2017, section 4: masks are PRG(s_uv) with a fresh
agreement per round; Bell et al., CCS 2020, section 3 for SecAgg+). Masks modulo a power of
two are uniform because the keystream is (reduction by a bit mask loses no uniformity).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedinfra.crypto.secagg import _primitives

U64 = npt.NDArray[np.uint64]


def derive_key(seed: bytes, label: str) -> bytes:
    """HKDF-SHA256(seed, info = "fedinfra/secagg/v1/" + label)."""
    return _primitives.hkdf(seed, ("fedinfra/secagg/v1/" + label).encode())


def expand(seed: bytes, label: str, count: int, bits: int) -> U64:
    """Return ``count`` values uniform in ``[0, 2^bits)`` expanded from ``seed`` under ``label``.

    Deterministic in ``(seed, label, count, bits)``; 4 keystream bytes per value when
    ``bits <= 32``, 8 otherwise.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"mask width {bits} bits must be between 1 and 64")
    if count < 0:
        raise ValueError("negative mask length")
    width = 4 if bits <= 32 else 8
    raw = _primitives.keystream(derive_key(seed, label), count * width)
    values = np.frombuffer(raw, dtype="<u4" if width == 4 else "<u8").astype(np.uint64)
    if bits < 64:
        values &= np.uint64((1 << bits) - 1)
    return values


def raw_words(seed: bytes, label: str, count: int) -> npt.NDArray[np.uint32]:
    """``count`` raw 32-bit keystream words (a read-only view, no copy)."""
    raw = _primitives.keystream(derive_key(seed, label), count * 4)
    return np.frombuffer(raw, dtype="<u4")


def apply_masks(acc: U64, bits: int, masks: list[tuple[bytes, str, bool]]) -> None:
    """``acc += sum(+/- PRG(seed, label))  (mod 2^bits)`` for every ``(seed, label, subtract)``.

    For ``bits <= 32`` the sum runs in uint32, whose wrap-around is arithmetic modulo
    2^32 (a multiple of 2^bits), with one reduction at the end: one pass over 4 bytes per
    value per mask. Equal to applying :func:`expand_into` mask by mask.
    """
    if bits > 32:
        for seed, label, subtract in masks:
            expand_into(acc, seed, label, bits, subtract=subtract)
        return
    work = acc.astype(np.uint32)
    for seed, label, subtract in masks:
        words = raw_words(seed, label, acc.shape[0])
        if subtract:
            np.subtract(work, words, out=work)
        else:
            np.add(work, words, out=work)
    np.bitwise_and(work, np.uint32((1 << bits) - 1), out=work)
    acc[:] = work


def expand_into(acc: U64, seed: bytes, label: str, bits: int, *, subtract: bool = False) -> None:
    """``acc = acc +/- expand(seed, label, len(acc), bits)  (mod 2^bits)``, in place."""
    mask = expand(seed, label, acc.shape[0], bits)
    if subtract:
        np.subtract(acc, mask, out=acc)
    else:
        np.add(acc, mask, out=acc)
    if bits < 64:
        np.bitwise_and(acc, np.uint64((1 << bits) - 1), out=acc)


def expand_mod(seed: bytes, label: str, count: int, modulus: int) -> U64:
    """``count`` values uniform in ``[0, modulus)`` (any modulus below 2^63, e.g. a BFV plain prime).

    Rejection sampling: each 64-bit keystream word is cut to the bit length of ``modulus``
    and kept only if below it, so every kept value is exactly uniform (no modulo bias; NIST
    SP 800-90A rev. 1, appendix A.5.1, "simple discard method") and no division is needed.
    For a BFV plain prime just below a power of two almost every word is kept (at worst
    half); the keystream is read further until ``count`` words are kept, so the result
    depends only on ``(seed, label, count, modulus)``.
    """
    if not 2 <= modulus < 2**63:
        raise ValueError(f"modulus {modulus} must be in [2, 2^63)")
    if count < 0:
        raise ValueError("negative mask length")
    top = np.uint64((1 << (modulus - 1).bit_length()) - 1)
    m = np.uint64(modulus)
    key = derive_key(seed, label)
    want = count + count // 8 + 64
    while True:
        words = np.frombuffer(_primitives.keystream(key, want * 8), dtype="<u8") & top
        kept = words[words < m]
        if kept.shape[0] >= count:
            return kept[:count]
        want *= 2


def apply_masks_mod(acc: U64, modulus: int, masks: list[tuple[bytes, str, bool]]) -> None:
    """``acc += sum(+/- expand_mod(seed, label))  (mod modulus)`` in place; ``acc`` already below it.

    Masks (``m`` added, ``modulus - m`` for a subtraction) are summed without reduction while
    the uint64 total cannot overflow, then reduced once.
    """
    m = np.uint64(modulus)
    per_pass = max(1, ((1 << 64) - 1) // modulus - 1)  # terms below modulus that fit with acc
    total = acc.copy()
    pending = 0
    for seed, label, subtract in masks:
        mask = expand_mod(seed, label, acc.shape[0], modulus)
        if subtract:
            np.subtract(m, mask, out=mask)  # in (0, modulus]: still one term below 2 * modulus
        np.add(total, mask, out=total)
        pending += 2 if subtract else 1
        if pending >= per_pass - 2:
            np.remainder(total, m, out=total)
            pending = 0
    np.remainder(total, m, out=total)
    acc[:] = total
