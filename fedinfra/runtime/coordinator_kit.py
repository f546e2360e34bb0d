"""Turning a coordinator kit into :class:`~fedinfra.coordinator.server.CoordinatorSettings`.

The coordinator kit holds public HE parameters (never the secret key: the coordinator
cannot decrypt, see DESIGN.md's security model) and the Ed25519 key that signs audit
checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedinfra.config import read_toml
from fedinfra.coordinator.server import CoordinatorSettings
from fedinfra.errors import ConfigError

if TYPE_CHECKING:
    from fedinfra.audit import Signer


def settings_from_kit(
    kit: Path,
    *,
    store: str,
    tls: bool,
    in_process: bool = False,
    he: bool,
    resume: bool = False,
    audit_retention_days: int = 2192,
) -> CoordinatorSettings:
    """Load the audit signer and (with ``he``) the HE public parameters from ``kit``."""
    from fedinfra.audit import Signer

    doc = read_toml(kit / "kit.toml")
    audit = doc.get("audit", {})
    key_file = audit.get("key_file")
    if not key_file:
        raise ConfigError(f"{kit}: kit has no audit signing key; provision it with 'fedinfra keys init'")
    try:
        signer = Signer.from_skey((kit / str(key_file)).read_text().strip())
    except OSError as exc:
        raise ConfigError(f"{kit / str(key_file)}: cannot read the audit signing key ({exc})") from exc
    he_public = None
    if he:
        from fedinfra.crypto import load_coordinator_kit

        he_public = load_coordinator_kit(kit)
    return CoordinatorSettings(
        site_node_keys=pinned_node_keys(kit) if tls and not in_process else None,
        site_cosigner_keys={str(k): str(v) for k, v in audit.get("cosigners", {}).items()} or None,
        store=store,
        signer=signer,
        tls=tls,
        in_process=in_process,
        he_public=he_public,
        resume=resume,
        audit_retention_days=audit_retention_days,
    )


def pinned_node_keys(kit: Path) -> dict[str, bytes]:
    """Site name -> DER public key of the SuperNode key the coordinator kit registers for it.

    The coordinator admits a node as site S only if the SuperLink authenticated it with
    this key (:mod:`fedinfra.coordinator.identity`).
    """
    from fedinfra.crypto.tls import public_key_der
    from fedinfra.runtime.kit import load_coordinator_transport

    keys = {site: public_key_der(path.read_bytes()) for site, path in load_coordinator_transport(kit).site_keys.items()}
    unreadable = sorted(site for site, der in keys.items() if not der)
    if unreadable:
        raise ConfigError(f"{kit}: SuperNode key of site {unreadable[0]!r} is unreadable; re-issue the kit")
    return keys


def write_report(
    store: str,
    run_dir: Path,
    run_id: str,
    *,
    signer: Signer,
    formats: tuple[str, ...] = ("html", "pdf", "json"),
) -> dict[str, Path]:
    """Write the run's compliance report into ``run_dir`` and log its hash.

    The PDF needs Pango (WeasyPrint, from the system): where it cannot load, the HTML and
    JSON are still written and a warning names the missing format and the fix.
    """
    import logging
    import warnings

    from fedinfra.audit import AuditLog
    from fedinfra.report import generate_report

    # WeasyPrint logs every CSS property of matplotlib's SVG it does not use; the PDF is
    # still complete, so keep the console for what matters.
    for name in ("weasyprint", "fontTools"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        files = generate_report(
            store, run_id, out_dir=run_dir, formats=formats, run_dir=run_dir, actor_kind="coordinator"
        )
    except OSError as exc:
        if "pdf" not in formats:
            raise
        warnings.warn(
            f"PDF report not written ({exc}); install Pango (apt-get install libpango-1.0-0 "
            "libpangoft2-1.0-0) and rerun 'fedinfra compliance report'",
            RuntimeWarning,
            stacklevel=2,
        )
        rest = tuple(f for f in formats if f != "pdf")
        files = generate_report(store, run_id, out_dir=run_dir, formats=rest, run_dir=run_dir, actor_kind="coordinator")
    # Sign a checkpoint over report.generated, so the report's hash is covered too.
    with AuditLog.open(store, origin=signer.name, signer=signer) as log:
        log.publish_checkpoint(run_id=run_id)
    return dict(files.paths)
