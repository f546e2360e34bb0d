"""``fedinfra audit verify|show|prove|export``: the tamper-evident audit trail.

Every reader opens the store read-only (SQLite ``mode=ro``, PostgreSQL READ ONLY
transactions) and never creates or changes a file of it. ``show``, ``prove`` and ``export``
record a ``log.read`` *before* reading (PCI DSS v4.0 10.2.1.3: all access to audit logs is
logged) in a separate, hash-chained access log (:mod:`fedinfra.audit.access`); if the read
cannot be recorded, it is refused. ``verify`` and ``gossip`` record nothing, so auditors
can check a copy or a read-only medium.
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
from fedinfra.errors import ConfigError

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


_ACCESS_HELP = "Record this read here (default: STORE.reads.jsonl beside a SQLite store; needed for a URL)."


def _record_read(
    target: str | Path, access_log: Path | None, command: str, run_id: str | None, details: dict[str, object]
) -> None:
    """Record the read as ``log.read`` in the access log, before reading (refused if it cannot be)."""
    from fedinfra.audit import AuditLog
    from fedinfra.audit.access import ACCESS_ENV, default_access_log, record_read

    path = access_log or default_access_log(target)
    if path is None:
        raise ConfigError(f"a read of a database store must be recorded: pass --access-log PATH or set {ACCESS_ENV}")
    with AuditLog.open(target, readonly=True) as log:
        head = log.latest_checkpoint
        record_read(
            path,
            store=log.display,
            origin=log.origin,
            tree_size=0 if head is None else head.size,
            root=None if head is None else head.root_b64,
            command=command,
            actor=CLI_ACTOR_ID,
            details={k: v for k, v in {"run": run_id, **details}.items() if v is not None},
        )


@app.command("verify")
def verify_cmd(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="Pin the log's key (C2SP verifier key or PEM); detects a re-signed fork."
    ),
    held: list[Path] = typer.Option(
        [],
        "--checkpoint",
        help="Checkpoints held outside the store: a note, receipt, metrics.json, receipts dir or export.",
    ),
    witnesses: list[Path] = typer.Option(
        [],
        "--witnesses",
        help="Sites' cosigner keys (a file, one a line, or the coordinator kit); the newest checkpoint needs a quorum.",
    ),
    quorum: int | None = typer.Option(None, "--quorum", min=1, help="Cosigners required (default: every witness)."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Replay every entry and checkpoint; exit 0 only if the whole log verifies.

    Opens the store read-only and records nothing: it works on a copy or a read-only mount.
    """
    from fedinfra.audit import verify_store
    from fedinfra.audit.cosign import load_witnesses
    from fedinfra.audit.gossip import load_held

    def run() -> VerifyResult:
        notes = [note for path in held for _, note in load_held(path)]
        keys = load_witnesses(witnesses) if witnesses else []
        if quorum is not None and not keys:
            raise ConfigError("--quorum needs --witnesses")
        return verify_store(
            _target(target), public_key=public_key, held_checkpoints=notes, witnesses=keys, quorum=quorum
        )

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
    if result.quorum is not None:
        console.print(
            f"witnessed: newest checkpoint cosigned by {', '.join(result.head_cosigners)} "
            f"({len(result.head_cosigners)} of {result.quorum} required)",
            highlight=False,
            soft_wrap=True,
        )
    if result.unwitnessed_reports:
        err_console.print(
            f"[yellow]note:[/] {result.unwitnessed_reports} report regenerations after the cosigned checkpoint "
            "are not witnessed (readers' records, not the run's)",
            highlight=False,
        )
    elif result.unsigned_tail:
        err_console.print(
            f"[yellow]note:[/] {result.unsigned_tail} entries after the last checkpoint are not signed yet",
            highlight=False,
        )


@app.command("init-store")
def init_store_cmd(
    target: str = typer.Argument(..., help="postgresql+psycopg:// URL (as the schema's owner) or a SQLite path."),
    public_key: Path = typer.Option(..., "--public-key", help="The log's verifier key (kit's [audit] vkey or .vkey)."),
    writer: str | None = typer.Option(None, "--writer", help="PostgreSQL role of the coordinator: SELECT + INSERT."),
    reader: str | None = typer.Option(None, "--reader", help="PostgreSQL role of auditors: SELECT only."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Create the audit tables and append-only triggers once, as their owner; grant least privilege."""
    from fedinfra.audit import AuditLog, load_public_key

    def run() -> str:
        return AuditLog.init_store(_target(target), load_public_key(public_key), writer=writer, reader=reader)

    display = guarded(run)
    if fmt is OutputFormat.json:
        print_json({"store": display, "writer": writer, "reader": reader})
        return
    grants = ", ".join(f"{kind} {role}" for kind, role in (("writer", writer), ("reader", reader)) if role)
    console.print(
        f"audit store ready: {display}" + (f" (granted {grants})" if grants else ""), highlight=False, soft_wrap=True
    )


@app.command("gossip")
def gossip_cmd(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    held: list[Path] = typer.Option(
        ..., "--held", help="A site's receipts directory, an exported bundle, or a note/receipt file (repeatable)."
    ),
    public_key: Path | None = typer.Option(None, "--public-key", help="Pin the log's key."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Compare the checkpoints sites hold with each other and the store; exit 1 on any fork."""
    from fedinfra.audit.gossip import GossipResult, gossip

    def run() -> GossipResult:
        return gossip(_target(target), held, public_key=public_key)

    result = guarded(run)
    if fmt is OutputFormat.json:
        print_json(result.to_dict())
        if not result.ok:
            raise typer.Exit(EXIT_CHECK_FAILED)
        return
    if not result.ok:
        fail(f"{result.target}: {result.problem}", EXIT_CHECK_FAILED)
    console.print(
        f"[bold green]no fork[/] {result.target}: {result.held} held checkpoints (largest tree size "
        f"{result.largest_held}) agree with each other and with the log",
        highlight=False,
        soft_wrap=True,
    )


@app.command("show")
def show_cmd(
    target: str = typer.Argument(..., help="SQLite audit store or postgresql+psycopg:// URL."),
    run: str | None = typer.Option(None, "--run", help="Only entries of this run id."),
    type_: str | None = typer.Option(None, "--type", help="Only entries of this event type."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many entries."),
    access_log: Path | None = typer.Option(None, "--access-log", help=_ACCESS_HELP),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """List entries as a table (read-only; the read is recorded in the access log)."""
    from fedinfra.audit import EVENT_TYPES, AuditLog

    if type_ is not None and type_ not in EVENT_TYPES:
        fail(f"--type {type_!r} is not an event type; use one of: {', '.join(sorted(EVENT_TYPES))}")
    where = _target(target)

    def read() -> list[dict[str, object]]:
        _record_read(where, access_log, "show", run, {"type": type_})
        with AuditLog.open(where, readonly=True) as log:
            return [e.to_json_dict() for e in log.entries(run_id=run, type=type_, limit=limit)]

    rows = guarded(read)
    if run is not None and type_ is None and not rows:  # reads are recorded apart: no entry, no run
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
    access_log: Path | None = typer.Option(None, "--access-log", help=_ACCESS_HELP),
) -> None:
    """Print a receipt for entry SEQ against the newest checkpoint, with the sites' cosignatures (JSON)."""
    from fedinfra.audit import AuditLog, Receipt
    from fedinfra.audit.cosign import cosigned_note

    where = _target(target)

    def prove() -> Receipt:
        _record_read(where, access_log, "prove", None, {"seq": seq})
        with AuditLog.open(where, readonly=True) as log:
            receipt = log.receipt(seq, since=since)
            head = log.latest_checkpoint
            assert head is not None
            receipt = receipt.model_copy(update={"checkpoint": cosigned_note(head, log.cosignatures(head.size))})
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
    access_log: Path | None = typer.Option(None, "--access-log", help=_ACCESS_HELP),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Export the log as JSONL + checkpoints + public key, verifiable offline with `audit verify DIR`."""
    from dataclasses import asdict

    from fedinfra.audit import export_log

    where = _target(target)

    def run() -> dict[str, object]:
        _record_read(where, access_log, "export", None, {})
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
