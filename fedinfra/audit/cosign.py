"""Cosignatures: the sites witness the coordinator's checkpoints (C2SP tlog-cosignature).

A site that has checked a checkpoint's signature and its consistency with the last
checkpoint it holds (RFC 9162 §2.1.4) signs, with its *own* Ed25519 key::

    cosignature/v1
    time <POSIX seconds>
    <checkpoint note text>

and returns the note signature line ``— <name> base64(key ID || u64 time || signature)``
whose key ID is ``SHA-256(name || 0x0A || 0x04 || public key)[:4]`` (signature type
``0x04``, https://c2sp.org/tlog-cosignature). The statement is "as of that time, the
largest consistent tree I have seen of this log has this root": a coordinator that shows
two sites two histories, or rewrites the log after they cosigned, holds no quorum of
cosignatures on what it shows a verifier (the split-view defence of RFC 9162 §8.2 and of
the witness network in Meiklejohn et al., "Think global, act local: gossip and client
audits in verifiable data structures", 2020).

A cosigner's key text is ``name+keyid+base64(0x04 || public key)`` (C2SP signed-note vkey
with the cosignature type byte); its private key is kept as
``PRIVATE+KEY+name+keyid+base64(0x04 || seed)``, readable by its owner only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from fedinfra.audit.checkpoint import Checkpoint
from fedinfra.audit.note import split_note
from fedinfra.errors import ConfigError, VerificationError

ALG_COSIGNATURE_V1 = 0x04
"""Signature-type byte of Ed25519 cosignatures (C2SP signed-note, tlog-cosignature)."""

HEADER = "cosignature/v1\n"
_DASH = "\u2014"
_MAX_TIME = 2**63 - 1
_BAD = "cosignature does not verify"


def _key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_COSIGNATURE_V1]) + public_key).digest()[:4]


def signed_message(text: str, timestamp: int) -> bytes:
    """The bytes a cosigner signs: header, time line, then the checkpoint's note text."""
    return f"{HEADER}time {timestamp}\n{text}".encode()


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise ConfigError(f"cosigner name {name!r} must be non-empty, without spaces or '+' (C2SP signed-note)")
    return name


class Witness:
    """A cosigner's public key: checks its cosignatures on checkpoints."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        self.name = _check_name(name)
        self.public_key = public_key
        self.raw = _raw(public_key)
        self.key_hash = _key_hash(name, self.raw)

    @property
    def key_id(self) -> str:
        """The key ID as 8 hex digits."""
        return self.key_hash.hex()

    @property
    def vkey(self) -> str:
        """The cosigner key text ``name+keyid+base64(0x04 || key)``."""
        return f"{self.name}+{self.key_id}+{base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + self.raw).decode()}"

    @classmethod
    def from_vkey(cls, text: str) -> Witness:
        """Parse a cosigner key text; raise :class:`ConfigError` if it is malformed."""
        parts = text.strip().split("+", 2)
        try:
            if len(parts) != 3 or len(parts[1]) != 8:
                raise ValueError("wrong shape")
            raw = base64.b64decode(parts[2], validate=True)
            if len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
                raise ValueError("not an Ed25519 cosigner key")
            witness = cls(parts[0], Ed25519PublicKey.from_public_bytes(raw[1:]))
        except (ValueError, binascii.Error, ConfigError) as exc:
            raise ConfigError("malformed cosigner key; expected name+keyid+base64(0x04 || key) (C2SP)") from exc
        if witness.key_id != parts[1].lower():
            raise ConfigError("malformed cosigner key: its key ID does not match its name and key")
        return witness

    def matches(self, name: str, blob: bytes) -> bool:
        """Whether a signature line names this cosigner (name and key ID both equal)."""
        return name == self.name and blob[:4] == self.key_hash

    def check(self, text: str, blob: bytes) -> int:
        """Verify this cosigner's ``blob`` (key ID || time || signature) on note ``text``; return the time.

        Raises
        ------
        VerificationError
            If the blob is malformed or the signature does not verify.
        """
        if len(blob) != 4 + 8 + 64 or blob[:4] != self.key_hash:
            raise VerificationError(_BAD)
        (timestamp,) = struct.unpack(">Q", blob[4:12])
        if timestamp > _MAX_TIME:
            raise VerificationError(_BAD)
        try:
            self.public_key.verify(blob[12:], signed_message(text, timestamp))
        except InvalidSignature as exc:
            raise VerificationError(_BAD) from exc
        return int(timestamp)

    def verify_line(self, checkpoint: Checkpoint, line: str) -> int:
        """Verify one stored cosignature line on ``checkpoint``; return its time.

        Raises
        ------
        VerificationError
            If the line is not this cosigner's or does not verify.
        """
        name, blob = parse_line(line)
        if not self.matches(name, blob):
            raise VerificationError(_BAD)
        text, _ = split_note(checkpoint.note)
        return self.check(text, blob)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Witness) and other.vkey == self.vkey

    def __hash__(self) -> int:
        return hash(self.vkey)

    def __repr__(self) -> str:
        return f"Witness({self.vkey!r})"


class Cosigner:
    """A site's cosigning key (Ed25519, RFC 8032), born on the site and never sent."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.witness = Witness(name, private_key.public_key())
        self.name = self.witness.name

    @classmethod
    def generate(cls, name: str) -> Cosigner:
        """A fresh key from the operating system's CSPRNG."""
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def vkey(self) -> str:
        """The public cosigner key text to hand to verifiers."""
        return self.witness.vkey

    @property
    def skey(self) -> str:
        """The private key text ``PRIVATE+KEY+name+keyid+base64(0x04 || seed)``."""
        seed = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        blob = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.witness.key_id}+{blob}"

    @classmethod
    def from_skey(cls, text: str) -> Cosigner:
        """Parse a private cosigner key text."""
        parts = text.strip().split("+", 4)
        try:
            if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
                raise ValueError("wrong shape")
            raw = base64.b64decode(parts[4], validate=True)
            if len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
                raise ValueError("not an Ed25519 cosigner key")
            cosigner = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]))
        except (ValueError, binascii.Error, ConfigError) as exc:
            raise ConfigError("malformed cosigner private key; expected PRIVATE+KEY+name+keyid+base64") from exc
        if cosigner.witness.key_id != parts[3].lower():
            raise ConfigError("malformed cosigner private key: its key ID does not match its name and key")
        return cosigner

    @classmethod
    def load_or_create(cls, path: Path, name: str) -> Cosigner:
        """Load the key at ``path``, or create it (mode 0600) with its public ``.vkey`` beside it.

        Raises
        ------
        ConfigError
            If the file exists but cannot be read or is for another name.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fd = -1
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create the site's cosigning key ({exc.strerror})") from exc
        if fd < 0:
            try:
                cosigner = cls.from_skey(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read the site's cosigning key") from exc
            if cosigner.name != name:
                raise ConfigError(f"{path}: cosigning key is named {cosigner.name!r}, expected {name!r}")
            return cosigner
        cosigner = cls.generate(name)
        with os.fdopen(fd, "w") as fh:
            fh.write(cosigner.skey + "\n")
        path.with_suffix(".vkey").write_text(cosigner.vkey + "\n", encoding="utf-8")
        return cosigner

    def cosign(self, checkpoint: Checkpoint, *, timestamp: int) -> str:
        """Return the cosignature line (no newline) on ``checkpoint`` at ``timestamp``."""
        if not 0 <= timestamp <= _MAX_TIME:
            raise ValueError(f"cosignature time {timestamp} is out of range")
        text, _ = split_note(checkpoint.note)
        sig = self._key.sign(signed_message(text, timestamp))
        blob = self.witness.key_hash + struct.pack(">Q", timestamp) + sig
        return f"{_DASH} {self.name} {base64.b64encode(blob).decode()}"


def parse_line(line: str) -> tuple[str, bytes]:
    """Split ``— name base64`` into the name and the decoded blob.

    Raises
    ------
    VerificationError
        If the line does not have that shape.
    """
    parts = line.rstrip("\n").split(" ")
    if len(parts) != 3 or parts[0] != _DASH or not parts[1] or "+" in parts[1]:
        raise VerificationError(_BAD)
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(_BAD) from exc
    if len(blob) < 4:
        raise VerificationError(_BAD)
    return parts[1], blob


def cosigned_note(checkpoint: Checkpoint, lines: Iterable[str]) -> str:
    """The checkpoint's note with the cosignature lines appended (one signed note)."""
    return checkpoint.note + "".join(line.rstrip("\n") + "\n" for line in lines)


def _kit_cosigners(kit: Path) -> list[str]:
    """The cosigner keys a coordinator kit pins (``[audit.cosigners]``, from the key ceremony)."""
    import tomllib

    try:
        doc = tomllib.loads((kit / "kit.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{kit}: not a coordinator kit (no readable kit.toml); pass the kit or a key file") from exc
    pinned = doc.get("audit", {}).get("cosigners", {})
    if not isinstance(pinned, dict) or not pinned:
        raise ConfigError(f"{kit}: kit pins no cosigner keys ([audit.cosigners]); re-issue it or pass a key file")
    return [str(v) for v in pinned.values()]


def load_witnesses(paths: Sequence[Path]) -> list[Witness]:
    """Read cosigner keys: files of one key text a line, or a coordinator kit directory.

    Key files allow ``#`` comments; a kit gives its ``[audit.cosigners]`` (pinned by the key ceremony).

    Raises
    ------
    ConfigError
        If a file is unreadable, holds a malformed key, or no key at all.
    """
    witnesses: list[Witness] = []
    for path in paths:
        try:
            lines = _kit_cosigners(path) if path.is_dir() else path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read witness keys") from exc
        for number, raw in enumerate(lines, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            try:
                witnesses.append(Witness.from_vkey(text))
            except ConfigError as exc:
                raise ConfigError(f"{path}:{number}: {exc}") from exc
    if not witnesses:
        raise ConfigError("no witness keys given; pass files with one cosigner key (name+keyid+base64) a line")
    if len({w.vkey for w in witnesses}) != len(witnesses):
        raise ConfigError("a witness key is listed twice; each cosigner counts once towards the quorum")
    return witnesses


#: Longest announcement entry a :class:`ViewProof` may carry (the entry is a few hundred bytes).
MAX_VIEW_ENTRY = 4096


class ViewProof(BaseModel):
    """The checkpoint's own announcement entry, with its RFC 9162 §2.1.3 inclusion proof.

    The log's ``checkpoint.published`` entry is the last leaf (``seq = size - 1``) of the
    checkpoint it announces; the coordinator writes into it the digest of the model its
    instructions name until the next checkpoint (issue 16, "consistent views"). ``entry`` is
    the leaf's canonical JSON text, so the site hashes exactly the bytes it reads. Every
    field is hostile input: bounded here, verified by the site before it is parsed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = Field(ge=0, le=2**53 - 1)
    entry: str = Field(max_length=MAX_VIEW_ENTRY)
    inclusion: list[str] = Field(default_factory=list, max_length=64)


class CosignRequest(BaseModel):
    """The coordinator's request to cosign its newest checkpoint (travels as JSON).

    ``consistency`` proves the checkpoint extends the tree of ``old_size`` the coordinator
    believes the site holds (RFC 9162 §2.1.4); the site checks it against what it really
    holds and refuses to cosign (and to train) when it does not verify. ``view`` proves what
    the checkpoint records as the model the instruction is built on (:class:`ViewProof`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: str = Field(max_length=65_536)
    old_size: int = Field(ge=0)
    consistency: list[str] = Field(default_factory=list, max_length=128)
    view: ViewProof | None = None


class CosignReply(BaseModel):
    """A site's cosignature on the checkpoint of ``tree_size`` (travels as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tree_size: int = Field(ge=0)
    line: str = Field(max_length=512)
