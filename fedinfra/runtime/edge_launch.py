"""``fedinfra edge start``'s SuperNode command: the site's warm launcher, app check included.

A device is a site of the consortium, so it runs only code the device itself approved,
exactly as ``fedinfra client start`` does (:func:`fedinfra.runtime.deploy.start_supernode`):
the SuperNode the edge loop supervises runs under :mod:`fedinfra.runtime.warm`, whose
forked ClientApp processes check every FAB with :mod:`fedinfra.runtime.appcheck` before
Flower installs or imports it - a release signed by a key pinned in the device's kit
(``[release] public_keys``) and approved in ``<kit>/releases/``. Anything else fails the
task before any of its code runs, is appended to the device's own
``<state>/site-audit.jsonl`` (digest and reason only), and the submitter gets one error
line. This is one verifier for sites and devices, not a second one.

Flower 1.41's ``--trusted-entities`` would accept only FABs the Flower Hub vouched for,
which an offline consortium cannot use (``../shared/notes/flower-trust.md``). Only what
the slim ``fedinfra[edge]`` install has is imported here (Flower, pyca/cryptography).
"""

from __future__ import annotations

from pathlib import Path

from fedinfra.config.device import DeviceProfile
from fedinfra.edge.kit import EdgeKit
from fedinfra.edge.runner import supernode_argv
from fedinfra.runtime.appcheck import pinned_keys
from fedinfra.runtime.warm import launcher_argv, write_secret

#: The per-start SuperExec secret in the device's state directory (0600, fresh each start).
SECRET_FILE = "superexec.secret"  # noqa: S105 - a file name, not a secret


def check_release_pin(kit: EdgeKit) -> None:
    """Refuse (one line, :class:`~fedinfra.errors.ConfigError`) a kit that pins no release key.

    Such a device would refuse every task; say so before anything connects.
    """
    pinned_keys(kit.path)


def edge_supernode_argv(
    profile: DeviceProfile,
    kit: EdgeKit,
    *,
    executable: str,
    manifest: Path | None,
    port: int,
) -> list[str]:
    """The device's ``flower-supernode`` command run under the verifying warm launcher.

    Writes a fresh SuperExec secret (HMAC key of the Runtime API's ``AcquireTask``, so no
    other local process takes the device's tasks) into the state directory on every call.
    """
    check_release_pin(kit)
    node = supernode_argv(profile, kit, executable=executable, manifest=manifest, port=port)
    state = profile.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = write_secret(state / SECRET_FILE)
    return launcher_argv(f"127.0.0.1:{port}", secret, node, threads=1, kit=kit.path.resolve(), state_dir=state)


__all__ = ["SECRET_FILE", "check_release_pin", "edge_supernode_argv"]
