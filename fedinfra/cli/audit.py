"""``fedinfra audit verify|show|prove|export``: the tamper-evident audit trail.

``show``, ``prove`` and ``export`` record a ``log.read`` entry *before* reading (PCI DSS
v4.0 10.2.1.3: all access to audit logs is logged); if the read cannot be recorded, the
read is refused. ``verify`` opens the store read-only, so auditors can check a copy or a
read-only medium without altering it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from fedinfra.cli._common import (
    EXIT_CHECK_FAILED,
    OutputFormat,
    console,
    err_console,
    fail,
    guarded,
    print_json,
)

if TYPE_CHECKING:
    from fedinfra.audit import VerifyResult

app = typer.Typer(
    name="audit", help="Verify, show, prove and export the tamper-evident audit log.", no_args_is_help=True
)

_TARGET_HELP = "SQLite audit store, postgresql+psycopg:// URL, or (verify only) an export directory."
CLI_ACTOR_ID = "fedinfra-cli"


def register(root: typer.Typer) -> None:
    """Add ``audit`` to the root application."""
    root.add_typer(app)


def _target(text: str) -> str | Path:
    return text if "://" in text else Path(text)


def _record_read(target: str | Path, command: str, run_id: str | None, details: dict[str, object]) -> None:
    from fedinfra.audit import Actor, AuditLog

    with AuditLog.open(target) as log:
        log.append(
            run_id=run_id,
            round=None,
            type="log.read",
            actor=Actor(kind="operator", id=CLI_ACTOR_ID),
            outcome="success",
            details={"command": command, **details},  # type: ignore[dict-item]
        )


@app.command("verify")
def verify_cmd(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="Pin the log's key (C2SP verifier key or PEM); detects a re-signed fork."
    ),
    held: list[Path] = typer.Option(
        [], "--checkpoint", help="A checkpoint held outside the store: signed note, receipt or a run's metrics.json."
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Replay every entry and checkpoint; exit 0 only if the whole log verifies."""
    from fedinfra.audit import load_held_checkpoint, verify_store

    def run() -> VerifyResult:
        notes = [load_held_checkpoint(path) for path in held]
        return verify_store(_target(target), public_key=public_key, held_checkpoints=notes)

    result = guarded(run)
    if fmt is OutputFormat.json:
        print_json(result.to_dict())
        if not result.ok:
            raise typer.Exit(EXIT_CHECK_FAILED)
        return
    if not result.ok:
        fail(f"{result.target}: {result.position}: {result.problem}", EXIT_CHECK_FAILED)
    console.print(
        f"[bold green]verified[/] {result.target}: {result.entries} entries, {result.checkpoints} signed checkpoints "
        f"(head: size {result.head_size}, root {result.head_root})",
        highlight=False,
        soft_wrap=True,
    )
    parts = (result.key or "").split("+", 2)
    key_id = parts[1] if len(parts) == 3 else "?"
    console.print(
        f"key {result.origin}+{key_id} "
        f"({'pinned' if result.key_pinned else 'from the store; pin it with --public-key'})",
        highlight=False,
        soft_wrap=True,
    )
    if result.unsigned_tail:
        err_console.print(
            f"[yellow]note:[/] {result.unsigned_tail} entries after the last checkpoint are not signed yet",
            highlight=False,
        )


@app.command("show")
def show_cmd(
    target: str = typer.Argument(..., help="SQLite audit store or postgresql+psycopg:// URL."),
    run: str | None = typer.Option(None, "--run", help="Only entries of this run id."),
    type_: str | None = typer.Option(None, "--type", help="Only entries of this event type."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many entries."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """List entries as a table (the read is itself logged)."""
    from fedinfra.audit import EVENT_TYPES, AuditLog

    if type_ is not None and type_ not in EVENT_TYPES:
        fail(f"--type {type_!r} is not an event type; use one of: {', '.join(sorted(EVENT_TYPES))}")
    where = _target(target)
    filters = {"run": run, "type": type_}

    def read() -> list[dict[str, object]]:
        _record_read(where, "show", run, {k: v for k, v in filters.items() if v is not None})
        with AuditLog.open(where) as log:
            return [e.to_json_dict() for e in log.entries(run_id=run, type=type_, limit=limit)]

    rows = guarded(read)
    if run is not None and type_ is None and all(row["type"] == "log.read" for row in rows):
        # only this read's own log.read entry names the run: there is no such run
        fail(f"--run {run}: no entries for this run id in {target}; list the runs with 'fedinfra runs ls'")
    if fmt is OutputFormat.json:
        print_json(rows)
        return
    table = Table(title=f"audit log {target}", show_lines=False)
    for column in ("seq", "time (UTC)", "run", "round", "type", "actor", "outcome", "subject", "details"):
        table.add_column(column, overflow="fold")
    for row in rows:
        actor = row["actor"]
        subject = row["subject"]
        assert isinstance(actor, dict)
        table.add_row(
            str(row["seq"]),
            str(row["ts"]),
            str(row["run_id"] or ""),
            "" if row["round"] is None else str(row["round"]),
            str(row["type"]),
            f"{actor['kind']}:{actor['id']}",
            str(row["outcome"]),
            "" if not isinstance(subject, dict) else f"{subject['artifact']} {str(subject['sha256'])[:12]}…",
            json.dumps(row["details"], sort_keys=True, separators=(",", ":")) if row["details"] else "",
        )
    console.print(table)


@app.command("prove")
def prove_cmd(
    target: str = typer.Argument(..., help="SQLite audit store or postgresql+psycopg:// URL."),
    seq: int = typer.Option(..., "--seq", min=0, help="Entry to prove."),
    since: int | None = typer.Option(
        None, "--since", min=1, help="Also prove consistency from this earlier checkpoint's tree size."
    ),
    out: Path | None = typer.Option(None, "--out", help="Also write the receipt to this file."),
    fmt: OutputFormat = typer.Option(
        OutputFormat.json, "--format", help="json (the receipt, default) or text (a summary)."
    ),
) -> None:
    """Print a receipt for entry SEQ: the entry, its inclusion proof and the signed checkpoint (JSON)."""
    from fedinfra.audit import AuditLog, Receipt

    where = _target(target)

    def prove() -> Receipt:
        _record_read(where, "prove", None, {"seq": seq})
        with AuditLog.open(where) as log:
            receipt = log.receipt(seq, since=since)
        if out is not None:
            receipt.save(out)
        return receipt

    receipt = guarded(prove)
    payload = json.loads(receipt.to_json())
    if fmt is OutputFormat.json:
        print_json(payload)
        return
    proofs = ", ".join(k for k in sorted(payload) if "proof" in k) or "none"
    console.print(
        f"receipt for entry {seq} of {target}: proofs {proofs}" + (f"; written to {out}" if out else ""),
        highlight=False,
        soft_wrap=True,
    )


@app.command("export")
def export_cmd(
    target: str = typer.Argument(..., help="SQLite audit store or postgresql+psycopg:// URL."),
    out: Path = typer.Option(..., "--out", help="New directory for entries.jsonl, checkpoints.jsonl and the key."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Export the log as JSONL + checkpoints + public key, verifiable offline with `audit verify DIR`."""
    from dataclasses import asdict

    from fedinfra.audit import export_log

    where = _target(target)

    def run() -> dict[str, object]:
        _record_read(where, "export", None, {})
        return asdict(export_log(where, out))

    summary = guarded(run)
    if fmt is OutputFormat.json:
        print_json(summary)
    else:
        console.print(
            f"exported {summary['entries']} entries and {summary['checkpoints']} checkpoints to {summary['directory']}",
            highlight=False,
            soft_wrap=True,
        )
