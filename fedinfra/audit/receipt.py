"""Receipts: an entry, its inclusion proof and the signed checkpoint it is proven against.

After each round a site receives a receipt for its own ``update.received`` entry and checks,
offline, that (1) the checkpoint is signed by the coordinator's key (C2SP signed-note),
(2) the entry is in that tree (RFC 9162 §2.1.3) and (3) the tree extends the last
checkpoint the site holds (RFC 9162 §2.1.4). Together these stop a coordinator from
showing different histories to different sites ("split view", RFC 9162 §8.2 / §11.3).
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedinfra.audit.checkpoint import Checkpoint
from fedinfra.audit.entry import Entry
from fedinfra.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from fedinfra.audit.note import Verifier
from fedinfra.errors import ConfigError, StoreError, VerificationError

RECEIPT_FORMAT = "fedinfra-receipt/1"

_BAD = "receipt does not verify; do not trust this log (stop and report it)"


class ConsistencyProof(BaseModel):
    """RFC 9162 §2.1.4 proof that the tree of ``new_size`` extends the one of ``old_size``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    old_size: int = Field(ge=0)
    new_size: int = Field(gt=0)
    hashes: list[str]


class Receipt(BaseModel):
    """Proof that one entry is in the log, against a signed checkpoint (JSON-serialisable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["fedinfra-receipt/1"] = "fedinfra-receipt/1"
    entry: Entry
    tree_size: int = Field(gt=0)
    inclusion: list[str]
    checkpoint: str
    consistency: ConsistencyProof | None = None

    def to_json(self) -> str:
        """Serialise the receipt as JSON text."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "receipt") -> Receipt:
        """Parse a receipt; raise :class:`VerificationError` naming ``source`` if malformed."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise VerificationError(f"{source}: malformed receipt ({loc}: {first['msg']})") from exc

    def save(self, path: Path) -> None:
        """Write the receipt atomically (temporary file, fsync, rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".receipt-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Receipt:
        """Read a receipt file."""
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{path}: cannot read receipt ({exc.strerror})") from exc
        return cls.from_json(text, source=str(path))


def _hashes(items: list[str]) -> list[bytes]:
    try:
        return [base64.b64decode(x, validate=True) for x in items]
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(_BAD) from exc


def _as_verifier(key: Verifier | str) -> Verifier:
    if isinstance(key, Verifier):
        return key
    try:
        return Verifier.from_vkey(key)
    except ConfigError as exc:
        raise VerificationError(f"{exc}") from exc


def verify_receipt(
    receipt: Receipt, *, verifier_key: Verifier | str, previous: Checkpoint | None = None
) -> Checkpoint:
    """Verify a receipt and return its checkpoint, to keep as the next ``previous``.

    Checks the checkpoint signature, the entry's inclusion at ``entry.seq`` and, when
    ``previous`` is given, that the new tree extends it (equal sizes need equal roots).

    Raises
    ------
    VerificationError
        If any check fails; the message does not say which (as Fernet's ``InvalidToken``).
    """
    verifier = _as_verifier(verifier_key)
    try:
        checkpoint = Checkpoint.from_note(receipt.checkpoint, verifier)
        if checkpoint.size != receipt.tree_size:
            raise VerificationError(_BAD)
        leaf = leaf_hash(receipt.entry.canonical())
        verify_inclusion(receipt.entry.seq, checkpoint.size, leaf, _hashes(receipt.inclusion), checkpoint.root_hash)
        if previous is not None:
            _check_extends(previous, checkpoint, receipt.consistency)
    except (VerificationError, ValueError) as exc:
        raise VerificationError(_BAD) from exc
    return checkpoint


def _check_extends(previous: Checkpoint, new: Checkpoint, proof: ConsistencyProof | None) -> None:
    if previous.origin != new.origin or previous.size > new.size:
        raise VerificationError(_BAD)
    if previous.size == new.size:
        if previous.root_hash != new.root_hash:
            raise VerificationError(_BAD)
        return
    if proof is None or proof.old_size != previous.size or proof.new_size != new.size:
        raise VerificationError(_BAD)
    verify_consistency(previous.size, new.size, previous.root_hash, new.root_hash, _hashes(proof.hashes))


def receipt_path(directory: Path, receipt: Receipt) -> Path:
    """Return where a site keeps ``receipt``: sorted by tree size, then seq."""
    return directory / f"receipt-{receipt.tree_size:012d}-{receipt.entry.seq:012d}.json"


def latest_checkpoint(directory: Path, verifier_key: Verifier | str) -> Checkpoint | None:
    """Return the largest checkpoint among the receipts kept in ``directory`` (re-verified).

    Raises
    ------
    VerificationError
        If a kept receipt no longer verifies (the site's own records were altered).
    """
    files = sorted(directory.glob("receipt-*.json")) if directory.is_dir() else []
    if not files:
        return None
    return verify_receipt(Receipt.load(files[-1]), verifier_key=verifier_key)
