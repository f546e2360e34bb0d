"""Hardened environments for every Flower / Ray process fedinfra starts.

Nothing phones home: Flower's telemetry and update check are switched off, Flower may not
install dependencies at run time, and Ray is kept on loopback. Processes inherit these
variables, so setting them before Flower or Ray is imported covers the whole tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path

LOOPBACK = "127.0.0.1"

#: Variables forced on in every process fedinfra starts.
HARDENED_ENV: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "GRPC_VERBOSITY": "ERROR",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def harden(env: MutableMapping[str, str] | None = None, *, flwr_home: Path | None = None) -> MutableMapping[str, str]:
    """Apply :data:`HARDENED_ENV` to ``env`` (default: this process) and return it.

    ``flwr_home`` points ``FLWR_HOME`` at a private directory: even ``flwr --help`` writes
    there, and it must not be the user's home in tests.
    """
    target: MutableMapping[str, str] = os.environ if env is None else env
    target.update(HARDENED_ENV)
    if flwr_home is not None:
        private_dir(flwr_home)
        target["FLWR_HOME"] = str(flwr_home)
    return target


#: Process umask of the long-running commands: files 0600, directories 0700.
PRIVATE_UMASK = 0o077


def private_umask() -> int:
    """Set the process umask to 0o077 (files 0600, directories 0700); return the old one.

    ``server start``, ``client start`` and ``edge start`` write databases (the SuperLink's
    state, privacy ledgers), keys, model copies and logs; run by hand, outside systemd's
    ``UMask=``, they would be world-readable under the usual 022. Every child (SuperLink,
    SuperNode, ServerApp, ClientApp) inherits the umask (POSIX ``umask(2)``), so the files
    Flower creates are covered too. Least privilege: HIPAA 45 CFR 164.312(a)(1).
    """
    return os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700 and tighten it if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def hardened_env(*, flwr_home: Path | None = None) -> dict[str, str]:
    """A copy of this process's environment, hardened, for a child process."""
    env = dict(os.environ)
    harden(env, flwr_home=flwr_home)
    return env


#: Ray's dashboard process (started even with ``include_dashboard=False``, to run only its
#: usage-stats module) asks cloud metadata endpoints (169.254.169.254) which cloud it is on,
#: *whether or not usage stats are enabled* - unless it finds an autoscaler config at
#: ``~/ray_bootstrap_config.yaml``. This one names a local provider, so it asks nobody.
RAY_BOOTSTRAP = "# fedinfra: a local cluster; stops Ray probing cloud metadata endpoints\nprovider:\n  type: local\n"


@contextmanager
def ray_home(directory: Path) -> Iterator[Path]:
    """Run Ray's processes with ``HOME=directory`` holding a local bootstrap config.

    Processes started inside the block inherit it; the caller's ``HOME`` is restored after.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ray_bootstrap_config.yaml").write_text(RAY_BOOTSTRAP)
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(directory)
    try:
        yield directory
    finally:
        if old is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old
