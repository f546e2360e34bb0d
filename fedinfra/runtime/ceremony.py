"""The key ceremony's files: ``keys request``, ``keys issue``, ``keys accept``, ``he-share``/``he-open``.

Who runs what, and what crosses between parties (only public material and sealed
envelopes ever do; :mod:`fedinfra.crypto.ceremony` holds the cryptography):

=========================  =================  =============================================
step                       who                leaves the host
=========================  =================  =============================================
``keys request``           each site          ``request-<site>.json`` (public keys)
``keys issue``             operator           ``sites/<site>/`` bundle (CA, kit.toml, the
                                              consortium's public keys); coordinator kit
``keys accept``            each site          nothing
``keys he-share``          one site           ``he-key-<from>-to-<site>.json`` (sealed)
``keys he-open``           every other site   nothing
=========================  =================  =============================================
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedinfra.config import read_toml
from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.config.names import check_slug
from fedinfra.crypto import _sign
from fedinfra.crypto.ceremony import fingerprint, make_request, open_he_key, seal_he_key, verify_request
from fedinfra.crypto.kits import HE_SECRET_FILE, KIT_FILE, SIGNING_FILE, empty_kits, he_public_part, write_kits
from fedinfra.errors import ConfigError, CryptoError
from fedinfra.runtime.provision import COSIGNER_FILE, COSIGNER_VKEY_FILE
from fedinfra.runtime.release import RELEASE_PUB_FILE, write_private

CONSORTIUM_KEYS_FILE = "consortium-keys.json"
KEX_FILE = "kex.key"
_SECRET_NAMES = ("supernode_auth.key", SIGNING_FILE, KEX_FILE, HE_SECRET_FILE, COSIGNER_FILE)


def request_keys(site: str, consortium: str, kit: Path) -> tuple[Path, str]:
    """Make the site's keys in ``kit`` (0700 / 0600) and write its request; return (request, fingerprint)."""
    check_slug(site, "--site")
    if any((kit / name).exists() for name in _SECRET_NAMES):
        raise ConfigError(f"{kit}: already holds site keys; use a new directory (keys are never overwritten)")
    from fedinfra.audit.cosign import Cosigner
    from fedinfra.site.receipts import cosigner_name

    cosigner = Cosigner.generate(cosigner_name(site))  # pinned by 'keys issue' in the coordinator kit
    doc, secrets = make_request(site, consortium, cosigner_public_key=cosigner.vkey)
    secrets[COSIGNER_FILE] = (cosigner.skey + "\n").encode()
    for name, data in secrets.items():
        write_private(kit / name, data)
    (kit / COSIGNER_VKEY_FILE).write_text(cosigner.vkey + "\n")
    (kit / "supernode_auth.pub").chmod(0o644)
    request = kit / f"request-{site}.json"
    request.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return request, fingerprint(doc)


def _load_requests(paths: Sequence[Path], cfg: ConsortiumConfig) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a key request (JSON from 'fedinfra keys request')") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: not a key request")
        try:
            verify_request(doc)
        except CryptoError as exc:
            raise ConfigError(f"{path}: {exc}; ask the site for a new request") from exc
        site = check_slug(doc.get("site"), f"{path}: site")
        if site not in cfg.sites:
            raise ConfigError(f"{path}: site {site!r} is not in the consortium file; add it or drop the request")
        if doc.get("consortium") != cfg.name:
            raise ConfigError(f"{path}: request is for consortium {doc.get('consortium')!r}, not {cfg.name!r}")
        if site in out:
            raise ConfigError(f"{path}: a second request for site {site!r}; keep one")
        out[site] = doc
    missing = [s for s in cfg.sites if s not in out]
    if missing:
        raise ConfigError(f"no key request for site {missing[0]!r}; collect every site's request-<site>.json")
    return out


def issue(
    cfg: ConsortiumConfig,
    requests: Sequence[Path],
    out: Path,
    *,
    release_public: Sequence[str],
    force: bool = False,
) -> list[Path]:
    """Write the coordinator kit, one public bundle per site and the CA, from the sites' requests.

    Nothing written here is a site secret: site bundles hold the CA certificate, the kit
    table naming the files the site already has, and the consortium's public keys.
    """
    from fedinfra.crypto.tls import generate_ca
    from fedinfra.runtime.provision import _write_ca, add_transport_part

    docs = _load_requests(requests, cfg)
    if not release_public:
        raise ConfigError("no release key: pass --release-pub release_signing.pub (from 'fedinfra app keygen')")
    ca_dir = out / "ca"
    if (ca_dir / "ca.key").exists() and not force:
        raise ConfigError(f"{ca_dir / 'ca.key'}: a CA already exists; pass --force to replace every kit")
    kits = empty_kits(cfg.he_spec())
    he_public_part(kits, {s: str(d["signing_public_key"]) for s, d in docs.items()})
    ca = generate_ca(f"{cfg.name} fedinfra CA", valid_days=cfg.coordinator.ca_valid_days)
    add_transport_part(kits, cfg, ca, requests=docs)
    directory = {
        s: {"signing_public_key": d["signing_public_key"], "kex_public_key": d["kex_public_key"],
            "fingerprint": fingerprint(d)}
        for s, d in docs.items()
    }
    kits.coordinator.tables["release"] = {"public_keys": ",".join(release_public)}  # approves like a site
    for kit in kits.sites.values():
        kit.tables["release"] = {"public_keys": ",".join(release_public)}
        kit.files[CONSORTIUM_KEYS_FILE] = (json.dumps(directory, indent=2, sort_keys=True).encode(), False)
    written = write_kits(kits, out, force=force)
    return written + _write_ca(ca_dir, ca, force=force)


def read_release_public(paths: Sequence[Path]) -> list[str]:
    """Release public keys (hex) from ``release_signing.pub`` files."""
    keys = []
    for path in paths:
        try:
            text = path.read_text().strip()
            if len(bytes.fromhex(text)) != 32:
                raise ValueError(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a release public key ({RELEASE_PUB_FILE} from 'app keygen')") from exc
        keys.append(text)
    return keys


def accept(bundle: Path, kit: Path) -> list[Path]:
    """Install the operator's public bundle into the site's own kit (holding its secrets).

    Refused unless the bundle is for this site and names this site's own node key.
    """
    try:
        table = read_toml(bundle / KIT_FILE).get("kit", {})
    except ConfigError as exc:
        raise ConfigError(f"{bundle}: not a site bundle from 'fedinfra keys issue'") from exc
    own = own_request(kit)
    if table.get("site_id") != own.get("site") or table.get("role") != "site":
        raise ConfigError(f"{bundle}: bundle is for site {table.get('site_id')!r}, this kit is {own.get('site')!r}")
    theirs = (bundle / "supernode_auth.pub").read_text().strip() if (bundle / "supernode_auth.pub").exists() else ""
    if theirs != str(own.get("node_public_key", "")).strip():
        raise ConfigError(f"{bundle}: names another node key than this site's; ask the operator to re-issue")
    written = []
    for src in sorted(bundle.iterdir()):
        if src.name in _SECRET_NAMES or not src.is_file():
            continue
        dst = kit / src.name
        shutil.copyfile(src, dst)
        dst.chmod(0o644)
        written.append(dst)
    kit.chmod(0o700)
    return written


def own_request(kit: Path) -> dict[str, Any]:
    """The site's own key request in ``kit``: the one whose signing key is the kit's own secret key.

    A kit may hold other files named ``request-*.json`` (a request copied in by mistake or on
    purpose); the site's identity is its key, never a file name. No match or two different
    matching requests is refused in one line.
    """
    try:
        own_public = _sign.public_of((kit / SIGNING_FILE).read_bytes()).hex()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{kit / SIGNING_FILE}: this site's signing key is missing; run 'fedinfra keys request'"
        ) from exc
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(kit.glob("request-*.json")):
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict) or doc.get("signing_public_key") != own_public:
                continue
            verify_request(doc)
        except (OSError, ValueError, CryptoError):
            continue
        found[json.dumps(doc, sort_keys=True)] = doc
    if not found:
        raise ConfigError(f"{kit}: no request-<site>.json signed by this site's own key; run 'fedinfra keys request'")
    if len(found) > 1:
        raise ConfigError(f"{kit}: several requests carry this site's signing key; keep only the one you sent")
    return next(iter(found.values()))


def _directory(kit: Path) -> dict[str, dict[str, str]]:
    try:
        doc: dict[str, dict[str, str]] = json.loads((kit / CONSORTIUM_KEYS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{kit}: no {CONSORTIUM_KEYS_FILE}; run 'fedinfra keys accept' first") from exc
    return doc


def _identity(kit: Path) -> tuple[str, str, str]:
    data = read_toml(kit / KIT_FILE)
    he = data.get("he", {})
    if not he.get("param_id"):
        raise ConfigError(f"{kit}: the consortium has no HE parameters (secure_aggregation.mode is 'none')")
    return str(data["kit"]["site_id"]), str(data["kit"]["consortium"]), str(he["param_id"])


def he_share(kit: Path, out: Path) -> list[Path]:
    """Make the consortium's HE secret key at this site (once) and seal it to every other site."""
    from fedinfra.crypto import load_site_kit
    from fedinfra.crypto.codec import context_for
    from fedinfra.crypto.kits import _params_from

    me, consortium, param_id = _identity(kit)
    secret_path = kit / HE_SECRET_FILE
    if not secret_path.exists():
        he = read_toml(kit / KIT_FILE)["he"]
        write_private(secret_path, context_for(_params_from(kit, he)).new_secret_key())
    keys = load_site_kit(kit)  # also checks modes and parameters
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for site, entry in sorted(_directory(kit).items()):
        if site == me:
            continue
        envelope = seal_he_key(
            keys.he_secret_key, consortium=consortium, param_id=param_id, sender=me,
            sender_signing_key=keys.signing_key, recipient=site,
            recipient_kex_public=bytes.fromhex(entry["kex_public_key"]),
        )
        path = out / f"he-key-{me}-to-{site}.json"
        path.write_text(json.dumps(envelope, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def he_open(kit: Path, sealed: Path) -> Path:
    """Open the HE secret key sealed to this site and keep it (0600)."""
    me, consortium, param_id = _identity(kit)
    try:
        envelope = json.loads(sealed.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{sealed}: not a sealed HE key from 'fedinfra keys he-share'") from exc
    senders = {s: bytes.fromhex(e["signing_public_key"]) for s, e in _directory(kit).items()}
    kex = (kit / KEX_FILE).read_bytes()
    secret = open_he_key(envelope, consortium=consortium, param_id=param_id, me=me, kex_private=kex,
                         sender_signing_public=senders)
    target = kit / HE_SECRET_FILE
    if target.exists():
        if target.read_bytes() != secret:
            raise ConfigError(f"{target}: this site already holds a different HE key; remove it to replace")
        return target
    return write_private(target, secret)


__all__ = ["CONSORTIUM_KEYS_FILE", "KEX_FILE", "accept", "he_open", "he_share", "issue", "own_request",
           "read_release_public", "request_keys"]
