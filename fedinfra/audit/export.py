"""Exporting a log to plain files that ``fedinfra audit verify DIR`` checks offline."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fedinfra.audit.sources import (
    CHECKPOINTS_FILE,
    ENTRIES_FILE,
    EXPORT_FORMAT,
    MANIFEST_FILE,
    VKEY_FILE,
    StoreSource,
)
from fedinfra.errors import ConfigError, StoreError


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    directory: str
    origin: str
    entries: int
    checkpoints: int


def export_log(target: str | Path, out_dir: Path) -> ExportSummary:
    """Copy the log at ``target`` into ``out_dir`` (created; must be empty if it exists).

    The entries are written byte for byte as stored, so the export is verifiable exactly
    as the store is; nothing is re-serialised.

    Raises
    ------
    ConfigError
        If ``out_dir`` exists and is not an empty directory.
    StoreError
        If the store cannot be read or the files cannot be written.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir}: export directory must be new or empty")
    source = StoreSource(target)
    try:
        meta = source.meta()
        out_dir.mkdir(parents=True, exist_ok=True)
        count = 0
        with (out_dir / ENTRIES_FILE).open("wb") as fh:
            for _, data, _ in source.entries():
                fh.write(data + b"\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        checkpoints = source.checkpoints()
        cosigned: dict[int, list[str]] = {}
        for size, line in source.cosignatures():
            cosigned.setdefault(size, []).append(line)
        with (out_dir / CHECKPOINTS_FILE).open("w", encoding="utf-8") as fh:
            for row in checkpoints:
                doc = {"tree_size": row.size, "note": row.note, "cosignatures": cosigned.get(row.size, [])}
                fh.write(json.dumps(doc, sort_keys=True) + "\n")
        (out_dir / VKEY_FILE).write_text(meta.get("vkey", "") + "\n", encoding="utf-8")
        manifest = {
            "format": EXPORT_FORMAT,
            "origin": meta.get("origin", ""),
            "vkey": meta.get("vkey", ""),
            "entries": count,
            "checkpoints": len(checkpoints),
        }
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"{out_dir}: cannot write export ({exc.strerror})") from exc
    finally:
        source.close()
    return ExportSummary(
        directory=str(out_dir), origin=meta.get("origin", ""), entries=count, checkpoints=len(checkpoints)
    )
