"""C2SP signed notes with Ed25519 keys (https://c2sp.org/signed-note).

A note is UTF-8 text ending in a newline, then a blank line, then one signature line per
signer: ``— <key name> <base64(key hash || signature)>``. The key hash is the first four
bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``, binding the signature to the key
*and* its name; ``0x01`` is the Ed25519 algorithm byte. Keys travel as text:
``<name>+<hash hex>+<base64(0x01 || public key)>`` (verifier) and
``PRIVATE+KEY+<name>+<hash hex>+<base64(0x01 || seed)>`` (signer), the format of the Go
``sumdb/note`` package, so fedinfra checkpoints verify with existing transparency tooling.

Ed25519 (RFC 8032) is deterministic: the same key and text always give the same signature,
which is what lets the known-answer test reproduce the published note byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedinfra.errors import ConfigError, VerificationError

ALG_ED25519 = 0x01
"""Signature-type byte of Ed25519 in C2SP signed-note keys."""

MAX_SIGNATURES = 100
"""More signature lines than this make a note malformed (C2SP signed-note)."""

_DASH = "\u2014"
_NAME = re.compile(r"[^\s+]+")
_BAD_NOTE = "signed note does not verify"
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # C2SP signed-note: no control character but newline


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"key name {name!r} must be non-empty, without spaces or '+' (C2SP signed-note)")
    return name


def key_hash(name: str, public_key: bytes) -> bytes:
    """Return the 4-byte key hash ``SHA-256(name || 0x0A || 0x01 || key)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc


class Verifier:
    """An Ed25519 note verifier: a key name and a public key."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        self.name = _check_name(name)
        self.public_key = public_key
        self.raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_hash = key_hash(name, self.raw)

    @property
    def key_id(self) -> str:
        """The key hash as 8 hex digits, as written in key texts."""
        return self.key_hash.hex()

    @property
    def vkey(self) -> str:
        """The verifier key text ``name+hash+base64(0x01 || key)``."""
        return f"{self.name}+{self.key_id}+{base64.b64encode(bytes([ALG_ED25519]) + self.raw).decode()}"

    @classmethod
    def from_vkey(cls, text: str) -> Verifier:
        """Parse a verifier key text; raise :class:`ConfigError` if it is malformed."""
        parts = text.strip().split("+", 2)
        try:
            if len(parts) != 3 or len(parts[1]) != 8:
                raise ValueError("wrong shape")
            name, hash_hex, blob = parts
            raw = _b64decode(blob)
            if len(raw) != 33 or raw[0] != ALG_ED25519:
                raise ValueError("not an Ed25519 key")
            verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        except (ValueError, ConfigError) as exc:
            raise ConfigError("malformed verifier key; expected name+hash+base64 (C2SP signed-note)") from exc
        if verifier.key_id != hash_hex.lower():
            raise ConfigError("malformed verifier key: its key hash does not match its name and key")
        return verifier

    @classmethod
    def from_public_pem(cls, name: str, pem: bytes) -> Verifier:
        """Build a verifier from a PEM (SubjectPublicKeyInfo) Ed25519 public key."""
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise ConfigError("public key file is neither a verifier key nor a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError("public key file does not hold an Ed25519 key")
        return cls(name, key)

    def verify(self, note: str) -> str:
        """Return the text of ``note`` if it carries a valid signature by this key.

        Signatures by other keys (another name or key hash) are ignored, as C2SP
        signed-note requires; a signature that names this key and hash but does not verify
        rejects the whole note (the spec's SHOULD, taken as a MUST: a forged line next to a
        genuine one is evidence of tampering, not noise).

        Raises
        ------
        VerificationError
            If the note is malformed or holds no valid signature by this key (one message).
        """
        text, signatures = split_note(note)
        if not self.verify_lines(text, signatures):
            raise VerificationError(_BAD_NOTE)
        return text

    def matches(self, name: str, blob: bytes) -> bool:
        """Whether a signature line names this key (name and key hash both equal)."""
        return name == self.name and blob[:4] == self.key_hash

    def verify_lines(self, text: str, signatures: list[tuple[str, bytes]]) -> bool:
        """Check this key's signature lines on ``text``; return whether one was found.

        Raises
        ------
        VerificationError
            If a line of this key does not verify.
        """
        found = False
        for name, blob in signatures:
            if not self.matches(name, blob):
                continue
            try:
                if len(blob) != 4 + 64:
                    raise InvalidSignature
                self.public_key.verify(blob[4:], text.encode())
            except InvalidSignature as exc:
                raise VerificationError(_BAD_NOTE) from exc
            found = True
        return found

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verifier) and other.vkey == self.vkey

    def __hash__(self) -> int:
        return hash(self.vkey)

    def __repr__(self) -> str:
        return f"Verifier({self.vkey!r})"


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Split a signed note into its text and ``(key name, key hash || signature)`` pairs.

    Strict C2SP signed-note parsing: no ASCII control character but newline anywhere, the
    text ends in a newline and is separated from the signatures by the last blank line,
    every signature line is ``— name base64`` with a valid key name and at least a key
    hash, at most :data:`MAX_SIGNATURES` lines, and no key (name and key hash) signs twice.

    Raises
    ------
    VerificationError
        If the note does not have the C2SP shape.
    """
    if not note.endswith("\n") or "\n\n" not in note or _CONTROL.search(note):
        raise VerificationError(_BAD_NOTE)
    cut = note.rindex("\n\n")
    text, block = note[: cut + 1], note[cut + 2 :]
    lines = block.split("\n")[:-1]
    if not lines or len(lines) > MAX_SIGNATURES:
        raise VerificationError(_BAD_NOTE)
    signatures: list[tuple[str, bytes]] = []
    seen: set[tuple[str, bytes]] = set()
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH or not _NAME.fullmatch(parts[1]):
            raise VerificationError(_BAD_NOTE)
        try:
            blob = _b64decode(parts[2])
        except ValueError as exc:
            raise VerificationError(_BAD_NOTE) from exc
        if len(blob) < 4 or (parts[1], blob[:4]) in seen:
            raise VerificationError(_BAD_NOTE)
        seen.add((parts[1], blob[:4]))
        signatures.append((parts[1], blob))
    return text, signatures


class Signer:
    """An Ed25519 note signer; its key name is the log origin when it signs checkpoints.

    Keys come from the operating system's CSPRNG (:meth:`generate`) and are stored either
    as a C2SP private key text or as PKCS#8 PEM (:meth:`save`, readable by OpenSSL).
    """

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.name = _check_name(name)
        self._key = private_key
        self.verifier = Verifier(name, private_key.public_key())

    @classmethod
    def generate(cls, name: str) -> Signer:
        """Create a fresh key named ``name``."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, name: str, seed: bytes) -> Signer:
        """Build a signer from a 32-byte Ed25519 seed (RFC 8032 §5.1.5)."""
        if len(seed) != 32:
            raise ConfigError(f"an Ed25519 private key has 32 bytes, got {len(seed)}")
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_skey(cls, text: str) -> Signer:
        """Parse a ``PRIVATE+KEY+name+hash+base64`` signer key text."""
        parts = text.strip().split("+", 4)
        try:
            if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
                raise ValueError("wrong shape")
            raw = _b64decode(parts[4])
            if len(raw) != 33 or raw[0] != ALG_ED25519:
                raise ValueError("not an Ed25519 key")
            signer = cls.from_private_bytes(parts[2], raw[1:])
        except (ValueError, ConfigError) as exc:
            raise ConfigError("malformed signer key; expected PRIVATE+KEY+name+hash+base64") from exc
        if signer.key_id != parts[3].lower():
            raise ConfigError("malformed signer key: its key hash does not match its name and key")
        return signer

    @classmethod
    def from_pem(cls, name: str, pem: bytes) -> Signer:
        """Load an unencrypted PKCS#8 PEM Ed25519 private key."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("signing key is not an unencrypted PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("signing key is not an Ed25519 key")
        return cls(name, key)

    @classmethod
    def load(cls, path: Path, *, name: str | None = None) -> Signer:
        """Read a signer key file: C2SP key text, or PEM (then ``name`` is required)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read signing key ({exc.strerror})") from exc
        if data.startswith(b"PRIVATE+KEY+"):
            return cls.from_skey(data.decode())
        if name is None:
            raise ConfigError(f"{path}: a PEM signing key needs the key name (the log origin)")
        return cls.from_pem(name, data)

    def save(self, path: Path) -> None:
        """Write the key as C2SP key text to a new file readable by its owner only (0600).

        Raises
        ------
        ConfigError
            If ``path`` exists (a signing key is never overwritten) or cannot be created.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise ConfigError(f"{path}: already exists; a signing key is never overwritten") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create signing key ({exc.strerror})") from exc
        with os.fdopen(fd, "w") as fh:
            fh.write(self.skey + "\n")

    def private_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def skey(self) -> str:
        """The signer key text ``PRIVATE+KEY+name+hash+base64(0x01 || seed)``."""
        seed = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return f"PRIVATE+KEY+{self.name}+{self.key_id}+{base64.b64encode(bytes([ALG_ED25519]) + seed).decode()}"

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The Ed25519 public key."""
        return self.verifier.public_key

    @property
    def key_id(self) -> str:
        """The 4-byte key hash as 8 hex digits."""
        return self.verifier.key_id

    @property
    def vkey(self) -> str:
        """The verifier key text to publish (C2SP signed-note)."""
        return self.verifier.vkey

    def signature_line(self, text: str) -> str:
        """Return the signature line for ``text`` (ending with a newline)."""
        sig = self._key.sign(text.encode())
        return f"{_DASH} {self.name} {base64.b64encode(self.verifier.key_hash + sig).decode()}\n"

    def sign(self, text: str) -> str:
        """Return ``text`` as a signed note.

        Raises
        ------
        ValueError
            If ``text`` is empty or does not end with a newline (C2SP signed-note).
        """
        if not text.endswith("\n") or _CONTROL.search(text):
            raise ValueError("note text must end with a newline and contain no control character but newline")
        return text + "\n" + self.signature_line(text)

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id!r})"
