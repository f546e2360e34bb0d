"""Releasing the fedinfra Flower App: build its FAB, sign it, hand sites the record.

The release manager (a consortium role, not necessarily the coordinator's operator)
holds an Ed25519 release key (``fedinfra app keygen``), kept offline like the CA key.
``fedinfra app sign --app-dir server`` builds the FAB exactly as ``flwr run`` will
(Flower's reproducible ``build_fab_from_disk``: fixed zip timestamps, the manifest's
``fab-include``) and writes a release record (:mod:`fedinfra.crypto.release`). Each site
approves it with ``fedinfra app approve --release FILE --kit KIT``, which verifies the
signature against the key the site pinned; from then on the site runs exactly that FAB
(:mod:`fedinfra.runtime.appcheck`).
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedinfra.crypto import _sign
from fedinfra.crypto.release import sign_release
from fedinfra.errors import ConfigError

RELEASE_KEY_FILE = "release_signing.key"
RELEASE_PUB_FILE = "release_signing.pub"


@dataclass(frozen=True)
class AppFab:
    """A built FAB and the name/version its manifest declares."""

    content: bytes
    app: str
    version: str


def build_app_fab(app_dir: Path) -> AppFab:
    """Build the FAB of ``app_dir`` byte for byte as ``flwr run`` does."""
    import warnings

    manifest = app_dir / "pyproject.toml"
    try:
        doc = tomllib.loads(manifest.read_text())
        app = f"{doc['tool']['flwr']['app']['publisher']}/{doc['project']['name']}"
        version = str(doc["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{manifest}: not a Flower App manifest (publisher, name, version); pass --app-dir") from exc
    try:
        with warnings.catch_warnings():  # Flower's CLI code uses typer/click APIs they deprecate
            warnings.simplefilter("ignore", DeprecationWarning)
            from flwr.cli.build import build_fab_from_disk

            content = build_fab_from_disk(app_dir)
    except Exception as exc:  # Flower raises click / value errors; translate at the boundary
        raise ConfigError(f"{app_dir}: Flower could not build the app ({type(exc).__name__})") from exc
    return AppFab(content=content, app=app, version=version)


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new file readable by its owner only (0600); never replace one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{path}: exists; a key is never overwritten (move it away first)") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def new_release_key(directory: Path) -> tuple[Path, str]:
    """Write a fresh release key pair into ``directory``; return (secret path, public hex)."""
    private_raw, public_raw = _sign.new_signing_key()
    secret = write_private(directory / RELEASE_KEY_FILE, private_raw)
    (directory / RELEASE_PUB_FILE).write_text(public_raw.hex() + "\n")
    return secret, public_raw.hex()


def read_release_key(path: Path) -> bytes:
    """Read a raw 32-byte release key (0600)."""
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path}: release key readable by others; run 'chmod 600 {path}'")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the release key; pass --key with the file 'app keygen' wrote") from exc
    if len(raw) != _sign.KEY_BYTES:
        raise ConfigError(f"{path}: not a release key (32 raw bytes)")
    return raw


def sign_app(app_dir: Path, private_raw: bytes, *, now: float | None = None) -> dict[str, Any]:
    """Build ``app_dir``'s FAB and return its signed release record."""
    fab = build_app_fab(app_dir)
    signed_at = int(time.time() if now is None else now)
    return sign_release(private_raw, fab.content, app=fab.app, version=fab.version, signed_at=signed_at)


def write_record(record: dict[str, Any], path: Path) -> Path:
    """Write a release record as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def record_name(record: dict[str, Any]) -> str:
    """The file name a release record is kept under."""
    return f"{str(record['app']).replace('/', '_')}-{record['version']}-{str(record['fab_sha256'])[:12]}.json"


__all__ = [
    "RELEASE_KEY_FILE",
    "RELEASE_PUB_FILE",
    "AppFab",
    "build_app_fab",
    "new_release_key",
    "read_release_key",
    "record_name",
    "sign_app",
    "write_private",
    "write_record",
]
