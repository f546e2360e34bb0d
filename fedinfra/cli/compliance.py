"""``fedinfra compliance``: the offline preflight (``check``) and the PHI/PII scanner (``scan``).

Exit codes: 0 clean / no blocking finding, 1 a blocking finding or identifier, 2 bad input.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from fedinfra.cli._common import EXIT_CHECK_FAILED, OutputFormat, console, guarded, print_json

app = typer.Typer(name="compliance", help="Policy preflight and PHI/PII scanning.", no_args_is_help=True)

_STATUS_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "manual": "cyan"}


def register(root: typer.Typer) -> None:
    """Add ``compliance`` to the root app."""
    __import__("fedinfra.cli.report", fromlist=["register"]).register(app)
    root.add_typer(app, name="compliance")


def _data_path(site_file: Path, declared: str | None, given: Path | None) -> Path | None:
    """An explicit path wins; a relative path in the manifest is relative to the manifest."""
    if given is not None:
        return given
    if declared is None:
        return None
    p = Path(declared)
    return p if p.is_absolute() else site_file.parent / p


@app.command("check")
def check(
    site: Path = typer.Option(..., "--site", help="The site manifest (site.toml)."),
    job: Path = typer.Option(..., "--job", help="The job spec (job.toml)."),
    data: Path | None = typer.Option(None, "--data", help="Data file to scan (default: the manifest's dataset)."),
    pack: list[str] = typer.Option([], "--pack", help="Packs to apply (default: the site's and the job's)."),
    tls: bool | None = typer.Option(
        None, "--tls/--no-tls", help="Whether the deployment uses TLS (unknown if omitted)."
    ),
    audit: bool | None = typer.Option(
        None, "--audit/--no-audit", help="Whether the audit log is on (unknown if omitted)."
    ),
    audit_retention_days: int | None = typer.Option(
        None, "--audit-retention-days", min=1, help="Audit record retention."
    ),
    epsilon_spent: float | None = typer.Option(
        None, "--epsilon-spent", min=0.0, help="The site's lifetime epsilon spent."
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Run every gate that can run offline (job and site) and print the findings."""

    def run() -> bool:
        from fedinfra.config import load_job, load_site
        from fedinfra.policy import load_packs, preflight

        manifest = load_site(site)
        spec = load_job(job)
        path = _data_path(site, manifest.dataset.path if manifest.dataset else None, data)
        evaluation = preflight(
            manifest,
            spec,
            path,
            packs=load_packs(pack) if pack else None,
            tls=tls,
            audit_enabled=audit,
            audit_retention_days=audit_retention_days,
            site_epsilon_spent=epsilon_spent,
        )
        if fmt is OutputFormat.json:
            print_json(evaluation.to_dict())
            return evaluation.passed
        table = Table(title=escape(f"preflight: site {manifest.name} x job {spec.name}"))
        for col in ("status", "rule", "citation", "message"):
            table.add_column(col, overflow="fold")
        for f in evaluation.findings:
            style = _STATUS_STYLE[f.status]
            table.add_row(f"[{style}]{f.status}[/]", escape(f.rule_id), escape(f.citation), escape(f.message))
        console.print(table)
        counts = evaluation.counts()
        summary = ", ".join(f"{n} {k}" for k, n in counts.items())
        if evaluation.passed:
            console.print(f"[green]no blocking finding[/] ({summary})")
        else:
            console.print(f"[bold red]blocked[/] by {len(evaluation.blocking)} rule(s) ({summary})")
        return evaluation.passed

    if not guarded(run):
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command("scan")
def scan(
    data: Path | None = typer.Argument(None, help="CSV or Parquet file (default: the manifest's dataset)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Site manifest: only its training columns block."),
    max_rows: int = typer.Option(100_000, "--max-rows", min=1, help="Rows to read."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Scan tabular data for HIPAA Safe Harbor identifiers; only a summary is printed."""

    def run() -> bool:
        from fedinfra.errors import ConfigError
        from fedinfra.policy.scan import scan_file, scan_site_data

        if manifest is not None:
            from fedinfra.config import load_site

            site = load_site(manifest)
            path = _data_path(manifest, site.dataset.path if site.dataset else None, data)
            summary = scan_site_data(site, path, max_rows=max_rows)
        elif data is not None:
            summary = scan_file(data, max_rows=max_rows)
        else:
            raise ConfigError("give a DATA file or --manifest")
        if fmt is OutputFormat.json:
            payload = summary.model_dump(mode="json")
            payload["clean"] = summary.clean
            payload["flagged"] = [
                {
                    "column": c.column,
                    "identifier": c.identifier,
                    "share": c.share,
                    "basis": c.basis,
                    "blocking": c.blocking,
                    "citation": c.citation,
                }
                for c in summary.flagged
            ]
            print_json(payload)
            return summary.clean
        table = Table(
            title=f"PHI/PII scan of {summary.source} ({summary.rows_scanned} rows"
            f"{', truncated' if summary.truncated else ''})"
        )
        for col in ("column", "type", "identifier", "evidence", "share", "verdict"):
            table.add_column(col, overflow="fold")
        for c in summary.columns:
            if c.identifier is None:
                verdict = "[green]clean[/]"
            elif c.blocking:
                verdict = "[bold red]BLOCK[/]"
            else:
                verdict = "[yellow]excluded from training[/]"
            evidence = f"{c.basis}; {c.citation}" if c.identifier else ""
            table.add_row(
                escape(c.column),
                c.dtype,
                c.label or "",
                escape(evidence),
                f"{c.share:.0%}" if c.identifier else "",
                verdict,
            )
        console.print(table)
        if summary.k_anonymity is not None:
            console.print(
                f"k-anonymity over {escape(', '.join(summary.quasi_identifiers))}: k = {summary.k_anonymity} "
                f"({summary.rows_in_small_groups} rows in groups < {summary.k_target})"
            )
        blocking = summary.blocking
        if blocking:
            console.print(f"[bold red]{len(blocking)} blocking identifier column(s)[/]")
        else:
            console.print("[green]no blocking identifier column[/]")
        return summary.clean

    if not guarded(run):
        raise typer.Exit(EXIT_CHECK_FAILED)
