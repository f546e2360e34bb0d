"""fedinfra: privacy-preserving federated learning.

Sites train one model together without moving their data; the coordinator aggregates
their updates under differential privacy and homomorphic encryption, writes every step
to a tamper-evident audit log and enforces GDPR/HIPAA policy gates.

Importing this package stays light: torch, ray and tenseal load only when used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedinfra")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
