"""The fedinfra Flower App for the deployment engine: ``server_app`` and ``client_app``.

``server/pyproject.toml`` names these two objects; ``fedinfra run`` submits that manifest
to the SuperLink. The ServerApp runs in a ``flwr-serverapp`` process on the SuperLink host
and reads everything it needs from Flower's run config, which ``fedinfra run`` fills from
the job and ``server.toml`` (:func:`run_config`):

``job``
    the :class:`~fedinfra.config.JobSpec` as JSON, so what runs is fixed at submission;
``run-id`` / ``runs-dir``
    the run writes ``<runs-dir>/<run-id>/`` (state, metrics, model, report);
``kit``
    the coordinator kit on this host: the audit signing key and the HE *public*
    parameters (never a secret key: DESIGN.md security model);
``audit-store``
    SQLite path or ``postgresql+psycopg://`` URL; empty means ``<run-dir>/audit.sqlite``;
``resume``
    continue ``run-id`` after its last round the audit log records as aggregated
    (:mod:`fedinfra.coordinator.persist`);
``report-formats``
    comma-separated report formats written into the run directory at the end.

The transport is TLS with SuperNode authentication: ``fedinfra server start`` cannot start
a SuperLink any other way (:mod:`fedinfra.runtime.deploy`), so the coordinator records
``tls=True`` for the policy gates (HIPAA 45 CFR 164.312(e)(1) transmission security).

A failure is written to ``<run-dir>/error.json`` as one line, so ``fedinfra run`` can say
what went wrong without the operator reading Flower's log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedinfra.config import JobSpec
from fedinfra.config.names import check_slug
from fedinfra.errors import ConfigError
from fedinfra.site.app import app as client_app

#: Report formats written at the end of a deployed run unless server.toml says otherwise.
DEFAULT_REPORT_FORMATS = ("html", "pdf", "json")
ERROR_FILE = "error.json"
AUDIT_STORE = "audit.sqlite"


@dataclass(frozen=True)
class DeployedRun:
    """What the ServerApp learns from Flower's run config."""

    job: JobSpec
    run_id: str
    run_dir: Path
    kit: Path
    store: str
    resume: bool
    report_formats: tuple[str, ...]


def run_config(
    job: JobSpec,
    *,
    run_id: str,
    runs_dir: Path,
    kit: Path,
    audit_store: str | None = None,
    resume: bool = False,
    report_formats: tuple[str, ...] = DEFAULT_REPORT_FORMATS,
) -> dict[str, str | bool]:
    """The run-config overrides ``fedinfra run`` submits (paths absolute on the SuperLink host)."""
    return {
        "job": job.model_dump_json(),
        "run-id": run_id,
        "runs-dir": str(runs_dir.resolve()),
        "kit": str(kit.resolve()),
        "audit-store": audit_store or "",
        "resume": resume,
        "report-formats": ",".join(report_formats),
    }


def parse_run_config(config: dict[str, object]) -> DeployedRun:
    """Validate the run config; raise :class:`ConfigError` naming the missing key."""

    def text(key: str) -> str:
        value = config.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"run config key {key!r} is missing; submit the job with 'fedinfra run'")
        return value

    try:
        job = JobSpec.model_validate_json(text("job"))
    except ValueError as exc:
        raise ConfigError(f"run config key 'job' is not a valid job ({exc}); submit it with 'fedinfra run'") from exc
    run_id = check_slug(text("run-id"), "run config key 'run-id'")
    run_dir = Path(text("runs-dir")) / run_id
    store = str(config.get("audit-store") or "") or str(run_dir / AUDIT_STORE)
    formats = tuple(f.strip() for f in str(config.get("report-formats", "")).split(",") if f.strip())
    return DeployedRun(
        job=job,
        run_id=run_id,
        run_dir=run_dir,
        kit=Path(text("kit")),
        store=store,
        resume=str(config.get("resume", False)).lower() == "true",
        report_formats=formats,
    )


def write_error(run_dir: Path, exc: BaseException) -> None:
    """Record why the run failed, in one line, for ``fedinfra run``."""
    from fedinfra.coordinator.artifacts import atomic_write

    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    atomic_write(run_dir / ERROR_FILE, json.dumps({"error": type(exc).__name__, "message": line}).encode())


def run_deployed(grid: Grid, run: DeployedRun) -> None:
    """Run the job on ``grid`` with the full stack, then write the compliance report."""
    from fedinfra.coordinator.app import run_coordinator
    from fedinfra.runtime.coordinator_kit import settings_from_kit, write_report

    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / ERROR_FILE).unlink(missing_ok=True)
    settings = settings_from_kit(
        run.kit, store=run.store, tls=True, he=run.job.secure_aggregation.encrypted, resume=run.resume
    )

    def report(run_dir: Path, run_id: str) -> None:
        if run.report_formats:
            write_report(run.store, run_dir, run_id, signer=settings.signer, formats=run.report_formats)
        from fedinfra.runtime.tracking import track_after_run

        track_after_run(run_dir, run.job.tracking)

    run_coordinator(grid, run.job, run_id=run.run_id, run_dir=run.run_dir, settings=settings, after=report)


server_app = ServerApp()


def _log_to_flower() -> None:
    """Send the coordinator's log records (INFO and up) to this process's stderr.

    Flower mirrors a ServerApp's stdout and stderr to the SuperLink, so the round loop's
    lines reach ``flwr log`` and thus ``runs/<id>/flower.log`` (``fedinfra runs logs``).
    A handler someone configured already is kept.
    """
    import logging
    import sys

    root = logging.getLogger("fedinfra")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    _log_to_flower()
    run = parse_run_config(dict(context.run_config))
    try:
        run_deployed(grid, run)
    except BaseException as exc:
        write_error(run.run_dir, exc)
        raise


__all__ = [
    "DEFAULT_REPORT_FORMATS",
    "ERROR_FILE",
    "DeployedRun",
    "client_app",
    "parse_run_config",
    "run_config",
    "run_deployed",
    "server_app",
]
