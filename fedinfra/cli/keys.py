"""``fedinfra keys``: the key ceremony (request, issue, accept, he-share, he-open) and ``init``.

Deployment (keys are born where they are used, :mod:`fedinfra.runtime.ceremony`):
``keys request`` at each site -> ``keys issue`` by the operator from the requests ->
``keys accept`` at each site -> ``keys he-share`` at one site -> ``keys he-open`` at the
others. ``keys init`` makes every party's keys on one host: simulation and demo only.
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
        "simulation_only": True,
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
    console.print("simulation and demo only: this host made every site's secrets; deploy with "
                  "'fedinfra keys request' at each site and 'fedinfra keys issue' here", highlight=False)
    if he["param_id"]:
        console.print(f"parameter id {he['param_id']}", highlight=False)


@keys_app.command("request")
def request_cmd(
    site: str = typer.Option(..., "--site", help="This site's name, as in the consortium file."),
    consortium: str = typer.Option(..., "--consortium", help="The consortium's name."),
    kit: Path = typer.Option(..., "--kit", help="New directory for this site's keys (its kit)."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """At a site: make its node, signing and key-agreement keys; write a request of public keys."""
    from fedinfra.runtime.ceremony import request_keys

    request, fp = guarded(lambda: request_keys(site, consortium, kit))
    payload = {"request": str(request), "fingerprint": fp, "kit": str(kit)}
    if fmt is OutputFormat.json:
        print_json(payload)
        return
    console.print(f"keys made in {kit} (secrets 0600, never leave this host); send {request} to the operator",
                  highlight=False)
    console.print(f"fingerprint {fp}: tell it to the other sites by another channel", highlight=False)


@keys_app.command("issue")
def issue_cmd(
    consortium: Path = typer.Option(..., "--consortium", help="consortium.toml naming the sites and HE settings."),
    requests: list[Path] = typer.Option(..., "--request", help="A site's request-<site>.json (repeat per site)."),
    release_pub: list[Path] = typer.Option(..., "--release-pub", help="release_signing.pub of 'fedinfra app keygen'."),
    out: Path = typer.Option(..., "--out", help="Directory for coordinator/, sites/<site>/ bundles and ca/."),
    force: bool = typer.Option(False, "--force", help="Replace existing kits."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """At the operator: turn the sites' requests into the coordinator kit and one public bundle per site."""
    from fedinfra.config.consortium import load_consortium
    from fedinfra.runtime.ceremony import issue, read_release_public

    def run() -> list[Path]:
        cfg = load_consortium(consortium)
        return issue(cfg, requests, out, release_public=read_release_public(release_pub), force=force)

    written = guarded(run)
    if fmt is OutputFormat.json:
        print_json({"coordinator_kit": str(out / "coordinator"), "files": [str(p) for p in written]})
        return
    console.print(f"coordinator kit {out / 'coordinator'}; send each site its bundle {out / 'sites'}/<site>/ "
                  "(public material only)", highlight=False)


@keys_app.command("accept")
def accept_cmd(
    bundle: Path = typer.Option(..., "--bundle", help="This site's bundle from 'fedinfra keys issue'."),
    kit: Path = typer.Option(..., "--kit", help="This site's kit (from 'fedinfra keys request')."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """At a site: install the operator's bundle into the kit (refused if it names another node key)."""
    from fedinfra.runtime.ceremony import accept

    written = guarded(lambda: accept(bundle, kit))
    if fmt is OutputFormat.json:
        print_json({"kit": str(kit), "files": [str(p) for p in written]})
        return
    console.print(f"installed {len(written)} public files into {kit}", highlight=False)


@keys_app.command("he-share")
def he_share_cmd(
    kit: Path = typer.Option(..., "--kit", help="This site's kit."),
    out: Path = typer.Option(Path("sealed"), "--out", help="Directory for the sealed keys (one per other site)."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """At one site: make the HE secret key and seal it to every other site's X25519 key."""
    from fedinfra.runtime.ceremony import he_share

    written = guarded(lambda: he_share(kit, out))
    if fmt is OutputFormat.json:
        print_json({"sealed": [str(p) for p in written]})
        return
    console.print(f"sealed the HE key to {len(written)} sites in {out}; the operator relays each file "
                  "(it cannot open them)", highlight=False)


@keys_app.command("he-open")
def he_open_cmd(
    kit: Path = typer.Option(..., "--kit", help="This site's kit."),
    sealed: Path = typer.Option(..., "--sealed", help="The he-key-<from>-to-<this site>.json file."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """At every other site: open the sealed HE key (the sender's signature must verify)."""
    from fedinfra.runtime.ceremony import he_open

    path = guarded(lambda: he_open(kit, sealed))
    if fmt is OutputFormat.json:
        print_json({"he_secret_key": str(path)})
        return
    console.print(f"HE secret key kept in {path} (0600)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``keys`` to the root application."""
    app.add_typer(keys_app)
