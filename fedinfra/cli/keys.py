"""``fedinfra keys init``: provisioning kits for a consortium.

One secret-key kit per site and one public kit for the coordinator (key separation: the
coordinator never receives the HE secret key). Kit contents come from the parts registered
in :mod:`fedinfra.crypto.kits` (HE now; TLS and SuperNode authentication later).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedinfra.cli._common import OutputFormat, console, guarded, print_json

keys_app = typer.Typer(name="keys", help="Provision key material (kits) for a consortium.", no_args_is_help=True)


@keys_app.command("init")
def init_cmd(
    consortium: Path = typer.Option(..., "--consortium", help="consortium.toml naming the sites and HE settings."),
    out: Path = typer.Option(..., "--out", help="Directory to write coordinator/ and sites/<id>/ kits into."),
    force: bool = typer.Option(False, "--force", help="Replace existing kits (old keys are lost)."),
    app_dir: Path | None = typer.Option(
        None, "--app-dir", help="Also sign this Flower App (e.g. server/) and approve it in every site kit."
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """SIMULATION AND DEMO ONLY: make every party's keys on one host (use 'keys request|issue' to deploy).

    Whoever runs this holds every site's secrets (HE secret key, signing and node keys):
    fine for a demo on one machine, never for a consortium whose sites do not trust the
    coordinator's operator.
    """
    from fedinfra.config.consortium import load_consortium
    from fedinfra.config.secagg import ConsortiumSpec
    from fedinfra.runtime.provision import provision

    def run() -> tuple[ConsortiumSpec, dict[str, str], list[Path]]:
        cfg = load_consortium(consortium)  # adds [coordinator] (address, SANs) for the TLS part
        spec = cfg.he_spec()
        done = provision(cfg, out, force=force, app_dir=app_dir)  # HE part, then TLS / SuperNode auth / signing keys
        kits, written = done.kits, done.written
        he = kits.coordinator.tables.get("he", {})
        return spec, {"mode": spec.secure_aggregation.mode, "param_id": str(he.get("param_id", ""))}, written

    spec, he, written = guarded(run)
    site_kits = {s: str(out / "sites" / s) for s in spec.sites}
    payload = {
        "consortium": spec.name,
        "coordinator_kit": str(out / "coordinator"),
        "site_kits": site_kits,
        "he": he,
        "files": [str(p) for p in written],
    }
    if fmt is OutputFormat.json:
        print_json(payload)
        return
    table = Table(title=f"kits for {spec.name} (HE {he['mode']})")
    table.add_column("kit")
    table.add_column("path")
    table.add_column("holds")
    table.add_row("coordinator", str(out / "coordinator"), "public parameters, site verification keys")
    for site, path in site_kits.items():
        table.add_row(site, path, "HE secret key, update signing key (0600)")
    console.print(table)
    if he["param_id"]:
        console.print(f"parameter id {he['param_id']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``keys`` to the root application."""
    app.add_typer(keys_app)
