"""``fedinfra app keygen|build|sign|verify|approve``: releasing the Flower App sites will run.

* ``keygen`` (release manager, once): the Ed25519 release key, kept offline;
* ``build`` (release manager, per task): the app carrying a job's task module
  (:mod:`fedinfra.task.packaging`), so sites approve the task's code with the app;
* ``sign`` (release manager, per version): the release record of ``--app-dir``'s FAB;
* ``approve`` (each site): check a record against the key the site pinned, keep it in
  the site kit - from then on the site runs that FAB and no other;
* ``verify`` (anyone): would this site run this app? Exit 0 yes, 1 no.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from fedinfra.cli._common import EXIT_CHECK_FAILED, OutputFormat, console, err_console, guarded, print_json

app_app = typer.Typer(name="app", help="Sign and approve releases of the Flower App.", no_args_is_help=True)


def _show(payload: dict[str, Any], fmt: OutputFormat, text: str) -> None:
    if fmt is OutputFormat.json:
        print_json(payload)
    else:
        console.print(text, highlight=False)


@app_app.command("keygen")
def keygen_cmd(
    out: Path = typer.Option(..., "--out", help="Directory for release_signing.key (0600) and .pub."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Create the consortium's release key (keep it offline, like the CA key)."""
    from fedinfra.crypto.release import key_id
    from fedinfra.runtime.release import new_release_key

    path, public = guarded(lambda: new_release_key(out))
    kid = key_id(bytes.fromhex(public))
    _show({"key": str(path), "public_key": public, "key_id": kid}, fmt,
          f"release key {kid} written to {path}; sites pin public key {public}")


@app_app.command("build")
def build_cmd(
    job: Path = typer.Option(..., "--job", help="The job whose [task] module (next to it) the app must carry."),
    out: Path = typer.Option(..., "--out", help="Directory for the app (new, or one this command built)."),
    base: Path = typer.Option(Path("server"), "--base", help="The stock fedinfra Flower App (its pyproject.toml)."),
    version: str | None = typer.Option(None, "--version", help="App version (default: the base app's)."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Write the Flower App that carries the job's task; then 'app sign --app-dir OUT'."""
    from fedinfra.crypto.release import fab_digest
    from fedinfra.runtime.release import build_app_fab
    from fedinfra.task.packaging import build_task_app

    built = guarded(lambda: build_task_app(job, out, base=base, version=version))
    fab = guarded(lambda: build_app_fab(built.app_dir))
    _show({"app_dir": str(built.app_dir), "task": built.ref, "files": list(built.files), "app": fab.app,
           "version": fab.version, "fab_sha256": fab_digest(fab.content)}, fmt,
          f"built {fab.app} {fab.version} carrying {built.ref} ({', '.join(built.files)}) in {built.app_dir}; "
          f"FAB sha256 {fab_digest(fab.content)}; next: fedinfra app sign --app-dir {built.app_dir}")


@app_app.command("sign")
def sign_cmd(
    app_dir: Path = typer.Option(Path("server"), "--app-dir", help="The Flower App (its pyproject.toml)."),
    key: Path = typer.Option(..., "--key", help="release_signing.key from 'fedinfra app keygen'."),
    out: Path | None = typer.Option(None, "--out", help="Release record (default <app>-<version>-<digest>.json)."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Sign the FAB that 'flwr run' / 'fedinfra run' will submit for --app-dir."""
    from fedinfra.runtime.release import read_release_key, record_name, sign_app, write_record

    def run() -> tuple[dict[str, Any], Path]:
        record = sign_app(app_dir, read_release_key(key))
        return record, write_record(record, out or Path(record_name(record)))

    record, path = guarded(run)
    _show({**record, "file": str(path)}, fmt,
          f"signed {record['app']} {record['version']} (FAB sha256 {record['fab_sha256']}) -> {path}")


@app_app.command("approve")
def approve_cmd(
    release: Path = typer.Option(..., "--release", help="Release record from 'fedinfra app sign'."),
    kit: Path = typer.Option(..., "--kit", help="This site's kit (pins the release key)."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Approve a release at this site (its signature must verify against the pinned key)."""
    from fedinfra.runtime.appcheck import approve

    path = guarded(lambda: approve(release, kit))
    record = json.loads(path.read_text())
    _show({"approved": str(path), "fab_sha256": record["fab_sha256"]}, fmt,
          f"approved {record['app']} {record['version']} (FAB sha256 {record['fab_sha256']}) in {path.parent}")


@app_app.command("verify")
def verify_cmd(
    kit: Path = typer.Option(..., "--kit", help="The site kit whose pinned key and approved releases apply."),
    app_dir: Path | None = typer.Option(None, "--app-dir", help="Flower App directory (built as 'flwr run' does)."),
    fab: Path | None = typer.Option(None, "--fab", help="A built .fab file."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Say whether this site would run the app: exit 0 if approved and signed, 1 if not."""
    from fedinfra.crypto.release import check_fab, fab_digest
    from fedinfra.errors import ConfigError, CryptoError
    from fedinfra.runtime.appcheck import approved_records, pinned_keys
    from fedinfra.runtime.release import build_app_fab

    def content() -> bytes:
        if (app_dir is None) == (fab is None):
            raise ConfigError("pass exactly one of --app-dir and --fab")
        if fab is not None:
            try:
                return fab.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{fab}: cannot read the FAB") from exc
        assert app_dir is not None
        return build_app_fab(app_dir).content

    data = guarded(content)
    keys = guarded(lambda: pinned_keys(kit))
    try:
        record = check_fab(data, approved_records(kit), keys)
    except CryptoError as exc:
        if fmt is OutputFormat.json:
            print_json({"approved": False, "fab_sha256": fab_digest(data), "reason": str(exc)})
        else:
            err_console.print(f"[bold red]refused:[/] {exc} (FAB sha256 {fab_digest(data)})", highlight=False)
        raise typer.Exit(EXIT_CHECK_FAILED) from None
    _show({"approved": True, **record}, fmt,
          f"approved: {record['app']} {record['version']} (FAB sha256 {record['fab_sha256']}, key {record['key_id']})")


def register(app: typer.Typer) -> None:
    """Add ``app`` to the root application."""
    app.add_typer(app_app)
