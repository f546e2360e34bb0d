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


def held_checkpoint_path(directory: Path, checkpoint: Checkpoint) -> Path:
    """Where a site keeps a checkpoint it verified and cosigned, sorted by tree size."""
    return directory / f"checkpoint-{checkpoint.size:012d}.note"


def save_held_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Keep ``checkpoint``'s signed note in ``directory`` (atomic write); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = held_checkpoint_path(directory, checkpoint)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(checkpoint.note)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def held_notes(directory: Path) -> list[tuple[Path, str]]:
    """Every checkpoint note a site keeps under ``directory``: in its receipts and cosigned notes.

    Raises
    ------
    StoreError
        If a kept file cannot be read.
    VerificationError
        If a kept receipt is malformed.
    """
    found: list[tuple[Path, str]] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.rglob("receipt-*.json")):
        found.append((path, Receipt.load(path).checkpoint))
    for path in sorted(directory.rglob("checkpoint-*.note")):
        try:
            found.append((path, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: cannot read kept checkpoint") from exc
    return found


def latest_checkpoint(directory: Path, verifier_key: Verifier | str) -> Checkpoint | None:
    """Return the largest checkpoint the site keeps in ``directory`` (re-verified).

    Both the newest receipt and the newest cosigned checkpoint note count.

    Raises
    ------
    VerificationError
        If a kept receipt or note no longer verifies (the site's own records were altered).
    """
    if not directory.is_dir():
        return None
    best: Checkpoint | None = None
    files = sorted(directory.glob("receipt-*.json"))
    if files:
        best = verify_receipt(Receipt.load(files[-1]), verifier_key=verifier_key)
    notes = sorted(directory.glob("checkpoint-*.note"))
    if notes:
        try:
            text = notes[-1].read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VerificationError(f"{notes[-1]}: kept checkpoint is unreadable") from exc
        kept = Checkpoint.from_note(text, _as_verifier(verifier_key))
        if best is None or kept.size > best.size:
            best = kept
    return best
