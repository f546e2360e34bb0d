"""Building the fedinfra ``ServerApp`` around a :class:`~fedinfra.coordinator.server.Coordinator`.

The runtime layer decides where the job, the kit and the audit store come from (the demo
passes them directly; a deployment reads Flower's run config, see
:mod:`fedinfra.runtime.apps`) and what happens after the run (the compliance report).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedinfra.config import JobSpec
from fedinfra.coordinator.artifacts import RunArtifacts
from fedinfra.coordinator.events import Reporter
from fedinfra.coordinator.persist import RunState
from fedinfra.coordinator.server import Coordinator, CoordinatorSettings


def new_run_id() -> str:
    """A fresh run id: UTC timestamp plus 48 random bits (sortable, unguessable)."""
    import datetime as dt

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(6)}"


def make_server_app(
    job: JobSpec,
    *,
    run_id: str,
    run_dir: Path,
    settings: CoordinatorSettings,
    reporter: Reporter | None = None,
    after: Callable[[Path, str], None] | None = None,
) -> tuple[ServerApp, dict[str, object]]:
    """Build a ``ServerApp`` bound to ``job``; the dict receives the final state or error.

    ``after(run_dir, run_id)`` (the report) runs inside the app, before the sites cosign
    the final checkpoint, so the report's own log entry is witnessed too.
    """
    app = ServerApp()
    outcome: dict[str, object] = {}

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            RunArtifacts(run_dir).record_flower_run(context.run_id)  # one id per run: Flower's inside it
            outcome["state"] = Coordinator(
                job, run_id=run_id, run_dir=run_dir, settings=settings, reporter=reporter
            ).run(grid, after)
        except BaseException as exc:
            outcome["error"] = exc
            raise

    return app, outcome


def run_coordinator(
    grid: Grid,
    job: JobSpec,
    *,
    run_id: str,
    run_dir: Path,
    settings: CoordinatorSettings,
    after: Callable[[Path, str], None] | None = None,
) -> RunState:
    """Run the job on ``grid``; ``after(run_dir, run_id)`` (e.g. the report) runs before the final cosigning."""
    return Coordinator(job, run_id=run_id, run_dir=run_dir, settings=settings).run(grid, after)
