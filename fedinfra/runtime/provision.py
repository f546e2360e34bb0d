"""Provisioning kits: the transport and signing part (TLS, SuperNode auth, audit keys).

:func:`provision` builds every kit of a consortium in memory (the HE part registered in
:mod:`fedinfra.crypto.kits`, then :func:`add_transport_part`) and writes them with
:func:`fedinfra.crypto.kits.write_kits` (directories 0700, secrets 0600, nothing replaced
without ``force``). What each kit gets, and why:

* ``ca.crt`` everywhere: sites trust only the consortium CA (certificate pinning to a
  private root, RFC 5280 section 6 path validation from that anchor).
* coordinator: ``superlink.crt`` / ``superlink.key`` (SANs from ``coordinator.address`` and
  ``coordinator.sans``), one ``supernode_<site>.pub`` per site (registered with the
  SuperLink at start: only these keys may join), and ``audit_signing.key``, the Ed25519 key
  that signs audit checkpoints (C2SP signed-note key text, RFC 8032).
* site: ``supernode_auth.key`` (EC P-384, OpenSSH, the format Flower 1.41 loads), the
  coordinator's audit verifier key (in ``kit.toml``) and, if the HE part did not make one,
  ``update_signing.key`` (raw Ed25519) whose public half the coordinator kit lists, and
  every site's such public key (``[signing.site_keys]``: secure aggregation checks peers'
  signed keys against it).
* ``ca/ca.key`` stays with the provisioning host, offline: it is needed only to renew
  the coordinator certificate; a stolen CA key lets an attacker impersonate the coordinator.
* ``release/release_signing.key`` (Ed25519) signs app releases; every kit, the
  coordinator's too, pins its public half (``[release] public_keys``) and, given
  ``app_dir``, approves the release of that app (``releases/``): a site runs no other
  ClientApp (:mod:`fedinfra.runtime.appcheck`), the coordinator no other ServerApp
  (:mod:`fedinfra.runtime.serverapp_guard`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.crypto import KitSet, _sign, build_kits, write_kits
from fedinfra.crypto.kits import SIGNING_FILE, Kit
from fedinfra.crypto.tls import PemPair, generate_ca, generate_node_auth_key, issue_server_certificate
from fedinfra.errors import ConfigError

CA_FILE = "ca.crt"
SERVER_CERT_FILE = "superlink.crt"
SERVER_KEY_FILE = "superlink.key"
NODE_KEY_FILE = "supernode_auth.key"
NODE_PUB_FILE = "supernode_auth.pub"
AUDIT_KEY_FILE = "audit_signing.key"
#: The audit log's public verifier key as a file, for ``fedinfra audit verify --public-key``
#: (C2SP signed-note verifier key text); every kit holds it (issue 18: the documented
#: verify step needs a key file).
AUDIT_VKEY_FILE = "audit.vkey"
README_FILE = "README.md"
#: The site's C2SP tlog-cosignature key (0600) and its public key text, made in the key ceremony.
COSIGNER_FILE = "cosigner.key"
COSIGNER_VKEY_FILE = "cosigner.vkey"


def node_pub_file(site: str) -> str:
    """File name of a site's SuperNode public key inside the coordinator kit."""
    return f"supernode_{site}.pub"


def audit_key_name(consortium: str) -> str:
    """The audit log's key name (origin): no spaces or '+' (C2SP signed-note)."""
    return "fedinfra-audit." + re.sub(r"[^A-Za-z0-9._-]", "-", consortium)


@dataclass(frozen=True)
class Provisioned:
    """What :func:`provision` built and wrote."""

    kits: KitSet
    written: list[Path]


def _cosigner_part(site: str, kit: Kit, request: Mapping[str, Any] | None) -> str:
    """The site's cosigner key text, pinned in the coordinator kit ("" if an old request lacks it).

    ``keys init`` makes the key into the site kit; ``keys issue`` takes it from the site's
    signed request. Pinning it is what lets the coordinator (and any auditor holding the
    coordinator kit) refuse a cosigner key announced at admission that the ceremony did not
    register (C2SP tlog-witness: witness keys are configured out of band, never learned).
    """
    if request is not None:
        return str(request.get("cosigner_public_key", "")).strip()
    from fedinfra.audit.cosign import Cosigner
    from fedinfra.site.receipts import cosigner_name

    cosigner = Cosigner.generate(cosigner_name(site))
    kit.files[COSIGNER_FILE] = ((cosigner.skey + "\n").encode(), True)
    kit.files[COSIGNER_VKEY_FILE] = ((cosigner.vkey + "\n").encode(), False)
    return cosigner.vkey


def add_transport_part(
    kits: KitSet,
    consortium: ConsortiumConfig,
    ca: PemPair,
    *,
    requests: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Add TLS, SuperNode-authentication and signing material to ``kits`` (in memory).

    With ``requests`` (``keys issue``) the sites' public keys come from their key requests
    and no site secret is made here; without (``keys init``, simulation) they are generated.
    """
    from fedinfra.audit.note import Signer

    coord = consortium.coordinator
    server = issue_server_certificate(
        ca, common_name=coord.host, sans=coord.all_sans(), valid_days=coord.cert_valid_days
    )
    audit = Signer.generate(audit_key_name(consortium.name))
    c = kits.coordinator
    c.files[CA_FILE] = (ca.public, False)
    c.files[SERVER_CERT_FILE] = (server.public, False)
    c.files[SERVER_KEY_FILE] = (server.private, True)
    c.files[AUDIT_KEY_FILE] = ((audit.skey + "\n").encode(), True)
    c.tables["tls"] = {
        "ca_file": CA_FILE,
        "cert_file": SERVER_CERT_FILE,
        "key_file": SERVER_KEY_FILE,
        "address": coord.address,
    }
    c.files[AUDIT_VKEY_FILE] = ((audit.vkey + "\n").encode(), False)
    c.tables["audit"] = {"key_file": AUDIT_KEY_FILE, "vkey": audit.vkey, "vkey_file": AUDIT_VKEY_FILE}
    auth_files: dict[str, str] = {}
    verify: dict[str, str] = dict(c.tables.get("he.site_keys", {}))
    cosigners: dict[str, str] = {}
    for site, kit in kits.sites.items():
        cosigner = _cosigner_part(site, kit, None if requests is None else requests[site])
        if cosigner:
            cosigners[site] = cosigner
        if requests is None:
            node = generate_node_auth_key()
            kit.files[NODE_KEY_FILE] = (node.private, True)
            node_public = node.public
        else:
            node_public = (str(requests[site]["node_public_key"]).strip() + "\n").encode()
        kit.files[CA_FILE] = (ca.public, False)
        kit.files[NODE_PUB_FILE] = (node_public, False)
        kit.tables["tls"] = {"ca_file": CA_FILE, "superlink": coord.address}
        kit.tables["supernode"] = {"auth_key_file": NODE_KEY_FILE, "auth_public_file": NODE_PUB_FILE}
        kit.files[AUDIT_VKEY_FILE] = ((audit.vkey + "\n").encode(), False)
        kit.tables["audit"] = {"vkey": audit.vkey, "vkey_file": AUDIT_VKEY_FILE}
        if requests is not None:
            verify[site] = str(requests[site]["signing_public_key"])
        elif SIGNING_FILE not in kit.files:
            private_raw, public_raw = _sign.new_signing_key()
            kit.files[SIGNING_FILE] = (private_raw, True)
            verify[site] = public_raw.hex()
        kit.tables["signing"] = {"key_file": SIGNING_FILE}
        c.files[node_pub_file(site)] = (node_public, False)
        auth_files[site] = node_pub_file(site)
    c.tables["supernode.sites"] = auth_files
    c.tables["audit.cosigners"] = cosigners
    c.tables["signing.site_keys"] = verify
    for kit in kits.sites.values():
        # Every site pins every site's identity key: SecAgg sites refuse a key advertised in a
        # site's name unless this key signed it (fedinfra.site.secagg.identity).
        kit.tables["signing.site_keys"] = dict(verify)
    for kit in (c, *kits.sites.values()):
        kit.files[README_FILE] = (_readme(kit.role, kit.name, consortium).encode(), False)


def provision(
    consortium: ConsortiumConfig, out_dir: Path, force: bool = False, *, app_dir: Path | None = None
) -> Provisioned:
    """Write one kit per participant under ``out_dir`` (``coordinator/``, ``sites/<id>/``, ``ca/``).

    Nothing existing is overwritten unless ``force``: re-running on a provisioned directory
    raises :class:`ConfigError` and leaves every key in place. ``app_dir``: sign the FAB of
    that Flower App with the new release key and approve it in every site kit.
    """
    ca_dir = out_dir / "ca"
    if (ca_dir / "ca.key").exists() and not force:
        raise ConfigError(f"{ca_dir / 'ca.key'}: a CA already exists; pass --force to replace every kit")
    kits = build_kits(consortium.he_spec())
    ca = generate_ca(f"{consortium.name} fedinfra CA", valid_days=consortium.coordinator.ca_valid_days)
    add_transport_part(kits, consortium, ca)
    release_key, release_pub = _sign.new_signing_key()
    for kit in (kits.coordinator, *kits.sites.values()):  # the coordinator runs only approved apps too
        kit.tables["release"] = {"public_keys": release_pub.hex()}
    written = write_kits(kits, out_dir, force=force)
    written += _write_ca(ca_dir, ca, force=force)
    written += _write_release(out_dir, kits, release_key, app_dir=app_dir, force=force)
    return Provisioned(kits, written)


def _write_release(out_dir: Path, kits: KitSet, key: bytes, *, app_dir: Path | None, force: bool) -> list[Path]:
    from fedinfra.runtime.appcheck import RELEASES_DIR
    from fedinfra.runtime.release import RELEASE_KEY_FILE, RELEASE_PUB_FILE, record_name, sign_app, write_private
    from fedinfra.runtime.release import write_record as put

    release_dir = out_dir / "release"
    if force:
        (release_dir / RELEASE_KEY_FILE).unlink(missing_ok=True)
    written = [write_private(release_dir / RELEASE_KEY_FILE, key)]
    (release_dir / RELEASE_PUB_FILE).write_text(_sign.public_of(key).hex() + "\n")
    if app_dir is not None:
        record = sign_app(app_dir, key)
        written.append(put(record, release_dir / record_name(record)))
        for kit_dir in (out_dir / "coordinator", *(out_dir / "sites" / site for site in kits.sites)):
            written.append(put(record, kit_dir / RELEASES_DIR / record_name(record)))
    return written


def _write_ca(ca_dir: Path, ca: PemPair, *, force: bool) -> list[Path]:
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_dir.chmod(0o700)
    out: list[Path] = []
    for name, data, mode in (("ca.crt", ca.public, 0o644), ("ca.key", ca.private, 0o600)):
        path = ca_dir / name
        if force:
            path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        out.append(path)
    return out


def _readme(role: str, name: str, consortium: ConsortiumConfig) -> str:
    head = f"# fedinfra kit: {name} ({consortium.name})\n\n"
    if role == "coordinator":
        return head + (
            "Copy this whole directory to the coordinator host (e.g. /etc/fedinfra/kit, owner the\n"
            "service account, mode 0700) and start the server with\n"
            "`fedinfra server start --config server.toml --kit <this dir>`.\n\n"
            "Secret, never leaves this host: `superlink.key` (TLS key), `audit_signing.key`\n"
            "(signs audit checkpoints).\n"
            "Public: `ca.crt`, `superlink.crt`, `supernode_<site>.pub` (the only SuperNode keys\n"
            "the server admits), `kit.toml`.\n"
            "This kit holds no HE secret key: the coordinator must never have one.\n"
        )
    return head + (
        f"Copy this whole directory to the machine of site `{name}` (mode 0700) and start it with\n"
        "`fedinfra client start --site site.toml --kit <this dir>`.\n\n"
        "Secret, never leaves the site: `supernode_auth.key` (proves the site's identity to the\n"
        "coordinator), `update_signing.key` (signs updates), `he_secret.key` if present (shared\n"
        "HE secret key: never give it to the coordinator).\n"
        f"Public: `ca.crt` (the only CA the site trusts for {consortium.coordinator.address}),\n"
        "`supernode_auth.pub`, `kit.toml`.\n"
        "If a secret leaks, tell the consortium operator: the site is unregistered and re-provisioned.\n"
    )


__all__ = ["Provisioned", "add_transport_part", "audit_key_name", "node_pub_file", "provision"]
