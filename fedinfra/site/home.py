"""A site's own directory: its privacy ledger, its receipts, its model copy and kit.

Deployed, the node config names it (``state-dir``, ``kit``); in simulation the launcher
sets ``FEDINFRA_SITE_HOME`` and ``FEDINFRA_SITE_KITS`` (one sub-directory per site). Nothing
here is ever sent to the coordinator.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedinfra.config.names import check_slug
from fedinfra.errors import ConfigError
from fedinfra.types import NDArrays

HOME_ENV = "FEDINFRA_SITE_HOME"
KIT_ROOT_ENV = "FEDINFRA_SITE_KITS"


@dataclass(frozen=True)
class SiteHome:
    """Paths of one site's private state."""

    root: Path
    kit: Path | None

    @property
    def ledger(self) -> Path:
        """The privacy-budget ledger (SQLite)."""
        return self.root / "ledger.sqlite"

    @property
    def receipts(self) -> Path:
        """Directory of verified audit receipts."""
        return self.root / "receipts"

    def fingerprint_key(self) -> bytes:
        """The site's secret fingerprint key (32 random bytes, 0600), made on first use."""
        import secrets

        path = self.root / "fingerprint.key"
        if not path.exists():
            tmp = path.with_name(f"fingerprint.key.{secrets.token_hex(8)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # never replaces a key another process made first
            os.unlink(tmp)
        return path.read_bytes()

    def run_dir(self, run_id: str) -> Path:
        """Per-run private state (model copy in HE mode); ``run_id`` must be a slug.

        The run id comes from the coordinator: an absolute path or ``..`` would put the
        site's files anywhere (:mod:`fedinfra.config.names`).
        """
        path = self.root / "runs" / check_slug(run_id, "run_id from the coordinator")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save_weights(self, run_id: str, name: str, weights: NDArrays) -> None:
        """Store named arrays atomically under the run's directory."""
        buf = io.BytesIO()
        np.savez(buf, **weights)  # type: ignore[arg-type]
        target = self.run_dir(run_id) / f"{name}.npz"
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, target)

    def load_weights(self, run_id: str, name: str) -> NDArrays | None:
        """Load what :meth:`save_weights` stored, or ``None``."""
        target = self.run_dir(run_id) / f"{name}.npz"
        if not target.exists():
            return None
        with np.load(target) as data:
            return {k: np.asarray(data[k]) for k in data.files}


def resolve_home(node_config: dict[str, object], site: str) -> SiteHome:
    """Find the site's directory from its node config or the simulation environment."""
    if "state-dir" in node_config:
        root = Path(str(node_config["state-dir"]))
    elif HOME_ENV in os.environ:
        root = Path(os.environ[HOME_ENV]) / check_slug(site, "site name")
    else:
        raise ConfigError(f"site {site}: no state directory; set node config 'state-dir' (or {HOME_ENV})")
    if "kit" in node_config:
        kit: Path | None = Path(str(node_config["kit"]))
    elif KIT_ROOT_ENV in os.environ:
        kit = Path(os.environ[KIT_ROOT_ENV]) / check_slug(site, "site name")
    else:
        kit = None
    root.mkdir(parents=True, exist_ok=True)
    return SiteHome(root=root, kit=kit)
