"""Gossip: compare the checkpoints sites hold with the log a coordinator serves.

A split view - the coordinator showing one history to some sites and another to the
rest, or to an auditor - cannot be seen from inside any one view. It shows when views
are compared (RFC 9162 §8.1.4; Chuat et al., "Efficient gossip protocols for verifying
the consistency of certificate logs", 2015): two signed checkpoints of one size with
different roots, or a held checkpoint whose tree the log does not contain, is proof of a
fork signed by the log's own key.

Sources are a site's receipts directory (its receipts and the checkpoints it cosigned),
an exported bundle (``fedinfra audit export``), or single files (a note, a receipt, a
run's ``metrics.json``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedinfra.audit.checkpoint import Checkpoint
from fedinfra.audit.note import Verifier
from fedinfra.audit.receipt import held_notes
from fedinfra.audit.sources import MANIFEST_FILE, ExportSource
from fedinfra.audit.verify import load_held_checkpoint, load_public_key, verify_store
from fedinfra.errors import ConfigError, VerificationError


def load_held(path: Path) -> list[tuple[str, str]]:
    """Return ``(where, note)`` for every checkpoint held at ``path`` (file, receipts dir or export).

    Raises
    ------
    ConfigError
        If ``path`` does not exist or holds no checkpoint.
    """
    if path.is_dir():
        if (path / MANIFEST_FILE).is_file():
            source = ExportSource(path)
            found = [(f"{path} (tree size {row.size})", row.note) for row in source.checkpoints()]
        else:
            found = [(str(where), note) for where, note in held_notes(path)]
        if not found:
            raise ConfigError(f"{path}: holds no checkpoint (no receipt-*.json, checkpoint-*.note or export)")
        return found
    if not path.exists():
        raise ConfigError(f"{path}: no such checkpoint file or directory")
    return [(str(path), load_held_checkpoint(path))]


@dataclass(frozen=True)
class GossipResult:
    """Outcome of comparing held checkpoints with a store; ``ok`` only if no fork was found."""

    ok: bool
    target: str
    held: int
    largest_held: int
    problem: str | None = None
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Return the result as a JSON-ready dict."""
        return asdict(self)


def gossip(
    target: str | Path, held: Sequence[Path], *, public_key: Verifier | Path | None = None
) -> GossipResult:
    """Compare every checkpoint held under ``held`` with each other and with the log at ``target``.

    Raises
    ------
    ConfigError
        If a source cannot be read or a pinned key file is malformed.
    StoreError
        If ``target`` is not an audit store or export.
    """
    notes: list[tuple[str, str]] = []
    for path in held:
        notes += load_held(path)
    sources = [str(p) for p in held]
    from fedinfra.audit.sources import open_source

    source = open_source(target)
    try:
        stored_key = Verifier.from_vkey(source.meta().get("vkey", ""))
    except ConfigError as exc:
        raise ConfigError(f"{target}: the store's public key is malformed") from exc
    finally:
        source.close()
    if isinstance(public_key, Path):
        verifier = load_public_key(public_key, origin=stored_key.name)
    else:
        verifier = public_key or stored_key
    seen: dict[int, tuple[str, bytes]] = {}
    largest = 0
    for where, note in notes:
        try:
            checkpoint = Checkpoint.from_note(note, verifier)
        except VerificationError:
            problem = f"{where}: not signed by the log's key"
            return GossipResult(False, str(target), len(notes), largest, problem, sources)
        largest = max(largest, checkpoint.size)
        first = seen.setdefault(checkpoint.size, (where, checkpoint.root_hash))
        if first[1] != checkpoint.root_hash:
            problem = (
                f"fork: {first[0]} and {where} hold different signed checkpoints of tree size {checkpoint.size} "
                f"({base64.b64encode(first[1]).decode()} vs {checkpoint.root_b64})"
            )
            return GossipResult(False, str(target), len(notes), largest, problem, sources)
    result = verify_store(target, public_key=verifier, held_checkpoints=[note for _, note in notes])
    if not result.ok:
        return GossipResult(False, str(target), len(notes), largest, f"{result.position}: {result.problem}", sources)
    return GossipResult(True, str(target), len(notes), largest, None, sources)
