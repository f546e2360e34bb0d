"""The one exception tree of fedinfra.

Every error fedinfra raises on purpose derives from :class:`FedinfraError` and also
from the matching built-in, so callers may catch either::

    FedinfraError
    ├── ConfigError (ValueError)            bad configuration file, field or flag    -> exit 2
    ├── DataError (ValueError)              unreadable / unusable data set            -> exit 2
    ├── PolicyViolation (PermissionError)   a blocking policy finding (fail closed)   -> exit 1
    ├── PrivacyBudgetExceeded (RuntimeError) a spend would exceed a site's cap        -> exit 1
    ├── VerificationError (ValueError)      audit log, checkpoint, receipt or proof   -> exit 1
    ├── CryptoError (ValueError)            ciphertext / key rejected (no detail on
    │                                       which check failed, as Fernet's InvalidToken)
    ├── StoreError (OSError)                audit / ledger store unreadable            -> exit 2
    ├── RuntimeLaunchError (RuntimeError)   a Flower process could not start or died   -> exit 1
    ├── ResourceLimitExceeded (RuntimeError) an edge round broke its CPU/memory limit  -> exit 1
    └── MissingExtra (ImportError)          a feature of an extra that is not installed -> exit 2

Only :mod:`fedinfra.cli` maps these to exit codes; library code raises and never exits.
"""

from __future__ import annotations


class FedinfraError(Exception):
    """Base of every error fedinfra raises on purpose."""

    exit_code: int = 1


class ConfigError(FedinfraError, ValueError):
    """A configuration file, field or command-line flag is invalid."""

    exit_code = 2


class DataError(FedinfraError, ValueError):
    """A data set cannot be read or cannot be used as asked."""

    exit_code = 2


class PolicyViolation(FedinfraError, PermissionError):
    """A blocking policy rule failed; the action is denied (fail closed)."""

    exit_code = 1


class PrivacyBudgetExceeded(FedinfraError, RuntimeError):
    """A privacy spend would exceed a per-run or lifetime cap."""

    exit_code = 1


class VerificationError(FedinfraError, ValueError):
    """An audit entry, checkpoint, proof or receipt does not verify."""

    exit_code = 1


class CryptoError(FedinfraError, ValueError):
    """A ciphertext or key was rejected.

    The message never says which internal check failed, so the error cannot be used
    as an oracle (the same reasoning as Fernet's single ``InvalidToken``).
    """

    exit_code = 1


class StoreError(FedinfraError, OSError):
    """An audit or ledger store is missing, unreadable or not a fedinfra store."""

    exit_code = 2


class RuntimeLaunchError(FedinfraError, RuntimeError):
    """A Flower process (simulation, SuperLink, SuperNode) failed to start or died."""

    exit_code = 1


class ResourceLimitExceeded(FedinfraError, RuntimeError):
    """A round exceeded the device's CPU-time or memory limit and was stopped."""

    exit_code = 1


class MissingExtra(FedinfraError, ImportError):
    """A feature needs an optional extra (``pip install 'fedinfra[server]'``) that is not installed.

    Raised by :mod:`fedinfra._optional` instead of a ``ModuleNotFoundError`` traceback, e.g. when
    ``fedinfra demo`` runs on a device that installed only ``fedinfra[edge]``.
    """

    exit_code = 2
