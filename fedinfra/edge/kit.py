"""The provisioning kit an edge device runs with (written by ``fedinfra keys init``).

An edge device uses a *site* kit (``kit.toml`` table ``[kit]``: ``format``, ``role``,
``site_id``) whose ``site_id`` must be the device's name: a kit copied from another device
is refused before anything connects, because its keys would make this device speak as the
other one. The CA certificate is ``[tls] ca_file`` and the SuperNode authentication key is
``[supernode] auth_key_file`` - the names :mod:`fedinfra.runtime.provision` writes - falling
back to ``ca.crt`` and ``supernode_auth.key`` in the kit directory. A TLS kit without its
authentication key is refused: a SuperLink with SuperNode authentication (the only kind
``fedinfra server start`` runs) would turn the device away on every attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedinfra.config._load import read_toml
from fedinfra.errors import ConfigError

#: Must match :data:`fedinfra.crypto.kits.KIT_FORMAT` (not imported: it loads SEAL).
KIT_FORMAT = "fedinfra-kit/1"
KIT_FILE = "kit.toml"
DEFAULT_CA = "ca.crt"
DEFAULT_AUTH_KEY = "supernode_auth.key"


@dataclass(frozen=True)
class EdgeKit:
    """What the edge client needs from its kit."""

    path: Path
    site_id: str
    consortium: str
    ca_file: Path | None
    auth_key_file: Path | None


def load_edge_kit(path: Path, *, device: str, require_tls: bool = True) -> EdgeKit:
    """Read and check the kit at ``path`` for the device named ``device``.

    Raises
    ------
    ConfigError
        If it is not a fedinfra site kit, belongs to another device, or lacks the CA
        certificate while TLS is required.
    """
    if not path.is_dir():
        raise ConfigError(f"{path}: kit directory not found; pass --kit with this device's kit")
    data = read_toml(path / KIT_FILE)
    kit = data.get("kit", {})
    if not isinstance(kit, dict) or kit.get("format") != KIT_FORMAT:
        raise ConfigError(f"{path}: not a fedinfra kit ({KIT_FILE} lacks format {KIT_FORMAT!r})")
    if kit.get("role") != "site":
        raise ConfigError(f"{path}: this is a {kit.get('role')!r} kit; an edge device needs its own site kit")
    site_id = str(kit.get("site_id", ""))
    if site_id != device:
        raise ConfigError(
            f"{path}: this kit is for device {site_id!r}, not {device!r}; "
            f"use the kit provisioned for {device!r}"
        )
    tls = _table(data, "tls")
    node = _table(data, "supernode")

    def _file(name: object) -> Path | None:
        candidate = path / str(name)
        return candidate if candidate.is_file() else None

    ca = _file(tls.get("ca_file", DEFAULT_CA))
    if require_tls and ca is None:
        raise ConfigError(f"{path}: no CA certificate ({DEFAULT_CA}) in the kit; re-provision it with TLS")
    auth_name = node.get("auth_key_file", tls.get("auth_key_file", DEFAULT_AUTH_KEY))
    auth = _file(auth_name)
    if require_tls and auth is None and "auth_key_file" in node:
        raise ConfigError(
            f"{path / str(auth_name)}: SuperNode authentication key missing from the kit; copy the whole kit directory"
        )
    return EdgeKit(path, site_id, str(kit.get("consortium", "")), ca, auth)


def _table(data: dict[str, object], name: str) -> dict[str, object]:
    table = data.get(name, {})
    return table if isinstance(table, dict) else {}
