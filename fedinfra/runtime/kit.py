"""Reading the transport part of provisioning kits (written by :mod:`.provision`)."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedinfra.crypto.kits import read_kit
from fedinfra.errors import ConfigError


def _kit(path: Path, role: str) -> dict[str, Any]:
    return read_kit(
        path, role, part="tls", missing="the kit holds no TLS material; re-provision with 'fedinfra keys init --force'"
    )


def _file(kit_dir: Path, name: object, what: str, *, secret: bool = False) -> Path:
    path = kit_dir / str(name)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} missing from the kit; copy the whole kit directory")
    if secret and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise ConfigError(f"{path}: secret readable by others; run 'chmod 600 {path}'")
    return path


@dataclass(frozen=True)
class CoordinatorKit:
    """The coordinator's TLS material and the SuperNode keys it admits."""

    dir: Path
    consortium: str
    address: str
    ca: Path
    cert: Path
    key: Path
    site_keys: dict[str, Path]


@dataclass(frozen=True)
class SiteKit:
    """A site's CA, SuperNode authentication key and coordinator address."""

    dir: Path
    consortium: str
    site_id: str
    superlink: str
    ca: Path
    auth_key: Path


def load_coordinator_transport(path: Path | str) -> CoordinatorKit:
    """Load the coordinator kit's transport part; every file must be present."""
    p = Path(path).resolve()
    data = _kit(p, "coordinator")
    tls = data["tls"]
    sites = data.get("supernode", {}).get("sites", {})
    return CoordinatorKit(
        dir=p,
        consortium=str(data["kit"]["consortium"]),
        address=str(tls["address"]),
        ca=_file(p, tls["ca_file"], "CA certificate"),
        cert=_file(p, tls["cert_file"], "server certificate"),
        key=_file(p, tls["key_file"], "server TLS key", secret=True),
        site_keys={s: _file(p, f, f"SuperNode key of {s}") for s, f in sites.items()},
    )


def load_site_transport(path: Path | str) -> SiteKit:
    """Load a site kit's transport part; the CA and auth key must be present."""
    p = Path(path).resolve()
    data = _kit(p, "site")
    tls = data["tls"]
    return SiteKit(
        dir=p,
        consortium=str(data["kit"]["consortium"]),
        site_id=str(data["kit"]["site_id"]),
        superlink=str(tls["superlink"]),
        ca=_file(p, tls["ca_file"], "CA certificate (ca.crt)"),
        auth_key=_file(p, data.get("supernode", {}).get("auth_key_file", ""), "SuperNode auth key", secret=True),
    )
