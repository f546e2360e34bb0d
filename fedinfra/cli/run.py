"""``fedinfra run``: submit a job to the running coordinator (or resume one) and follow it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from fedinfra.cli._common import OutputFormat, console, err_console, guarded, positive, print_json


def _outcome(run_dir: Path, run_id: str) -> dict[str, Any]:
    """What the run left in its directory: model, report, final checkpoint, error."""

    def path(name: str) -> str | None:
        p = run_dir / name
        return str(p) if p.exists() else None

    try:
        metrics: dict[str, Any] = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    try:
        error = json.loads((run_dir / "error.json").read_text())
    except (OSError, ValueError):
        error = None
    return {
        "model": path("model.pt") or path("model.enc"),
        "report": path(f"report-{run_id}.html") or path(f"report-{run_id}.json"),
        "metrics": path("metrics.json"),
        "final_checkpoint": metrics.get("final_checkpoint"),
        "final_accuracy": metrics.get("final_accuracy"),
        "rounds": [r.get("round") for r in metrics.get("rounds", [])],
        "error": error,
    }


def register(app: typer.Typer) -> None:
    """Add ``run`` to ``app``."""

    @app.command("run")
    def run_cmd(
        job: Path = typer.Option(..., "--job", help="The job (job.toml)."),
        config: Path | None = typer.Option(None, "--config", help="server.toml (default: next to the job)."),
        app_dir: Path | None = typer.Option(
            None, "--app-dir", help="The signed app to submit (default: server.toml's app_dir); see 'app build'."
        ),
        resume: str | None = typer.Option(None, "--resume", help="Continue run RUN_ID after its last completed round."),
        timeout: float = typer.Option(
            3600.0, "--timeout", callback=positive, help="Give up following the run after this many seconds."
        ),
        fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
    ) -> None:
        """Submit the fedinfra Flower App to the SuperLink and stream its rounds."""
        from fedinfra.config import load_job
        from fedinfra.config.server import load_server
        from fedinfra.coordinator.app import new_run_id
        from fedinfra.errors import ConfigError
        from fedinfra.runtime.deploy import read_status
        from fedinfra.runtime.env import harden
        from fedinfra.runtime.submit import Submitted, check_resumable, follow, stop_stale, submit

        quiet = fmt is OutputFormat.json

        def _submit() -> tuple[Submitted, Path, int]:
            spec = load_job(job)
            cfg = load_server(config or job.parent / "server.toml")
            status = read_status(cfg.state_dir)
            flwr_home = Path(status["flwr_home"])
            harden(flwr_home=flwr_home)
            kit = Path(status.get("kit") or cfg.kit or "")
            if not str(kit):
                raise ConfigError(f"{cfg.state_dir}: the running server names no coordinator kit; set 'kit'")
            run_id, known = new_run_id(), 0
            if resume is not None:
                run_id = resume
                run_dir = cfg.runs_dir / run_id
                check_resumable(spec, run_dir)
                stop_stale(run_dir, flwr_home=flwr_home)
                known = len(_outcome(run_dir, run_id)["rounds"])
            sub = submit(
                spec,
                run_id=run_id,
                runs_dir=cfg.runs_dir,
                app_dir=app_dir or cfg.app_dir,
                flwr_home=flwr_home,
                kit=kit,
                audit_store=cfg.audit_store,
                resume=resume is not None,
                report_formats=tuple(cfg.report_formats),
                registered=len(status["sites"]),
                audit_dir=cfg.state_dir,
            )
            return sub, flwr_home, known

        sub, flwr_home, known = guarded(_submit)
        if not quiet:
            verb = "resumed after round " + str(known) if resume else "submitted"
            console.print(f"run [bold]{sub.run_id}[/] {verb} (Flower run {sub.flower_run_id})")

        def _round(r: dict[str, Any]) -> None:
            if not quiet:
                # Under HE a round's evaluation arrives with the next wave: say so, not "nan".
                acc, loss = r.get("test_accuracy"), r.get("test_loss")
                scored = isinstance(acc, int | float) and isinstance(loss, int | float) and acc == acc and loss == loss
                figures = f"loss {loss:.4f}  accuracy {acc:.4f}" if scored else "evaluated with the next round"
                console.print(
                    f"round {r['round']:>3}: {figures}  ({r['replies']} replies, {r['seconds']:.1f} s)",
                    highlight=False,
                )

        with console.status("waiting for the sites", spinner="dots") if not quiet else _null():
            status = guarded(lambda: follow(sub, flwr_home=flwr_home, on_round=_round, timeout=timeout, skip=known))
        out = _outcome(sub.run_dir, sub.run_id)
        payload = {
            "run_id": sub.run_id,
            "flower_run_id": sub.flower_run_id,
            "status": status,
            "run_dir": str(sub.run_dir),
            "resumed": resume is not None,
            **out,
        }
        if quiet:
            print_json(payload)
        elif status == "finished:completed":
            cp = out["final_checkpoint"] or {}
            console.print(
                f"run {sub.run_id}: {status}; model {out['model']}; report {out['report']}; "
                f"final checkpoint at tree size {cp.get('tree_size')}",
                highlight=False,
            )
        if status != "finished:completed":
            from fedinfra.coordinator.artifacts import RunArtifacts
            from fedinfra.coordinator.trail import STOPPED_REASON

            reason = (out["error"] or {}).get("message") or f"see {sub.run_dir / 'flower.log'}"
            if RunArtifacts(sub.run_dir).stop_requested():
                reason = STOPPED_REASON  # not the Runtime API's refusal it surfaced as
            if not quiet:
                err_console.print(f"[bold red]error:[/] run {sub.run_id} {status}: {reason}", highlight=False)
            raise typer.Exit(1)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
