"""Provisioning kits: key material per site, public parameters for the coordinator.

Key separation (DESIGN.md, security model): the HE secret key is generated once, by
``fedinfra keys init`` on the provisioning host, and written **only** into site kits; the
coordinator kit holds the public parameters and the sites' Ed25519 verification keys. The
coordinator can therefore add ciphertexts and check who sent them but can decrypt neither a
single update nor the sum. Collusion of the coordinator with one site breaks this (the site
holds the shared key); pairwise masking is the alternative where that matters.

Kits are assembled by registered *parts* (``he`` here; TLS and SuperNode authentication are
added by later parts through :func:`register_kit_part`) and written by :func:`write_kits`:
directories 0700, secret files 0600, nothing overwritten unless ``force``.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedinfra.config._load import parse_model, read_toml
from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.crypto import _sign
from fedinfra.crypto.params import HEParams
from fedinfra.errors import ConfigError, CryptoError

KIT_FORMAT = "fedinfra-kit/1"
KIT_FILE = "kit.toml"
HE_SECRET_FILE = "he_secret.key"  # noqa: S105 - a file name, not a secret
SIGNING_FILE = "update_signing.key"


@dataclass(frozen=True)
class PublicParams:
    """The coordinator's view: parameters and the sites' verification keys, no secret."""

    params: HEParams
    consortium: str
    site_keys: Mapping[str, bytes]


@dataclass(frozen=True, repr=False)
class SiteKeys:
    """A site's view: parameters, its identity, the shared HE secret key and its signing key."""

    params: HEParams
    consortium: str
    site_id: str
    he_secret_key: bytes
    signing_key: bytes
    _cache: dict[str, Any] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        return f"SiteKeys(consortium={self.consortium!r}, site_id={self.site_id!r}, <secrets hidden>)"


# -- assembling kits from parts ---------------------------------------------------------------


@dataclass
class Kit:
    """One kit being assembled: TOML tables and files (``secret`` files are written 0600)."""

    role: str
    name: str
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, tuple[bytes, bool]] = field(default_factory=dict)


@dataclass
class KitSet:
    """The coordinator kit and one kit per site."""

    consortium: ConsortiumSpec
    coordinator: Kit
    sites: dict[str, Kit]


#: Kit parts by name; each adds its tables and files to a :class:`KitSet`.
KIT_PARTS: dict[str, Callable[[KitSet], None]] = {}


def register_kit_part(name: str, part: Callable[[KitSet], None]) -> None:
    """Register a provisioning part (e.g. ``"tls"``) run by :func:`build_kits`."""
    KIT_PARTS[name] = part


def _he_part(kits: KitSet) -> None:
    """Generate the HE secret key and per-site signing keys (skipped when mode is none)."""
    spec = kits.consortium.secure_aggregation
    if not spec.encrypted:  # none, or secagg: no shared secret at all
        return
    from fedinfra.crypto.codec import context_for  # SEAL is loaded only here

    params = HEParams(spec=spec, kit_id=secrets.token_hex(16))
    he_secret = context_for(params).new_secret_key()
    public = {**_spec_table(spec), "kit_id": params.kit_id, "param_id": params.param_id.hex()}
    verify: dict[str, str] = {}
    for site_id, kit in kits.sites.items():
        private_raw, public_raw = _sign.new_signing_key()
        verify[site_id] = public_raw.hex()
        kit.tables["he"] = {**public, "secret_key_file": HE_SECRET_FILE, "signing_key_file": SIGNING_FILE}
        kit.files[HE_SECRET_FILE] = (he_secret, True)
        kit.files[SIGNING_FILE] = (private_raw, True)
    kits.coordinator.tables["he"] = dict(public)
    kits.coordinator.tables["he.site_keys"] = verify


register_kit_part("he", _he_part)


def he_public_part(kits: KitSet, signing_public: Mapping[str, str]) -> str:
    """The HE part without any secret (``keys issue``); return the parameter id ("" if HE is off).

    Site kits name the files the site itself holds (its signing key from ``keys request``;
    the HE secret key a site makes and seals to the others, :mod:`fedinfra.crypto.ceremony`);
    the coordinator gets the public parameters and the sites' verification keys.
    """
    spec = kits.consortium.secure_aggregation
    if spec.mode == "none":
        return ""
    params = HEParams(spec=spec, kit_id=secrets.token_hex(16))
    public = {**_spec_table(spec), "kit_id": params.kit_id, "param_id": params.param_id.hex()}
    for kit in kits.sites.values():
        kit.tables["he"] = {**public, "secret_key_file": HE_SECRET_FILE, "signing_key_file": SIGNING_FILE}
    kits.coordinator.tables["he"] = dict(public)
    kits.coordinator.tables["he.site_keys"] = {s: signing_public[s] for s in kits.sites}
    return params.param_id.hex()


def empty_kits(consortium: ConsortiumSpec) -> KitSet:
    """Kits holding only their ``[kit]`` table (no part run)."""
    base = {"format": KIT_FORMAT, "consortium": consortium.name}
    coordinator = Kit("coordinator", "coordinator", tables={"kit": {**base, "role": "coordinator"}})
    sites = {s: Kit("site", s, tables={"kit": {**base, "role": "site", "site_id": s}}) for s in consortium.sites}
    return KitSet(consortium, coordinator, sites)


def build_kits(consortium: ConsortiumSpec) -> KitSet:
    """Assemble every kit of ``consortium`` in memory by running the registered parts."""
    kits = empty_kits(consortium)
    for part in KIT_PARTS.values():
        part(kits)
    return kits


def _spec_table(spec: SecureAggSpec) -> dict[str, Any]:
    return {k: v for k, v in spec.model_dump().items() if v is not None}


# -- writing and reading kits -------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise ConfigError(f"cannot write {type(value).__name__} to a kit file")


def render_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Render flat tables (dotted names allowed) of scalars as TOML."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


def _kit_dir(out: Path, kit: Kit) -> Path:
    return out / "coordinator" if kit.role == "coordinator" else out / "sites" / kit.name


def write_kits(kits: KitSet, out: Path, *, force: bool = False) -> list[Path]:
    """Write every kit under ``out``; refuse to overwrite an existing kit unless ``force``."""
    all_kits = [kits.coordinator, *kits.sites.values()]
    dirs = [_kit_dir(out, k) for k in all_kits]
    existing = [d for d in dirs if d.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]}: a kit already exists; pass --force to replace it")
    written: list[Path] = []
    for kit, d in zip(all_kits, dirs, strict=True):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.chmod(0o700)
        for name in list(os.listdir(d)) if force else []:
            (d / name).unlink()
        files = {KIT_FILE: (render_toml(kit.tables).encode(), False), **kit.files}
        for name, (data, secret) in files.items():
            path = d / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            written.append(path)
    return written


def read_kit(path: Path, role: str, *, part: str, missing: str) -> dict[str, Any]:
    """Read the ``kit.toml`` of a ``role`` kit that must hold the ``part`` table.

    ``missing`` is what to tell the user when the part is absent.
    """
    if not (path / KIT_FILE).is_file():
        raise ConfigError(f"{path}: not a kit directory (no {KIT_FILE}); pass a kit from 'fedinfra keys init'")
    data = read_toml(path / KIT_FILE)
    kit = data.get("kit", {})
    if kit.get("format") != KIT_FORMAT:
        raise ConfigError(f"{path}: not a fedinfra kit ({KIT_FILE} lacks format {KIT_FORMAT!r})")
    if kit.get("role") != role:
        raise ConfigError(f"{path}: this is a {kit.get('role')!r} kit; pass the {role} kit")
    if part not in data:
        raise ConfigError(f"{path}: {missing}")
    return data


def _read_kit(path: Path, role: str) -> dict[str, Any]:
    return read_kit(
        path, role, part="he", missing="the kit holds no HE material; re-run 'fedinfra keys init' with HE on"
    )


def _params_from(path: Path, he: dict[str, Any]) -> HEParams:
    table = {k: v for k, v in he.items() if k in SecureAggSpec.model_fields}
    spec = parse_model(SecureAggSpec, table, f"{path / KIT_FILE} [he]")
    params = HEParams(spec=spec, kit_id=str(he.get("kit_id", "")))
    if params.param_id.hex() != he.get("param_id"):
        raise ConfigError(f"{path / KIT_FILE}: [he] was edited (param_id mismatch); re-provision the kit")
    return params


def _read_secret(path: Path) -> bytes:
    try:
        st = path.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ConfigError(f"{path}: secret readable by others; run 'chmod 600 {path}'")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: missing; the site kit is incomplete") from exc


def load_coordinator_kit(path: Path | str) -> PublicParams:
    """Load the coordinator's kit; refuses a kit that holds any secret key file."""
    p = Path(path)
    data = _read_kit(p, "coordinator")
    for name in (HE_SECRET_FILE, SIGNING_FILE):
        if (p / name).exists():
            raise ConfigError(f"{p / name}: a coordinator kit must not hold a secret key; remove it")
    params = _params_from(p, data["he"])
    site_keys = {s: bytes.fromhex(v) for s, v in data["he"].get("site_keys", {}).items()}
    return PublicParams(params=params, consortium=str(data["kit"]["consortium"]), site_keys=site_keys)


def load_site_kit(path: Path | str) -> SiteKeys:
    """Load a site's kit (HE secret key and Ed25519 signing key, both 0600)."""
    p = Path(path)
    data = _read_kit(p, "site")
    he = data["he"]
    params = _params_from(p, he)
    signing = _read_secret(p / str(he.get("signing_key_file", SIGNING_FILE)))
    if len(signing) != _sign.KEY_BYTES:
        raise CryptoError("signing key rejected: not a 32-byte Ed25519 key")
    return SiteKeys(
        params=params,
        consortium=str(data["kit"]["consortium"]),
        site_id=str(data["kit"]["site_id"]),
        he_secret_key=_read_secret(p / str(he.get("secret_key_file", HE_SECRET_FILE))),
        signing_key=signing,
    )


def generate_consortium(consortium: ConsortiumSpec) -> tuple[PublicParams, dict[str, SiteKeys]]:
    """Build kits in memory and return them loaded (tests, simulation and benchmarks)."""
    kits = build_kits(consortium)
    he = kits.coordinator.tables.get("he")
    if he is None:
        raise ConfigError("secure_aggregation.mode is 'none'; HE kits need 'bfv' or 'ckks'")
    params = HEParams(spec=consortium.secure_aggregation, kit_id=str(he["kit_id"]))
    public = PublicParams(
        params=params,
        consortium=consortium.name,
        site_keys={s: bytes.fromhex(v) for s, v in kits.coordinator.tables["he.site_keys"].items()},
    )
    sites = {
        s: SiteKeys(
            params=params,
            consortium=consortium.name,
            site_id=s,
            he_secret_key=kit.files[HE_SECRET_FILE][0],
            signing_key=kit.files[SIGNING_FILE][0],
        )
        for s, kit in kits.sites.items()
    }
    return public, sites
