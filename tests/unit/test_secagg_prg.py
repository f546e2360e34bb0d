"""The mask PRG expanded block by block equals the one-shot expansion (issue 13, site masking speed).

:mod:`fedinfra.crypto.secagg.prg` reads every mask's ChaCha20 keystream in blocks of
``BLOCK_BYTES`` into one reused buffer and folds it into the accumulator block while both are
in cache. These tests pin the values to the one-shot definition (the whole keystream as
little-endian words, cut to the width; for a modulus, the first ``count`` words kept by
rejection sampling) at lengths around the block boundaries, with the real block size and a
tiny one, and pin digests computed by the one-shot implementation it replaced.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedinfra.crypto.secagg import _primitives, prg

SEED = bytes(range(32))


def _one_shot_words(seed: bytes, label: str, count: int, width: int) -> np.ndarray:
    """The whole keystream in one call (OpenSSL directly), as little-endian words of ``width`` bytes."""
    key = prg.derive_key(seed, label)
    raw = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(count * width))
    return np.frombuffer(raw, dtype="<u4" if width == 4 else "<u8").astype(np.uint64)


def _one_shot_expand(seed: bytes, label: str, count: int, bits: int) -> np.ndarray:
    words = _one_shot_words(seed, label, count, 4 if bits <= 32 else 8)
    return words & np.uint64((1 << bits) - 1) if bits < 64 else words


def _one_shot_expand_mod(seed: bytes, label: str, count: int, modulus: int) -> np.ndarray:
    """Rejection sampling over a prefix of the stream long enough to keep ``count`` words."""
    top = np.uint64((1 << (modulus - 1).bit_length()) - 1)
    want = count + 64
    while True:
        words = _one_shot_words(seed, label, want, 8) & top
        kept = words[words < np.uint64(modulus)]
        if kept.shape[0] >= count:
            return kept[:count]
        want *= 2


def _masks(k: int) -> list[tuple[bytes, str, bool]]:
    return [(bytes([i + 1]) * 32, f"m{i}", i % 3 == 1) for i in range(k)]


def _reference_sum(start: np.ndarray, masks: list[tuple[bytes, str, bool]], modulus: int, expand) -> list[int]:
    total = [int(x) for x in start]
    for seed, label, subtract in masks:
        mask = expand(seed, label, len(total))
        sign = -1 if subtract else 1
        total = [(a + sign * int(b)) % modulus for a, b in zip(total, mask, strict=True)]
    return total


def _lengths(block_values: int) -> list[int]:
    return [0, 1, block_values - 1, block_values, block_values + 1, 3 * block_values + 7]


# -- the keystream ------------------------------------------------------------------------------


def test_the_keystream_is_chacha20_rfc_8439_test_vector_1():
    # RFC 8439, appendix A.1, test vector #1: all-zero key and nonce, block counter 0.
    expected = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )

    assert _primitives.keystream(bytes(32), 64) == expected


def test_the_keystream_read_in_uneven_pieces_is_the_same_stream():
    key = prg.derive_key(SEED, "pieces")
    whole = _primitives.keystream(key, 3 * (1 << 20) + 5)  # longer than the 1 MiB zero buffer
    stream = _primitives.Keystream(key)
    buf = bytearray(len(whole))
    view = memoryview(buf)
    pos = 0
    for size in (1, 63, 64, 65, 1 << 20, (1 << 20) + 3, 17):
        stream.read_into(view[pos : pos + size])
        pos += size
    stream.read_into(view[pos:])

    assert bytes(buf) == whole


# -- widths modulo 2^bits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "digest"),
    [
        (1, "9d1a3192fb2c0007fdce2045aff10bd27791959d2c9a30611da6d72462480521"),
        (20, "9ddc5cc50a89f59a601c5b2e22922f006b25d33399ce3dc7408162a3e8fda2ca"),
        (32, "0910eb1dc7cfa8abc2f2eac5d5ae5c2f01b34b8b5dfa748796eca3dd1fe2d528"),
        (33, "c04669fff0fd1732e55f2c082b954cf1dc679cf13dd0555350d91d6057f86a41"),
        (64, "d91618a1baf39b23ee9090d061e6c2815cbabe4b7b59605c612e951c011ea370"),
    ],
)
def test_masks_are_bit_identical_to_the_one_shot_expansion_they_replaced(bits, digest):
    # Digests of prg.expand(SEED, "pair", 40_000, bits) from the one-shot implementation
    # (main at b340732); 40,000 values cross the block boundary at either word width.
    values = prg.expand(SEED, "pair", 40_000, bits)

    assert hashlib.sha256(values.tobytes()).hexdigest() == digest
    assert np.array_equal(values, _one_shot_expand(SEED, "pair", 40_000, bits))


@pytest.mark.parametrize("bits", [1, 20, 32, 33, 64])
@pytest.mark.parametrize("block_bytes", [prg.BLOCK_BYTES, 64])
def test_expand_equals_the_one_shot_expansion_around_block_boundaries(bits, block_bytes, monkeypatch):
    monkeypatch.setattr(prg, "BLOCK_BYTES", block_bytes)
    block_values = block_bytes // (4 if bits <= 32 else 8)
    for count in _lengths(block_values):
        got = prg.expand(SEED, "pair", count, bits)

        assert got.dtype == np.uint64
        assert got.shape == (count,)
        assert np.array_equal(got, _one_shot_expand(SEED, "pair", count, bits)), count


@pytest.mark.parametrize("bits", [1, 20, 32, 33, 64])
@pytest.mark.parametrize("block_bytes", [prg.BLOCK_BYTES, 64])
def test_added_and_subtracted_masks_equal_the_one_shot_sum_around_block_boundaries(bits, block_bytes, monkeypatch):
    monkeypatch.setattr(prg, "BLOCK_BYTES", block_bytes)
    block_values = block_bytes // (4 if bits <= 32 else 8)
    rng = np.random.default_rng(bits)
    masks = _masks(5)  # two of them subtracted
    for count in _lengths(block_values):
        start = rng.integers(0, 2**bits - 1, size=count, dtype=np.uint64, endpoint=True)
        expected = _reference_sum(start, masks, 2**bits, lambda seed, label, n: _one_shot_expand(seed, label, n, bits))
        got = start.copy()

        prg.apply_masks(got, bits, masks)

        assert [int(x) for x in got] == expected, count


def test_masking_reduces_the_accumulator_even_with_no_mask():
    acc = np.array([2**40 + 5, 2**24 + 3, 7], dtype=np.uint64)

    prg.apply_masks(acc, 24, [])

    assert acc.tolist() == [5, 3, 7]


def test_masks_on_a_strided_view_touch_only_that_view():
    base = np.zeros(2 * 300, dtype=np.uint64)
    view = base[::2]

    prg.apply_masks(view, 20, _masks(3))

    assert np.array_equal(view, _reduce(_masks(3), 300, 20))
    assert not base[1::2].any()


def _reduce(masks: list[tuple[bytes, str, bool]], n: int, bits: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.uint64)
    for seed, label, subtract in masks:
        prg.expand_into(out, seed, label, bits, subtract=subtract)
    return out


# -- moduli (secagg+he) ---------------------------------------------------------------------------

# 3 and 2^62 + 135 keep only about three words in four and one in two: the streams of one
# block are consumed at different rates, so a kept value must carry over to the next block.
MODULI = [2, 3, 1613, 786433, (1 << 50) - 27, (1 << 62) + 135]


@pytest.mark.parametrize(
    ("modulus", "digest"),
    [
        (3, "8e6b6299e6af0ec37a24b9ec1b1de07a0cab42e2219fb303ab3f5bef0f5ff691"),
        (786433, "7ab81c6f46bd7534c061e780981b103d13450d3660619ce8358a118a18ac45de"),
        ((1 << 62) + 135, "776b5beaec314634fd92936417e03a595c04f4bc90b6e80042057f8c70e613b1"),
    ],
)
def test_masks_modulo_a_prime_are_bit_identical_to_the_one_shot_sampler(modulus, digest):
    values = prg.expand_mod(SEED, "pair", 20_000, modulus)

    assert hashlib.sha256(values.tobytes()).hexdigest() == digest


@pytest.mark.parametrize("modulus", MODULI)
@pytest.mark.parametrize("block_bytes", [prg.BLOCK_BYTES, 64])
def test_expand_mod_equals_one_shot_rejection_sampling_around_block_boundaries(modulus, block_bytes, monkeypatch):
    monkeypatch.setattr(prg, "BLOCK_BYTES", block_bytes)
    for count in _lengths(block_bytes // 8):
        got = prg.expand_mod(SEED, "pair", count, modulus)

        assert got.shape == (count,)
        assert count == 0 or int(got.max()) < modulus
        assert np.array_equal(got, _one_shot_expand_mod(SEED, "pair", count, modulus)), count


@pytest.mark.parametrize("modulus", MODULI)
@pytest.mark.parametrize("block_bytes", [prg.BLOCK_BYTES, 64])
def test_masks_modulo_a_prime_equal_the_one_shot_sum_around_block_boundaries(modulus, block_bytes, monkeypatch):
    monkeypatch.setattr(prg, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(modulus % 1000)
    masks = _masks(5)
    for count in _lengths(block_bytes // 8):
        start = rng.integers(0, modulus, size=count, dtype=np.uint64)
        expected = _reference_sum(
            start, masks, modulus, lambda seed, label, n: _one_shot_expand_mod(seed, label, n, modulus)
        )
        got = start.copy()

        prg.apply_masks_mod(got, modulus, masks)

        assert [int(x) for x in got] == expected, count


@pytest.mark.parametrize("modulus", [1, 2**63])
def test_a_modulus_outside_two_to_two_to_the_63_is_refused(modulus):
    with pytest.raises(ValueError, match=f"modulus {modulus} must be in"):
        prg.expand_mod(SEED, "pair", 4, modulus)
    with pytest.raises(ValueError, match=f"modulus {modulus} must be in"):
        prg.apply_masks_mod(np.zeros(4, np.uint64), modulus, [])
