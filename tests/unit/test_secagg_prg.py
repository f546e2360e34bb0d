"""The mask PRG expanded block by block equals the one-shot expansion (issue 13, site masking speed).

:mod:`fedinfra.crypto.secagg.prg` reads every mask's AES-128-CTR keystream in blocks of
``BLOCK_BYTES`` into one reused buffer and folds it into the accumulator block while both are
in cache. These tests pin the values to the one-shot definition (the whole keystream as
little-endian words, cut to the width; for a modulus, the first ``count`` words kept by
rejection sampling) at lengths around the block boundaries, with the real block size and a
tiny one, and pin digests of the AES-128-CTR masks (the keystream itself is checked against
NIST SP 800-38A, appendix F.5.1).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedinfra.crypto.secagg import _primitives, prg
from fedinfra.errors import CryptoError

SEED = bytes(range(32))


def _one_shot_words(seed: bytes, label: str, count: int, width: int) -> np.ndarray:
    """The whole keystream in one call (OpenSSL directly), as little-endian words of ``width`` bytes."""
    key = prg.derive_key(seed, label)
    raw = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(count * width))
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


# NIST SP 800-38A, appendix F.5.1, CTR-AES128.Encrypt: key, initial counter block, the four
# plaintext blocks and the four ciphertext blocks.
F51_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
F51_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
F51_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
F51_CIPHER = bytes.fromhex(
    "874d6191b620e3261bef6864990db6ce"
    "9806f66b7970fdff8617187bb9fffdff"
    "5ae4df3edbd5d35e5b4f09020db03eab"
    "1e031dda2fbe03d1792170a0f3009cee"
)


def test_the_keystream_primitive_is_aes_128_ctr_nist_sp_800_38a_f_5_1():
    # F.5.1 starts from a non-zero counter block (and carries into the last byte at block 2),
    # which the mask streams never use: the module-private CTR constructor takes it.
    assert _primitives._aes128_ctr(F51_KEY, F51_COUNTER).update(F51_PLAIN) == F51_CIPHER
    stream = _primitives._aes128_ctr(F51_KEY, F51_COUNTER).update(bytes(64))
    assert bytes(a ^ b for a, b in zip(stream, F51_PLAIN, strict=True)) == F51_CIPHER


def test_a_mask_stream_is_aes_128_ctr_from_the_zero_counter_block():
    # Counter mode: keystream block i = AES_K(i) (NIST SP 800-38A, section 6.5), here checked
    # against AES-128 in ECB mode over the big-endian counter blocks 0, 1, 2, 3.
    counters = b"".join(i.to_bytes(16, "big") for i in range(4))
    expected = Cipher(algorithms.AES(F51_KEY), modes.ECB()).encryptor().update(counters)

    assert _primitives.keystream(F51_KEY, 64) == expected


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_a_mask_key_is_16_bytes(size):
    with pytest.raises(CryptoError, match=f"a mask key is 16 bytes \\(AES-128\\), got {size}"):
        _primitives.Keystream(bytes(size))


def test_mask_keys_are_the_first_16_bytes_of_the_hkdf_output():
    assert len(prg.derive_key(SEED, "pair")) == 16
    assert prg.derive_key(SEED, "pair") == _primitives.hkdf(SEED, b"fedinfra/secagg/v1/pair")[:16]


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
        (1, "66eec8b1c5c35eae70cf18db21532826897328453fc18159ee1027aa5835e423"),
        (20, "4b59bce33c3bc645dc732cafcc77b76a7f5ed60983a9236e51ce8d49dfa7c795"),
        (32, "4c4802360e84556bf3c0aa7696fb657dd81851ee49cf1d27a46c30775466307f"),
        (33, "e78d9801f921177b449fb8cdcf944e3be90f6e039000c85d4bfe0448350427b2"),
        (64, "448c97a8ff223ebf95da9dedae0f36065ddda8e895d66ea3e5bc96456c2f2c7a"),
    ],
)
def test_masks_are_bit_identical_to_the_one_shot_aes_128_ctr_expansion(bits, digest):
    # Digests of the one-shot AES-128-CTR expansion (_one_shot_expand) of SEED under "pair",
    # pinned when the PRG moved from ChaCha20 to AES-128-CTR (the ChaCha20 digests pinned since
    # b340732 changed on purpose); 40,000 values cross the block boundary at either word width.
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
        (3, "a8f646559e29683ba332f1dacac1f5af62c0931dc319694a6565152ffbf2e4aa"),
        (786433, "fa7ff55ca95b1220043c6a023dd77d995c5b4aa3925e83e922de68174497e8fe"),
        ((1 << 62) + 135, "e6a693c6289819e7ceb53ba6aeee5c77de7a16bdd8b191fc2933d1be724fc137"),
    ],
)
def test_masks_modulo_a_prime_are_bit_identical_to_the_one_shot_sampler(modulus, digest):
    # Digests of _one_shot_expand_mod over AES-128-CTR, pinned with the move from ChaCha20.
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


# (2^64 - 1) // m is 6 and 4: a uint64 holds the accumulator and only a few more terms below m,
# so folding 12 masks must reduce in between; a late reduction wraps modulo 2^64, not m.
WIDE_MODULI = [(1 << 61) + (1 << 59) + 1, (1 << 62) - (1 << 56) + 1]


@pytest.mark.parametrize("modulus", WIDE_MODULI)
def test_many_masks_modulo_a_wide_modulus_sum_exactly_without_uint64_overflow(modulus):
    rng = np.random.default_rng(7)
    masks = [(bytes([i + 1]) * 32, f"m{i}", i % 4 == 3) for i in range(12)]
    start = rng.integers(0, modulus, size=4096, dtype=np.uint64)
    expected = _reference_sum(
        start, masks, modulus, lambda seed, label, n: _one_shot_expand_mod(seed, label, n, modulus)
    )
    got = start.copy()

    prg.apply_masks_mod(got, modulus, masks)

    assert [int(x) for x in got] == expected
