"""Checking the coordinator's audit receipts before training again.

After each round a site receives, for its own ``update.received`` entry, an inclusion
proof against a signed checkpoint plus a consistency proof from the last checkpoint it
holds (RFC 9162 §2.1.3-2.1.4; C2SP signed notes). It verifies all three and keeps the
receipt on disk; if any fails it refuses to train (a split view or an edited log is
exactly what a transparency log exists to expose).
"""

from __future__ import annotations

from pathlib import Path

from fedinfra.errors import VerificationError


def verify_and_store(receipts: list[str], *, directory: Path, verifier_key: str | None) -> int:
    """Verify ``receipts`` (JSON) in order, keep each; return how many were verified.

    Raises
    ------
    VerificationError
        If a receipt does not verify, or receipts arrive but the site has no key to check
        them with (fail closed).
    """
    if not receipts:
        return 0
    from fedinfra.audit import Receipt, latest_checkpoint, receipt_path, verify_receipt

    if verifier_key is None:
        raise VerificationError("received audit receipts but the site kit holds no coordinator log key")
    directory.mkdir(parents=True, exist_ok=True)
    previous = latest_checkpoint(directory, verifier_key)
    for text in receipts:
        receipt = Receipt.from_json(text)
        try:
            checkpoint = verify_receipt(receipt, verifier_key=verifier_key, previous=previous)
        except VerificationError as exc:
            raise VerificationError(f"audit receipt for entry {receipt.entry.seq} did not verify") from exc
        receipt.save(receipt_path(directory, receipt))
        if previous is None or checkpoint.size >= previous.size:
            previous = checkpoint
    return len(receipts)


def current_size(directory: Path, verifier_key: str | None) -> int:
    """Tree size of the newest checkpoint the site holds (0 when none)."""
    if verifier_key is None:
        return 0
    from fedinfra.audit import latest_checkpoint

    cp = latest_checkpoint(directory, verifier_key)
    return 0 if cp is None else cp.size
