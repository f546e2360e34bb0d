"""The only module that touches ``tenseal.sealapi`` (Microsoft SEAL bindings).

Everything above it speaks bytes and numpy arrays. SEAL errors are translated here into
:class:`~fedinfra.errors.CryptoError` with one generic message, so a caller learns *that*
a ciphertext was refused but not which internal check failed.

In-memory serialization: the bindings of tenseal 0.3.18 only save and load through a path.
We give them the path of an anonymous memory file (Linux ``memfd_create(2)``, reached via
``/proc/self/fd/N``): it has no name in any file system, lives in RAM, and disappears with
its descriptor, so ciphertexts and keys never touch a disk. Measured for 123 seeded
ciphertexts (one 1M-parameter update): save + read back 37 ms through the memory file,
24 ms through a /dev/shm file (named, visible to other processes), 44 ms through a disk
file; encrypting them takes about 140 ms, so the in-memory route costs about a fifth of
encryption, almost all of it SEAL's own serialization.

Seeded symmetric encryption: ``Encryptor.encrypt_symmetric(plain)`` with one argument returns
a ``Serializable`` that stores the uniformly random polynomial ``a`` as its PRNG seed, which
halves the size (SEAL 3.6 manual, "Serializable"; Lyubashevsky, Peikert and Regev's RLWE
samples with a public uniform part).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from fedinfra.config.secagg import CKKS_SCALE_BITS, COEFF_MODULUS_BITS, POLY_MODULUS_DEGREE
from fedinfra.errors import ConfigError, CryptoError

#: The one message every refused ciphertext or key gets (no oracle on which check failed).
REJECTED = "ciphertext rejected: not a valid ciphertext for this kit's parameters"
#: SEAL's serialized size of one seeded or full ciphertext never exceeds this (2 polys x N x 8
#: bytes plus header); anything larger is refused before SEAL parses it.
MAX_CT_BYTES = 2 * POLY_MODULUS_DEGREE * 8 + 4096


def _sealapi() -> Any:
    import tenseal.sealapi as sealapi  # heavy: loaded on first use only

    return sealapi


@contextmanager
def _memfile() -> Iterator[tuple[int, str]]:
    """Yield ``(fd, path)`` of an anonymous in-memory file that SEAL can open by path."""
    if not hasattr(os, "memfd_create"):  # pragma: no cover - non-Linux
        raise ConfigError("HE serialization needs Linux memfd_create; run sites and coordinator on Linux")
    fd = os.memfd_create("fedinfra-he", os.MFD_CLOEXEC)
    try:
        yield fd, f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _read_all(fd: int, limit: int = 0) -> bytes:
    # SEAL's save truncates the file, so reading up to a known bound returns exactly it.
    data = os.pread(fd, limit or os.fstat(fd).st_size, 0)
    if limit and len(data) >= limit:  # pragma: no cover - SEAL never writes this much
        raise CryptoError("ciphertext larger than the format allows")
    return data


def _write_all(fd: int, data: bytes | memoryview) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


class SealContext:
    """A SEAL context for one scheme: ``"bfv"`` (batching, t = ``plain_bits``) or ``"ckks"``.

    SEAL itself re-checks the parameters at 128-bit security (``sec_level_type.tc128``)
    and refuses them with :class:`ConfigError` if they are not accepted.
    """

    def __init__(self, scheme: str, plain_bits: int | None = None) -> None:
        s = _sealapi()
        self.scheme = scheme
        if scheme == "bfv":
            parms = s.EncryptionParameters(s.SCHEME_TYPE.BFV)
        elif scheme == "ckks":
            parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
        else:
            raise ConfigError(f"HE scheme {scheme!r} is not supported; use 'bfv' or 'ckks'")
        parms.set_poly_modulus_degree(POLY_MODULUS_DEGREE)
        try:
            parms.set_coeff_modulus(s.CoeffModulus.Create(POLY_MODULUS_DEGREE, [COEFF_MODULUS_BITS]))
            if scheme == "bfv":
                if plain_bits is None:
                    raise ConfigError("BFV needs plain_modulus_bits")
                parms.set_plain_modulus(s.PlainModulus.Batching(POLY_MODULUS_DEGREE, plain_bits))
            ctx = s.SEALContext(parms, True, s.SEC_LEVEL_TYPE.TC128)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"SEAL refused the {scheme} parameters ({exc}); check [secure_aggregation]") from exc
        if not ctx.parameters_set():
            raise ConfigError(
                f"SEAL refused the {scheme} parameters at 128-bit security "
                f"({ctx.parameters_error_message()}); check [secure_aggregation]"
            )
        self._s = s
        self._ctx = ctx
        self._parms = parms
        self._evaluator = s.Evaluator(ctx)
        self.plain_modulus = int(parms.plain_modulus().value()) if scheme == "bfv" else 0
        self.coeff_modulus = int(parms.coeff_modulus()[0].value())
        self.slots = POLY_MODULUS_DEGREE if scheme == "bfv" else POLY_MODULUS_DEGREE // 2
        self.scale = float(2**CKKS_SCALE_BITS)

    # -- keys ---------------------------------------------------------------------------

    def new_secret_key(self) -> bytes:
        """Generate a fresh secret key (SEAL's CSPRNG) and return its serialization."""
        sk = self._s.KeyGenerator(self._ctx).secret_key()
        with _memfile() as (fd, path):
            sk.save(path)
            return _read_all(fd)

    def load_secret_key(self, data: bytes) -> Any:
        """Parse a serialized secret key; refuse one made for other parameters."""
        sk = self._s.SecretKey()
        try:
            with _memfile() as (fd, path):
                _write_all(fd, data)
                sk.load(self._ctx, path)
        except (RuntimeError, ValueError) as exc:
            raise CryptoError("secret key rejected: it does not belong to this kit's parameters") from exc
        return sk

    # -- encryption -----------------------------------------------------------------------

    def encrypt(self, secret_key: Any, rows: npt.NDArray[Any]) -> list[bytes]:
        """Encrypt each row (one ciphertext's slots) with seeded symmetric encryption.

        BFV rows are ``uint64`` slot values below t; CKKS rows are ``complex128``.
        """
        s = self._s
        encryptor = s.Encryptor(self._ctx, secret_key)
        encoder = s.BatchEncoder(self._ctx) if self.scheme == "bfv" else s.CKKSEncoder(self._ctx)
        out: list[bytes] = []
        plain = s.Plaintext()
        with _memfile() as (fd, path):
            for row in rows:
                if self.scheme == "bfv":
                    encoder.encode(row.tolist(), plain)
                else:
                    encoder.encode(row.tolist(), self.scale, plain)
                encryptor.encrypt_symmetric(plain).save(path)
                out.append(_read_all(fd, MAX_CT_BYTES + 1))
        return out

    # -- the coordinator's side: parse, validate, add ----------------------------------------

    def load_ciphertexts(self, blobs: Sequence[bytes | memoryview]) -> list[Any]:
        """Parse ciphertexts; any malformed, foreign or truncated one raises :class:`CryptoError`."""
        with _memfile() as (fd, path):
            return [self._load_one(fd, path, blob) for blob in blobs]

    def _load_one(self, fd: int, path: str, blob: bytes | memoryview) -> Any:
        s = self._s
        if not 0 < len(blob) <= MAX_CT_BYTES:
            raise CryptoError(REJECTED)
        ct = s.Ciphertext(self._ctx)
        try:
            _write_all(fd, blob)
            ct.load(self._ctx, path)
        except (RuntimeError, ValueError) as exc:
            raise CryptoError(REJECTED) from exc
        if ct.size() != 2 or list(ct.parms_id()) != list(self._ctx.first_parms_id()):
            raise CryptoError(REJECTED)
        if self.scheme == "ckks" and ct.scale != self.scale:
            raise CryptoError(REJECTED)
        # Fresh BFV ciphertexts are in coefficient form, CKKS ones in NTT form. A BFV
        # ciphertext in NTT form loads but makes Evaluator.add fail (issue 13: it was
        # half-added to the sum before the failure).
        if bool(ct.is_ntt_form()) != (self.scheme == "ckks") or ct.is_transparent():
            raise CryptoError(REJECTED)
        return ct

    def add_blobs_inplace(self, acc: list[Any], blobs: Sequence[bytes | memoryview]) -> None:
        """``acc[i] += parse(blobs[i])``, one ciphertext parsed at a time, all or nothing.

        Parsing a whole update first (:meth:`load_ciphertexts` then :meth:`add_inplace`) held
        it twice over in SEAL's memory pool, which never shrinks: a seeded ciphertext expands
        to both polynomials when loaded, so 80 MB for a 10M-parameter update (issue 17,
        ``bench/big_model.py``). Here each ciphertext passes every check of
        :meth:`load_ciphertexts` before it is added; if one is refused, those already added
        are parsed again from the same bytes and subtracted (exact: coefficient-wise additions
        modulo q), so a refused update leaves no trace (Bonawitz et al., CCS 2017, section 2:
        the sum holds accepted inputs only).
        """
        if len(acc) != len(blobs):
            raise CryptoError(REJECTED)
        done = 0
        with _memfile() as (fd, path):
            try:
                for a, blob in zip(acc, blobs, strict=True):
                    ct = self._load_one(fd, path, blob)
                    try:
                        self._evaluator.add_inplace(a, ct)
                    except (RuntimeError, ValueError) as exc:
                        raise CryptoError(REJECTED) from exc
                    done += 1
            except CryptoError:
                for a, blob in zip(acc[:done], blobs[:done], strict=True):
                    self._evaluator.sub_inplace(a, self._load_one(fd, path, blob))
                raise

    def add_inplace(self, acc: list[Any], cts: list[Any]) -> None:
        """``acc[i] += cts[i]`` homomorphically, all or nothing.

        :meth:`load_ciphertexts` already refuses what SEAL's ``add`` would refuse; should an
        addition still fail part-way, the ones already made are subtracted again (exact:
        both are coefficient-wise additions modulo q), so a refused update leaves no trace.
        """
        if len(acc) != len(cts):
            raise CryptoError(REJECTED)
        done = 0
        try:
            for a, c in zip(acc, cts, strict=True):
                self._evaluator.add_inplace(a, c)
                done += 1
        except (RuntimeError, ValueError) as exc:
            for a, c in zip(acc[:done], cts[:done], strict=True):
                self._evaluator.sub_inplace(a, c)
            raise CryptoError(REJECTED) from exc

    def save_ciphertexts(self, cts: list[Any]) -> list[bytes]:
        """Serialize full (unseeded) ciphertexts, such as a sum."""
        return list(self.iter_saved(cts))

    def iter_saved(self, cts: list[Any]) -> Iterator[bytes]:
        """Serialize ``cts`` one at a time (:meth:`save_ciphertexts` without holding them all)."""
        with _memfile() as (fd, path):
            for ct in cts:
                ct.save(path)
                yield _read_all(fd, MAX_CT_BYTES + 1)

    # -- the sites' side: decrypt ----------------------------------------------------------

    def decrypt(self, secret_key: Any, cts: list[Any]) -> npt.NDArray[Any]:
        """Decrypt to a ``(len(cts), slots)`` array: ``uint64`` (BFV) or ``complex128`` (CKKS)."""
        s = self._s
        decryptor = s.Decryptor(self._ctx, secret_key)
        plain = s.Plaintext()
        if self.scheme == "bfv":
            encoder = s.BatchEncoder(self._ctx)
            out = np.empty((len(cts), self.slots), dtype=np.uint64)
            for i, ct in enumerate(cts):
                decryptor.decrypt(ct, plain)
                out[i] = np.fromiter(encoder.decode_uint64(plain), dtype=np.uint64, count=self.slots)
            return out
        ckks = s.CKKSEncoder(self._ctx)
        res = np.empty((len(cts), self.slots), dtype=np.complex128)
        for i, ct in enumerate(cts):
            decryptor.decrypt(ct, plain)
            res[i] = ckks.decode_complex(plain)
        return res


def secret_key_coefficients(secret_key: Any, count: int) -> list[int]:
    """Return the first ``count`` NTT coefficients of a secret key (for the key-separation test)."""
    data = secret_key.data()
    return [int(data.data(i)) for i in range(count)]
