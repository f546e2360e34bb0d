"""The only secure-aggregation module that touches ``cryptography.hazmat``.

* X25519 key agreement (RFC 7748) for pairwise mask seeds and share channels;
* HKDF-SHA256 (RFC 5869) to turn a shared secret or a seed into a key bound to its purpose,
  run and round (the ``info`` string), so one secret never keys two streams;
* AES-128 in counter mode (NIST SP 800-38A, section 6.5) as the pseudo-random generator that
  expands a 16-byte key into a mask (the keystream of a block cipher in CTR mode is a PRG
  under the cipher's pseudo-random-permutation security; Bonawitz et al., CCS 2017, section 6
  use AES in counter mode as their PRG); why 128 bits are enough is in
  :mod:`~fedinfra.crypto.secagg.prg`. Flower's SecAgg+ expands masks from a 32-bit seed with
  MT19937, which is not a cryptographic generator (issue 13);
* ChaCha20-Poly1305 (RFC 8439, section 2.8) to carry Shamir shares between sites through
  the coordinator, authenticated with the sender, recipient, run and round as associated data.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedinfra.errors import CryptoError

KEY_BYTES = 32
#: AES-128 key bytes of one mask stream (:class:`Keystream`).
MASK_KEY_BYTES = 16
_ZERO_COUNTER = bytes(16)
_ZEROS = memoryview(bytes(1 << 20))


def new_keypair() -> tuple[bytes, bytes]:
    """Return ``(private, public)`` raw 32-byte X25519 keys from the OS CSPRNG."""
    sk = X25519PrivateKey.generate()
    raw = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return raw, public_of(raw)


def public_of(private: bytes) -> bytes:
    """The raw public key of a raw X25519 private key."""
    try:
        sk = X25519PrivateKey.from_private_bytes(private)
    except ValueError as exc:
        raise CryptoError("secure aggregation: not an X25519 private key") from exc
    return sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes) -> bytes:
    """X25519 shared secret; refuses low-order peer keys (all-zero output, RFC 7748 section 6.1)."""
    try:
        secret = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise CryptoError("secure aggregation: invalid X25519 public key") from exc
    return secret


def hkdf(secret: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 with an all-zero salt (RFC 5869 section 2.2) and ``info`` binding the purpose."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def _aes128_ctr(key: bytes, counter_block: bytes) -> CipherContext:
    """AES-128-CTR from ``counter_block`` (NIST SP 800-38A, section 6.5; the whole 128-bit block is the counter).

    Module-private: outside this module a counter block is only ever the zero block of
    :class:`Keystream`, under a key used for no other stream (a counter block reused under
    one key would repeat the keystream). The known-answer test calls it with the non-zero
    initial counter block of SP 800-38A, appendix F.5.1.
    """
    if len(key) != MASK_KEY_BYTES:
        raise CryptoError(f"secure aggregation: a mask key is {MASK_KEY_BYTES} bytes (AES-128), got {len(key)}")
    return Cipher(algorithms.AES128(key), modes.CTR(counter_block)).encryptor()


class Keystream:
    """One AES-128-CTR keystream (NIST SP 800-38A, section 6.5) from counter block zero, read in order.

    :meth:`read_into` writes the next bytes of the stream into a caller's buffer (OpenSSL's
    ``update_into`` over zeros), so a long mask can be expanded block by block into one
    reused, cache-sized buffer; the bytes are the same however the stream is cut. The zero
    counter block is safe because every stream has its own key (HKDF per seed and label).
    """

    __slots__ = ("_enc",)

    def __init__(self, key: bytes) -> None:
        self._enc: CipherContext = _aes128_ctr(key, _ZERO_COUNTER)

    def read_into(self, out: memoryview) -> None:
        """Fill ``out`` (a writable, contiguous byte buffer) with the next ``out.nbytes`` keystream bytes."""
        n = out.nbytes
        pos = 0
        while pos < n:
            step = min(n - pos, len(_ZEROS))
            self._enc.update_into(_ZEROS[:step], out[pos : pos + step])
            pos += step


def keystream(key: bytes, nbytes: int) -> bytes:
    """``nbytes`` of AES-128-CTR keystream under ``key`` (the start of :class:`Keystream`)."""
    buf = bytearray(nbytes)
    Keystream(key).read_into(memoryview(buf))
    return bytes(buf)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 with a zero nonce: every key seals exactly one message."""
    return ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, aad)


def open_sealed(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Open :func:`seal`; a forged or misdirected message raises :class:`CryptoError`."""
    try:
        return ChaCha20Poly1305(key).decrypt(bytes(12), ciphertext, aad)
    except InvalidTag as exc:
        raise CryptoError("secure aggregation: share rejected (not sealed for this site, run and round)") from exc
