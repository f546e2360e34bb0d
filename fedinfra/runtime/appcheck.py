"""The site's gate on app code: verify each FAB before Flower installs or imports it.

fedinfra's warm ClientApp launcher (:mod:`fedinfra.runtime.warm`) forks one process per
task and calls Flower's ``run_clientapp``, which pulls the task's FAB from the SuperNode,
installs it (``install_from_fab``) and only then imports the app. :func:`guard_clientapp`
wraps that install step: the FAB's digest must match a release the site approved, signed
by a release key the site pinned in its kit (:mod:`fedinfra.crypto.release`). Otherwise
the task fails *before* any byte of the app is written to disk or imported: Flower turns
the exception into an error reply (the submitter sees one line), and the refusal is
appended to the site's own log ``<state-dir>/site-audit.jsonl`` (ids and digests only).

Kit layout (written by ``fedinfra keys request`` / ``keys init`` and ``app approve``)::

    kit.toml     [release] public_keys = "<hex>,<hex>"   (rotation: more than one)
    releases/    <app>-<version>-<digest12>.json         (approved release records)
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedinfra.config import read_toml
from fedinfra.crypto.release import REFUSED, check_fab, fab_digest, verify_record
from fedinfra.errors import ConfigError, CryptoError

RELEASES_DIR = "releases"
SITE_AUDIT_FILE = "site-audit.jsonl"
#: The coordinator's own log of the ServerApps it refused (``<state-dir>/``, 0600).
COORDINATOR_AUDIT_FILE = "coordinator-audit.jsonl"


def pinned_keys(kit: Path) -> list[bytes]:
    """The release public keys the site pinned (``[release] public_keys``); refuse if none."""
    path = kit / "kit.toml"
    table = read_toml(path).get("release", {})
    raw = str(table.get("public_keys", "")) if isinstance(table, dict) else ""
    try:
        keys = [bytes.fromhex(k.strip()) for k in raw.split(",") if k.strip()]
    except ValueError as exc:
        raise ConfigError(f"{path}: [release] public_keys is not hex; re-issue the kit") from exc
    if not keys or any(len(k) != 32 for k in keys):
        raise ConfigError(
            f"{path}: no app release key pinned ([release] public_keys); this kit runs no app until "
            "it pins the consortium's release key (re-issue it with 'fedinfra keys issue --release-pub')"
        )
    return keys


def approved_records(kit: Path) -> list[dict[str, Any]]:
    """The release records in ``<kit>/releases/`` (unreadable files are skipped)."""
    out: list[dict[str, Any]] = []
    directory = kit / RELEASES_DIR
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def site_audit(state_dir: Path | None, event: str, *, log_file: str = SITE_AUDIT_FILE, **fields: object) -> None:
    """Append one event to the party's own log (``site-audit.jsonl``, 0600): ids and digests only."""
    if state_dir is None:
        return
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = json.dumps({"time": dt.datetime.now(dt.UTC).isoformat(), "event": event, **fields}, sort_keys=True)
    fd = os.open(state_dir / log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(line + "\n")


def check_app(
    fab: bytes, kit: Path, state_dir: Path | None, *, log_file: str = SITE_AUDIT_FILE
) -> dict[str, Any]:
    """Return the approved record of ``fab``; refuse (audited in ``<state_dir>/<log_file>``) otherwise."""
    try:
        return check_fab(fab, approved_records(kit), pinned_keys(kit))
    except (CryptoError, ConfigError) as exc:
        reason = REFUSED if isinstance(exc, CryptoError) else "no release key pinned"
        site_audit(state_dir, "app.refused", log_file=log_file, fab_sha256=fab_digest(fab), reason=reason)
        raise CryptoError(REFUSED) from exc


def approve(record_path: Path, kit: Path) -> Path:
    """Verify a release record against the kit's pinned keys and keep it in ``<kit>/releases/``."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{record_path}: not a release record; pass the file 'fedinfra app sign' wrote") from exc
    if not isinstance(record, dict):
        raise ConfigError(f"{record_path}: not a release record")
    verify_record(record, pinned_keys(kit))
    directory = kit / RELEASES_DIR
    directory.mkdir(exist_ok=True, mode=0o700)
    from fedinfra.runtime.release import record_name

    target = directory / record_name(record)
    target.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return target


def guard_clientapp(kit: Path, state_dir: Path | None) -> None:
    """Make Flower's ``run_clientapp`` (this process) verify each FAB before installing it."""
    import flwr.supernode.runtime.run_clientapp as runner

    install: Callable[..., Any] = getattr(runner, "install_from_fab")  # noqa: B009 - not re-exported

    def verified_install(fab_file: bytes | Path, *args: Any, **kwargs: Any) -> Any:
        fab = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        check_app(fab, kit, state_dir)
        return install(fab_file, *args, **kwargs)

    setattr(runner, "install_from_fab", verified_install)  # noqa: B010 - see above


def guard_serverapp(kit: Path, state_dir: Path | None) -> None:
    """Make Flower's ``flwr-serverapp`` (this process) verify its FAB before installing it.

    The coordinator holds itself to the sites' rule: the SuperLink launches a ServerApp for
    every submitted run, and the operator's host runs only a release its kit approved.
    """
    import importlib

    # The package re-exports the function under the module's name: take the module itself.
    runner = importlib.import_module("flwr.superlink.runtime.run_serverapp")
    install: Callable[..., Any] = getattr(runner, "install_from_fab")  # noqa: B009 - not re-exported

    def verified_install(fab_file: bytes | Path, *args: Any, **kwargs: Any) -> Any:
        fab = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        check_app(fab, kit, state_dir, log_file=COORDINATOR_AUDIT_FILE)
        return install(fab_file, *args, **kwargs)

    setattr(runner, "install_from_fab", verified_install)  # noqa: B010 - see above


__all__ = [
    "COORDINATOR_AUDIT_FILE",
    "RELEASES_DIR",
    "SITE_AUDIT_FILE",
    "approve",
    "approved_records",
    "check_app",
    "guard_clientapp",
    "guard_serverapp",
    "pinned_keys",
    "site_audit",
]
