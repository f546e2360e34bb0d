"""``fedinfra model export``: write a site's final model (safetensors, TorchScript) and its card."""

from __future__ import annotations

from pathlib import Path

import typer

from fedinfra.cli._common import OutputFormat, console, guarded, print_json

model_app = typer.Typer(name="model", help="A site's trained models.", no_args_is_help=True)


@model_app.command("export")
def export_cmd(
    home: Path = typer.Option(..., "--home", help="The site's state directory (its ledger, receipts, models)."),
    run: str = typer.Option(..., "--run", help="The run id."),
    job: Path = typer.Option(..., "--job", help="The run's job.toml (names the task that builds the model)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the model and its card into."),
    kit: Path | None = typer.Option(None, "--kit", help="The site's kit (to name the final signed checkpoint)."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Export the run's final model as this site holds it, with a model card."""

    def _run() -> dict[str, object]:
        from fedinfra.cli.simulate import prepare_job_dir
        from fedinfra.config import load_job
        from fedinfra.config.names import check_slug
        from fedinfra.errors import ConfigError
        from fedinfra.site.export import export_model
        from fedinfra.site.home import SiteHome

        if not home.is_dir():
            raise ConfigError(f"--home {home}: not a directory; give the site's state directory")
        spec = load_job(job)
        prepare_job_dir(job)
        return export_model(home=SiteHome(root=home, kit=kit), run_id=check_slug(run, "--run"), job=spec, out=out)

    card = guarded(_run)
    if fmt is OutputFormat.json:
        print_json(card)
        return
    files = card["files"]
    assert isinstance(files, dict)
    for name, where in files.items():
        console.print(f"{name}: {where}", highlight=False, soft_wrap=True)
    console.print(f"model card: {out / 'MODEL_CARD.md'}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``model`` command group to ``app``."""
    app.add_typer(model_app, name="model")
