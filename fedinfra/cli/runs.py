"""``fedinfra runs ls|show|compare|stop|logs``: runs as first-class objects.

A run is ``runs/<run-id>/`` (the demo's ``--out`` or ``runs_dir`` in server.toml) and its
entries in the audit log; Flower's run ids are recorded inside it. Exit codes: 0 done,
1 a stop that did not take, 2 bad input (unknown run, no runs directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fedinfra.cli._common import OutputFormat, console, err_console, fail, guarded, print_json
from fedinfra.errors import ConfigError

runs_app = typer.Typer(name="runs", help="List, show, compare, stop and read the logs of runs.", no_args_is_help=True)

_RUNS_DIR = typer.Option(Path("runs"), "--runs-dir", help="Directory of run directories (demo: its --out).")
_CONFIG = typer.Option(None, "--config", help="server.toml: use its runs_dir (overrides --runs-dir).")
_FORMAT = typer.Option(OutputFormat.text, "--format", help="text or json.")


def _runs_dir(runs_dir: Path, config: Path | None) -> Path:
    if config is None:
        return runs_dir
    from fedinfra.config.server import load_server

    return guarded(lambda: load_server(config)).runs_dir


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


@runs_app.command("ls")
def ls_cmd(
    runs_dir: Path = _RUNS_DIR,
    config: Path | None = _CONFIG,
    store: str | None = typer.Option(
        None, "--store", help="Also read the consortium's audit log (default with --config: its audit_store)."
    ),
    access_log: Path | None = typer.Option(None, "--access-log", help="Where the read of --store is recorded."),
    fmt: OutputFormat = _FORMAT,
) -> None:
    """One line per run: id, status (directory and audit log), mode, rounds, accuracy, epsilon."""
    from fedinfra.runtime.runstore import list_runs, merge_log, runs_in_log

    where = _runs_dir(runs_dir, config)
    if store is None and config is not None:
        from fedinfra.config.server import load_server

        store = guarded(lambda: load_server(config)).audit_store

    def read() -> list[Any]:
        runs = list_runs(where) if where.is_dir() or store is None else []
        if store is None:
            return runs
        from fedinfra.cli.audit import _record_read

        target: str | Path = store if "://" in store else Path(store)
        _record_read(target, access_log, "runs ls", None, {})  # PCI DSS 10.2.1.3: the read is logged first
        return merge_log(runs, runs_in_log(target))

    runs = guarded(read)
    if fmt is OutputFormat.json:
        print_json([r.to_dict() | {"mode": r.mode} for r in runs])
        return
    table = Table(title=f"runs in {where}")
    table.add_column("run id", no_wrap=True)
    logged = store is not None
    for col in ("status", *(["audit log"] if logged else []), "mode", "rounds", "accuracy", "max ε", "Flower run ids"):
        table.add_column(col, overflow="fold")  # wrap on a narrow terminal, never cut
    for r in runs:
        planned = f"/{r.rounds_planned}" if r.rounds_planned is not None else ""
        table.add_row(r.run_id, r.status, *([r.audit_status or "–"] if logged else []), r.mode,
                      f"{r.rounds_done}{planned}", _fmt(r.final_accuracy), _fmt(r.epsilon_max, ".3f"),
                      ", ".join(r.flower_run_ids) or "–")
    _print_wide(table)


def _print_wide(table: Table) -> None:
    """Print ``table``; into a pipe or a log (no terminal, 80 columns) at its natural width, uncut."""
    from rich.measure import Measurement

    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update(max_width=1000), table).maximum
    width = console.width
    console.width = max(width, natural)  # print() never exceeds the console's width
    try:
        console.print(table)
    finally:
        console.width = width


@runs_app.command("show")
def show_cmd(
    run_id: str = typer.Argument(..., help="The run id (see 'fedinfra runs ls')."),
    runs_dir: Path = _RUNS_DIR,
    config: Path | None = _CONFIG,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """Everything the run directory says about one run."""
    from fedinfra.runtime.runstore import find_run, read_run

    where = _runs_dir(runs_dir, config)
    info = guarded(lambda: read_run(find_run(where, run_id)))
    if fmt is OutputFormat.json:
        print_json(info.to_dict() | {"mode": info.mode})
        return
    table = Table(title=f"run {info.run_id}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("status", info.status + (f": {info.error}" if info.error else "")),
        ("directory", info.run_dir),
        ("Flower run ids", ", ".join(info.flower_run_ids) or "not recorded"),
        ("created / updated", f"{info.created_at or '?'} / {info.updated_at or '?'}"),
        ("scenario", info.scenario or "not recorded"),
        ("privacy", f"{info.mode} (DP {info.privacy}, secure aggregation {info.secure_aggregation})"),
        ("rounds", f"{info.rounds_done} of {info.rounds_planned if info.rounds_planned is not None else '?'}"),
        ("final accuracy / loss", f"{_fmt(info.final_accuracy)} / {_fmt(info.final_loss)}"),
        ("ε per site", ", ".join(f"{s} {e:.3f}" for s, e in info.epsilon_per_site.items()) or "no DP guarantee"),
        ("time", f"{_fmt(info.seconds, '.1f')} s"),
        ("reports", ", ".join(info.reports) or "none"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


@runs_app.command("compare")
def compare_cmd(
    first: str = typer.Argument(..., help="Run id A."),
    second: str = typer.Argument(..., help="Run id B (differences are B - A)."),
    runs_dir: Path = _RUNS_DIR,
    config: Path | None = _CONFIG,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """Two runs side by side with the difference in accuracy, epsilon, loss and time."""
    from fedinfra.runtime.runstore import compare, find_run, read_run

    where = _runs_dir(runs_dir, config)
    a = guarded(lambda: read_run(find_run(where, first)))
    b = guarded(lambda: read_run(find_run(where, second)))
    result = compare(a, b)
    if fmt is OutputFormat.json:
        print_json(result)
        return
    d = result["delta"]
    table = Table(title=f"{a.run_id} (A) vs {b.run_id} (B)")
    for col in ("", "A", "B", "B - A"):
        table.add_column(col)
    table.add_row("mode", a.mode, b.mode, "")
    table.add_row("rounds", str(a.rounds_done), str(b.rounds_done), "")
    table.add_row("final accuracy", _fmt(a.final_accuracy), _fmt(b.final_accuracy), _signed(d["final_accuracy"]))
    table.add_row("max ε per site", _eps(a), _eps(b), _signed(d["epsilon_max"], ".3f"))
    table.add_row("final loss", _fmt(a.final_loss), _fmt(b.final_loss), _signed(d["final_loss"]))
    table.add_row("time (s)", _fmt(a.seconds, ".1f"), _fmt(b.seconds, ".1f"), _signed(d["seconds"], ".1f"))
    console.print(table)


def _eps(r: Any) -> str:
    return "no DP" if r.epsilon_max is None else f"{r.epsilon_max:.3f}"


def _signed(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, "+" + spec)


@runs_app.command("logs")
def logs_cmd(
    run_id: str = typer.Argument(..., help="The run id."),
    lines: int = typer.Option(50, "--tail", min=1, max=100_000, help="Last N lines of each log."),
    runs_dir: Path = _RUNS_DIR,
    config: Path | None = _CONFIG,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """The last lines of the run's log files (the audit trail: 'fedinfra audit show STORE --run ID')."""
    from fedinfra.runtime.runstore import find_run, log_files, tail

    where = _runs_dir(runs_dir, config)

    def read() -> list[dict[str, Any]]:
        run_dir = find_run(where, run_id)
        return [{"path": str(p), "lines": tail(p, lines)} for p in log_files(run_dir)]

    logs = guarded(read)
    if fmt is OutputFormat.json:
        print_json({"run_id": run_id, "logs": logs})
        return
    if not logs:
        console.print(f"run {run_id} wrote no log file; its audit trail: fedinfra audit show STORE --run {run_id}",
                      highlight=False, soft_wrap=True)
        return
    for log in logs:
        console.print(f"[bold]==> {log['path']} <==[/]", highlight=False, soft_wrap=True)
        for line in log["lines"]:
            console.print(line, highlight=False, markup=False, soft_wrap=True)


@runs_app.command("stop")
def stop_cmd(
    run_id: str = typer.Argument(..., help="The run id."),
    runs_dir: Path = _RUNS_DIR,
    config: Path = typer.Option(Path("server/server.toml"), "--config", help="server.toml of the running coordinator."),
    wait: float = typer.Option(
        60.0, "--wait", min=0, max=3600,
        help="Seconds to wait for the coordinator to record the end (its run.failed entry); 0: do not wait.",
    ),
    fmt: OutputFormat = _FORMAT,
) -> None:
    """Stop a deployed run's Flower runs on the running SuperLink (a finished run is left alone).

    Returns once the coordinator has written the run's end (``error.json`` follows its signed
    ``run.failed`` entry), so ``runs ls`` and ``audit show`` right after it show the stop.
    """
    from fedinfra.config.server import load_server
    from fedinfra.runtime.deploy import read_status
    from fedinfra.runtime.runstore import find_run, mark_stopped, read_run, unmark_stopped
    from fedinfra.runtime.submit import stop_stale

    def stop() -> tuple[list[str], str]:
        cfg = load_server(config)
        run_dir = find_run(cfg.runs_dir, run_id)
        info = read_run(run_dir)
        if info.status == "completed" or info.status.startswith("stopped") or info.status == "failed":
            return [], info.status
        if not info.flower_run_ids:
            return [], "no Flower run recorded (a simulation stops with its process)"
        flwr_home = Path(read_status(cfg.state_dir)["flwr_home"])
        mark_stopped(run_dir)  # first: the coordinator's run.failed entry names the operator's stop
        stopped: list[str] = []
        try:
            stopped = stop_stale(run_dir, flwr_home=flwr_home)
        finally:
            if not stopped:
                unmark_stopped(run_dir)
        return stopped, info.status

    stopped, status = guarded(stop)
    if not stopped:
        fail(f"run {run_id}: nothing to stop ({status})")
    recorded = guarded(lambda: _await_end(find_run(load_server(config).runs_dir, run_id), wait))
    if fmt is OutputFormat.json:
        print_json({"run_id": run_id, "stopped_flower_runs": stopped, "status": status, "end_recorded": recorded})
        return
    console.print(f"run {run_id}: stopped Flower run(s) {', '.join(stopped)}", highlight=False)
    if recorded:
        console.print(f"run {run_id}: the coordinator recorded the stop (run.failed)", highlight=False)
    elif wait > 0:
        err_console.print(
            f"[bold yellow]warning:[/] run {run_id}: the coordinator has not recorded the end after {wait:.0f} s; "
            "see 'fedinfra runs logs' and check 'fedinfra runs ls' again",
            highlight=False,
        )


def _await_end(run_dir: Path, wait: float) -> bool:
    """Whether the coordinator wrote the run's end (error.json or a final stop_reason) within ``wait`` s."""
    import json
    import time

    from fedinfra.runtime.apps import ERROR_FILE

    deadline = time.monotonic() + wait
    while True:
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = None
        done = isinstance(metrics, dict) and bool(metrics.get("stop_reason"))
        if (run_dir / ERROR_FILE).is_file() or done:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


@runs_app.command("track")
def track_cmd(
    run_id: str = typer.Argument(..., help="The run id."),
    mlflow_uri: str | None = typer.Option(
        None, "--mlflow-uri", help="file:/path (MLflow file store) or http(s)://host:port; default: the job's."
    ),
    tensorboard_dir: Path | None = typer.Option(None, "--tensorboard-dir", help="Write TensorBoard scalars here."),
    experiment: str | None = typer.Option(None, "--experiment", help="MLflow experiment (default: the job's)."),
    runs_dir: Path = _RUNS_DIR,
    config: Path | None = _CONFIG,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """Send a run's hyperparameters, per-round and privacy figures and report to MLflow / TensorBoard."""
    import json

    from fedinfra.config import parse_model
    from fedinfra.config.job import TrackingSpec
    from fedinfra.runtime.runstore import find_run
    from fedinfra.runtime.tracking import track_run

    where = _runs_dir(runs_dir, config)

    def track() -> dict[str, str]:
        run_dir = find_run(where, run_id)
        try:
            declared = json.loads((run_dir / "job.json").read_text())["job"].get("tracking") or {}
        except (OSError, ValueError, KeyError, AttributeError):
            declared = {}
        spec = parse_model(
            TrackingSpec,
            {
                **declared,
                **({"mlflow_uri": mlflow_uri} if mlflow_uri else {}),
                **({"tensorboard_dir": str(tensorboard_dir)} if tensorboard_dir else {}),
                **({"experiment": experiment} if experiment else {}),
            },
            "command line / [tracking]",
        )
        if not (spec.mlflow_uri or spec.tensorboard_dir):
            raise ConfigError("no tracking destination: pass --mlflow-uri or --tensorboard-dir, or set [tracking]")
        return track_run(run_dir, spec)

    result = guarded(track)
    if fmt is OutputFormat.json:
        print_json({"run_id": run_id, **result})
        return
    for key, value in result.items():
        console.print(f"{key}: {value}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``runs`` to the root application."""
    app.add_typer(runs_app)
