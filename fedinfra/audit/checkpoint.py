"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes.

A checkpoint (https://c2sp.org/tlog-checkpoint) commits the log to one tree head::

    <origin>
    <tree size, decimal>
    <base64 root hash>

signed with the log's Ed25519 key (:mod:`fedinfra.audit.note`). A site that holds two
checkpoints and a consistency proof between them (RFC 9162 §2.1.4) knows the log only grew.
"""

from __future__ import annotations

import base64
import binascii
import re

from pydantic import BaseModel, ConfigDict

from fedinfra.audit.merkle import HASH_SIZE
from fedinfra.audit.note import Signer, Verifier
from fedinfra.errors import ConfigError, VerificationError

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_ORIGIN = re.compile(r"[^\s+]{1,255}")


def check_origin(origin: str) -> str:
    """Return ``origin`` if it is a valid log origin (no spaces, no '+', 1-255 characters).

    C2SP tlog-checkpoint asks for a schema-less URL naming the log; fedinfra also uses it
    as the signing key's name, so it must satisfy the signed-note key-name rules.
    """
    if not _ORIGIN.fullmatch(origin):
        raise ConfigError(f"log origin {origin!r} must be 1-255 characters without spaces or '+'")
    return origin


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    """Return the tlog-checkpoint body for ``(origin, size, root)``."""
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


class Checkpoint(BaseModel):
    """A verified tree head and the signed note that commits to it."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    origin: str
    size: int
    root_hash: bytes
    note: str

    @property
    def root_b64(self) -> str:
        """The root hash in base64, as written in the note."""
        return base64.b64encode(self.root_hash).decode()

    @classmethod
    def sign(cls, signer: Signer, size: int, root: bytes) -> Checkpoint:
        """Sign the tree head ``(size, root)`` with ``signer``; its name is the origin."""
        note = signer.sign(checkpoint_body(signer.name, size, root))
        return cls(origin=signer.name, size=size, root_hash=root, note=note)

    @classmethod
    def from_note(cls, note: str, verifier: Verifier) -> Checkpoint:
        """Verify ``note`` with ``verifier`` and parse its checkpoint body.

        The origin must equal the verifier's key name, so a note signed for one log cannot
        be replayed as a checkpoint of another.

        Raises
        ------
        VerificationError
            If the signature does not verify or the body is not a checkpoint.
        """
        text = verifier.verify(note)
        return cls.from_text(text, note, origin=verifier.name)

    @classmethod
    def from_text(cls, text: str, note: str, *, origin: str) -> Checkpoint:
        """Parse a verified note text as a checkpoint of the log ``origin``.

        C2SP tlog-checkpoint: at least three lines (origin, decimal size without leading
        zeroes, base64 root hash); extension lines, if any, must be non-empty.

        Raises
        ------
        VerificationError
            If the text is not a checkpoint of ``origin``.
        """
        lines = text.split("\n")[:-1]
        bad = VerificationError("signed note is not a valid checkpoint")
        if len(lines) < 3 or lines[0] != origin or not _SIZE.fullmatch(lines[1]) or "" in lines:
            raise bad
        try:
            root = base64.b64decode(lines[2], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise bad from exc
        if len(root) != HASH_SIZE or base64.b64encode(root).decode() != lines[2]:
            raise bad
        return cls(origin=lines[0], size=int(lines[1]), root_hash=root, note=note)
