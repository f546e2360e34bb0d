"""``fedinfra simulate --job job.toml``: run a job on simulated sites, on this machine.

The same job a deployment runs with ``fedinfra run``; here its ``data.source`` (the
user's own data set) is split among ``sites.count`` simulated sites and its task module
is imported from the job file's folder. Flower's simulation engine runs the sites.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import typer

from fedinfra.cli._common import OutputFormat, console, guarded, print_json


def prepare_job_dir(job_path: Path) -> None:
    """Make the job's folder importable here and in the simulation's worker processes."""
    folder = str(job_path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, *parts])


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to ``app``."""

    @app.command("simulate")
    def simulate(
        job: Path = typer.Option(..., "--job", help="The job (job.toml); its task module sits next to it."),
        out: Path = typer.Option(Path("runs"), "--out", help="Where run directories are written."),
        fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
        verbose: bool = typer.Option(False, "--verbose", help="Show Flower's and Ray's logs."),
    ) -> None:
        """Run a job's task on simulated sites (its own data split IID or Dirichlet)."""

        def _run() -> None:
            from fedinfra._optional import require_extra
            from fedinfra.cli.demo import RichReporter
            from fedinfra.config import load_job
            from fedinfra.coordinator.app import new_run_id
            from fedinfra.errors import ConfigError
            from fedinfra.runtime.simulation import run_simulated

            require_extra("fedinfra simulate")
            spec = load_job(job)
            source = spec.data.source
            if source is not None and not Path(source.path).is_absolute():
                # Relative to the job file, and absolute for the worker processes.
                resolved = source.model_copy(update={"path": str((job.parent / source.path).resolve())})
                spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": resolved})})
            prepare_job_dir(job)
            from fedinfra.site.tasks import job_task

            job_task(spec)  # a bad [task] fails here, in one line, before any process starts
            if out.exists() and not out.is_dir():
                raise ConfigError(f"--out {out}: is a file; give a directory for the run directories")
            run_id = new_run_id()
            run_dir = out / run_id
            reporter = RichReporter(quiet=fmt is OutputFormat.json)
            try:
                run_simulated(spec, run_id=run_id, run_dir=run_dir, reporter=reporter, verbose=verbose)
            finally:
                reporter.close()
                shutil.rmtree(run_dir / ".flwr", ignore_errors=True)
                shutil.rmtree(run_dir / ".ray-home", ignore_errors=True)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            metrics["run_dir"] = str(run_dir)
            if fmt is OutputFormat.json:
                print_json(metrics)
                return
            task = metrics.get("task", {})
            figures = "  ".join(
                f"{k} {v:.4f}" for k, v in (task.get("metrics") or {}).items() if isinstance(v, int | float)
            )
            console.print(f"{task.get('ref')}: {figures}; artifacts in {run_dir}", soft_wrap=True, highlight=False)

        guarded(_run)
