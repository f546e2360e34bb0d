"""``fedinfra compliance report``: the compliance audit report of one run.

Registered on the ``compliance`` sub-app by :func:`register`. Exit codes: 0 written, 1 the
store fails verification or the run's tail is unsigned, 2 bad input (unknown run, missing
store or key, unknown format).
"""

from __future__ import annotations

from pathlib import Path

import typer

from fedinfra.cli._common import OutputFormat, console, guarded, print_json


def register(compliance_app: typer.Typer) -> None:
    """Add ``report`` to the ``compliance`` sub-app."""

    @compliance_app.command("report")
    def report(
        store: str = typer.Option(..., "--store", help="Audit store: SQLite file or postgresql+psycopg:// URL."),
        run: str = typer.Option(..., "--run", help="Run id to report on."),
        formats: str = typer.Option("html,pdf,json", "--format", help="Comma-separated: html, pdf, json."),
        out: Path | None = typer.Option(None, "--out", help="Output directory (default: the store's directory)."),
        run_dir: Path | None = typer.Option(
            None, "--run-dir", help="Run directory with job.json and sites/ (default: the store's directory)."
        ),
        public_key: Path | None = typer.Option(
            None, "--public-key", help="Pin the log's key (C2SP verifier key or PEM file)."
        ),
        output: OutputFormat = typer.Option(
            OutputFormat.text, "--output", help="How to print the result: text or json."
        ),
    ) -> None:
        """Verify the audit store, then write the run's compliance report and log its SHA-256."""

        def _run() -> None:
            from fedinfra._optional import require_extra
            from fedinfra.errors import ConfigError

            require_extra("fedinfra compliance report")
            from fedinfra.report import generate_report, parse_formats

            target: str | Path = store if "://" in store else Path(store)
            if public_key is not None and not public_key.is_file():
                raise ConfigError(f"--public-key {public_key}: file not found; give the log's verifier key file")
            out_dir = out if out is not None else (Path(target).parent if isinstance(target, Path) else Path.cwd())
            files = generate_report(
                target, run, out_dir=out_dir, formats=parse_formats(formats), run_dir=run_dir, public_key=public_key
            )
            if output is OutputFormat.json:
                print_json(
                    {
                        "run_id": files.run_id,
                        "paths": {k: str(v) for k, v in files.paths.items()},
                        "sha256": files.sha256,
                        "recorded_seq": files.recorded_seq,
                        "status": files.report.verdict.status,
                        "open_findings": [o.model_dump() for o in files.report.verdict.open_findings],
                    }
                )
                return
            for fmt, path in files.paths.items():
                console.print(f"{fmt:>4}  {path}  sha256 {files.sha256[fmt]}", highlight=False, soft_wrap=True)
            console.print(
                f"run {files.run_id} {files.report.verdict.status}; report hash logged as entry {files.recorded_seq}. "
                f"Verify the log with: {files.report.verify.command}",
                highlight=False,
                soft_wrap=True,
            )

        guarded(_run)
