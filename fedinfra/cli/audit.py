"""``fedinfra audit verify|show|prove|export``: the tamper-evident audit trail.

Every reader opens the store read-only (SQLite ``mode=ro``, PostgreSQL READ ONLY
transactions) and never creates or changes a file of it. ``show``, ``prove`` and ``export``
record a ``log.read`` *before* reading (PCI DSS v4.0 10.2.1.3: all access to audit logs is
logged) in a separate, hash-chained access log (:mod:`fedinfra.audit.access`); if the read
cannot be recorded, it is refused. The log's writer seals that access log into the signed
log at every checkpoint, so a sealed read cannot be removed unseen (``verify`` checks it);
``prove --sign-with`` seals at once. ``verify`` and ``gossip`` record nothing, so auditors
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
    from fedinfra.audit import Signer, VerifyResult

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


def _finish(doc: dict[str, object], ok: bool, problem: str, fmt: OutputFormat) -> None:
    """Print a check's JSON (any outcome) or its one-line failure; exit 1 when it failed."""
    if fmt is OutputFormat.json:
        print_json(doc)
        if not ok:
            raise typer.Exit(EXIT_CHECK_FAILED)
    elif not ok:
        fail(problem, EXIT_CHECK_FAILED)


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _note(text: str) -> None:
    err_console.print(f"[yellow]note:[/] {text}", highlight=False, soft_wrap=True)


def _print_verified(result: VerifyResult) -> None:
    """The text summary of a log that verified: key, witnesses, what was compared, and the limits."""
    _say(
        f"[bold green]verified[/] {result.target}: {result.entries} entries, {result.checkpoints} signed checkpoints "
        f"(head: size {result.head_size}, root {result.head_root})"
    )
    parts = (result.key or "").split("+", 2)
    key_id = parts[1] if len(parts) == 3 else "?"
    pinned = "pinned" if result.key_pinned else "from the store; pin it with --public-key"
    _say(f"key {result.origin}+{key_id} ({pinned})")
    if result.quorum is not None:
        when = f", newest cosignature {result.witnessed_at}" if result.witnessed_at else ""
        _say(
            f"witnessed: checkpoint of tree size {result.witnessed_size} cosigned by "
            f"{', '.join(result.head_cosigners)} ({len(result.head_cosigners)} of {result.quorum} required{when})"
        )
    if result.held:
        _say(f"held: {result.held} checkpoints kept outside the store agree with the log, none beyond its end")
    elif result.quorum is not None:
        _note(
            "no checkpoint held outside the store was compared: a log cut back to an earlier cosigned "
            "checkpoint verifies as well; add each site's receipts directory with --checkpoint DIR "
            "(or run 'fedinfra audit gossip')"
        )
    if result.open_runs:
        _note(
            f"runs created but not completed or failed: {', '.join(result.open_runs)} (still running, "
            "or the log was cut back: compare with a site's receipts)"
        )
    if result.access_log is not None:
        _say(
            f"access log {result.access_log}: {result.access_records} records, {result.sealed_reads} sealed in the "
            "log, none removed or edited"
        )
    if result.unwitnessed_reports:
        _note(
            f"{result.unwitnessed_reports} readers' records (sealed reads, report regenerations) follow the "
            "cosigned checkpoint, signed by the coordinator only"
        )
    elif result.unsigned_tail:
        _note(f"{result.unsigned_tail} entries after the last checkpoint are not signed yet")


def _default_access(target: str | Path, given: Path | None) -> Path | None:
    """The access log to check: the one given, else the default one if it exists."""
    from fedinfra.audit.access import default_access_log

    if given is not None:
        return given
    default = default_access_log(target) if not (isinstance(target, Path) and target.is_dir()) else None
    return default if default is not None and default.is_file() else None


@app.command("verify")
def verify_cmd(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="Pin the log's key (C2SP verifier key, kit.toml or PEM); detects a re-signed fork."
    ),
    held: list[Path] = typer.Option(
        [],
        "--checkpoint",
        help="Checkpoints held outside the store: a site's receipts dir, a note, receipt, metrics.json or export.",
    ),
    witnesses: list[Path] = typer.Option(
        [],
        "--witnesses",
        help="Sites' cosigner keys (a file, one a line, or the coordinator kit); a checkpoint needs a quorum.",
    ),
    quorum: int | None = typer.Option(None, "--quorum", min=1, help="Cosigners required (default: every witness)."),
    access_log: Path | None = typer.Option(
        None, "--access-log", help="Check this access log against the reads sealed in the log (default: if present)."
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Replay every entry and checkpoint; exit 0 only if the whole log verifies.

    Opens the store read-only and records nothing: it works on a copy or a read-only mount.
    A log cut back to an earlier cosigned checkpoint is only caught with a newer checkpoint
    someone holds: pass the sites' receipts directories with --checkpoint.
    """
    from fedinfra.audit import verify_store
    from fedinfra.audit.cosign import load_witnesses
    from fedinfra.audit.gossip import load_held

    where = _target(target)

    def run() -> VerifyResult:
        notes = [note for path in held for _, note in load_held(path)]
        keys = load_witnesses(witnesses) if witnesses else []
        if quorum is not None and not keys:
            raise ConfigError("--quorum needs --witnesses")
        return verify_store(
            where,
            public_key=public_key,
            held_checkpoints=notes,
            witnesses=keys,
            quorum=quorum,
            access_log=_default_access(where, access_log),
        )

    result = guarded(run)
    _finish(result.to_dict(), result.ok, f"{result.target}: {result.position}: {result.problem}", fmt)
    if fmt is OutputFormat.text:
        _print_verified(result)


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
    _finish(result.to_dict(), result.ok, f"{result.target}: {result.problem}", fmt)
    if fmt is OutputFormat.text:
        _say(
            f"[bold green]no fork[/] {result.target}: {result.held} held checkpoints (largest tree size "
            f"{result.largest_held}) agree with each other and with the log"
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


def _load_signer(path: Path) -> Signer:
    """The log's signing key: a coordinator kit (its ``[audit] key_file``) or a private key file."""
    import tomllib

    from fedinfra.audit import Signer

    key_file = path
    if path.is_dir():
        try:
            doc = tomllib.loads((path / "kit.toml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not a coordinator kit (no readable kit.toml)") from exc
        name = doc.get("audit", {}).get("key_file")
        if not isinstance(name, str):
            raise ConfigError(f"{path}: kit holds no audit signing key ([audit] key_file); give the coordinator kit")
        key_file = path / name
    try:
        return Signer.from_skey(key_file.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key_file}: cannot read the audit signing key") from exc


@app.command("prove")
def prove_cmd(
    target: str = typer.Argument(..., help="SQLite audit store or postgresql+psycopg:// URL."),
    seq: int = typer.Option(..., "--seq", min=0, help="Entry to prove."),
    since: int | None = typer.Option(
        None, "--since", min=1, help="Also prove consistency from this earlier checkpoint's tree size."
    ),
    out: Path | None = typer.Option(None, "--out", help="Also write the receipt to this file."),
    sign_with: Path | None = typer.Option(
        None,
        "--sign-with",
        help="Coordinator kit (or audit signing key): sign the unsigned tail, this read included, before proving.",
    ),
    fmt: OutputFormat = typer.Option(
        OutputFormat.json, "--format", help="json (the receipt, default) or text (a summary)."
    ),
    access_log: Path | None = typer.Option(None, "--access-log", help=_ACCESS_HELP),
) -> None:
    """Print a receipt for entry SEQ against the newest checkpoint, with the sites' cosignatures (JSON).

    The receipt's checkpoint must cover the entry. An entry after the newest checkpoint is
    signed at the coordinator's next checkpoint; with --sign-with the log's key signs the
    tail now - sealing the access log, this read included - so the checkpoint returned
    covers the entry and the read (issue 15: the unsigned tail is signed before a reader's
    checkpoint is returned). That checkpoint has no cosignatures until the sites' next
    cosign wave; the receipt says so by carrying none.
    """
    from fedinfra.audit import AuditLog, Receipt
    from fedinfra.audit.access import default_access_log
    from fedinfra.audit.cosign import cosigned_note

    where = _target(target)

    def prove() -> Receipt:
        _record_read(where, access_log, "prove", None, {"seq": seq})
        if sign_with is not None:
            signer = _load_signer(sign_with)
            log = AuditLog.open(
                where, origin=signer.name, signer=signer, access_log=access_log or default_access_log(where)
            )
            try:
                log.publish_checkpoint()
            except BaseException:
                log.close()
                raise
        else:
            log = AuditLog.open(where, readonly=True)
        with log:
            head = log.latest_checkpoint
            if seq >= log.size:
                raise ConfigError(f"--seq {seq}: no such entry in {log.display} (size {log.size})")
            if head is None or seq >= head.size:
                raise ConfigError(
                    f"--seq {seq}: entry is after the newest signed checkpoint (tree size "
                    f"{0 if head is None else head.size}); the coordinator signs it at its next checkpoint, "
                    "or pass --sign-with COORDINATOR_KIT to sign the tail now"
                )
            receipt = log.receipt(seq, since=since)
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
    _say(f"receipt for entry {seq} of {target} (tree size {receipt.tree_size}): proofs {proofs}"
         + (f"; written to {out}" if out else ""))


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
