"""The coordinator's ``flwr-serverapp``: Flower's own, with the app-release check in front.

Sites run only app releases they approved (:mod:`fedinfra.runtime.appcheck`); the
coordinator holds itself to the same rule, twice:

* ``fedinfra run`` checks the FAB it is about to submit against the coordinator kit's
  pinned release keys and approved records (:func:`check_own_app`) and refuses in one line;
* the SuperLink starts a ``flwr-serverapp`` process for *every* run submitted to it
  (Flower's ``--isolation subprocess``: ``flower-superexec`` launches the command by name).
  ``fedinfra server start`` puts a directory holding this module's launcher first on the
  SuperLink's ``PATH`` (:func:`write_launcher`), so the ServerApp process is Flower's
  ``flwr_serverapp`` with its ``install_from_fab`` wrapped: a FAB that is not an approved,
  signed release fails the run before any of its code is written to disk or imported, and
  the refusal goes to ``<state-dir>/coordinator-audit.jsonl`` (digest and reason only).
  Flower reports the run ``finished:failed`` with the one-line reason.

The second check covers runs that never went through ``fedinfra run`` (``flwr run`` on the
coordinator host against the loopback Control API). It protects the operator's host from an
app the operator did not approve; it is not a protection *of the sites from the operator*,
who controls this host - that is each site's own check.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedinfra.errors import CryptoError

#: Environment of the SuperLink (inherited by ``flower-superexec`` and each ServerApp).
ENV_KIT = "FEDINFRA_SERVERAPP_KIT"
ENV_STATE = "FEDINFRA_SERVERAPP_STATE_DIR"
LAUNCHER_DIR = "serverapp-bin"
COMMAND = "flwr-serverapp"


def write_launcher(state_dir: Path) -> Path:
    """Write ``<state_dir>/serverapp-bin/flwr-serverapp`` (0700); return the directory for ``PATH``."""
    directory = state_dir / LAUNCHER_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    script = directory / COMMAND
    script.write_text(
        f"#!{sys.executable}\n"
        '"""fedinfra: Flower\'s flwr-serverapp, run only for an approved app release."""\n'
        "from fedinfra.runtime.serverapp_guard import main\n\nmain()\n"
    )
    script.chmod(0o700)
    return directory


def launcher_env(env: dict[str, str], state_dir: Path, kit: Path) -> dict[str, str]:
    """``env`` for the SuperLink such that every ServerApp it starts is checked against ``kit``."""
    directory = write_launcher(state_dir)
    return {**env, "PATH": str(directory) + os.pathsep + env.get("PATH", ""), ENV_KIT: str(kit.resolve()),
            ENV_STATE: str(state_dir.resolve())}


def check_own_app(app_dir: Path, kit: Path, state_dir: Path | None = None) -> dict[str, object]:
    """Refuse (one line, :class:`CryptoError`) to submit ``app_dir`` unless the coordinator kit approved its FAB."""
    from fedinfra.runtime.appcheck import COORDINATOR_AUDIT_FILE, check_app
    from fedinfra.runtime.release import build_app_fab

    fab = build_app_fab(app_dir)
    try:
        return check_app(fab.content, kit, state_dir, log_file=COORDINATOR_AUDIT_FILE)
    except CryptoError as exc:
        raise CryptoError(
            f"{app_dir}: the coordinator will not run {fab.app} {fab.version}: {exc}; "
            f"approve the signed release with 'fedinfra app approve --kit {kit}'"
        ) from exc


def main() -> None:
    """Check the run's FAB, then hand over to Flower's ``flwr-serverapp``."""
    kit = os.environ.get(ENV_KIT, "")
    if not kit:
        sys.stderr.write(f"{COMMAND}: {ENV_KIT} is not set; the coordinator runs no unchecked ServerApp\n")
        sys.exit(2)
    from fedinfra.runtime.appcheck import guard_serverapp

    state = os.environ.get(ENV_STATE, "")
    guard_serverapp(Path(kit), Path(state) if state else None)
    from flwr.superlink.cli.flwr_serverapp import flwr_serverapp

    flwr_serverapp()


__all__ = ["COMMAND", "ENV_KIT", "ENV_STATE", "LAUNCHER_DIR", "check_own_app", "launcher_env", "main",
           "write_launcher"]
