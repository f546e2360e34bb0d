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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedinfra.task import DataSource, Table, Task, TaskData

#: The public task API, loaded on first use (PEP 562) so ``import fedinfra`` stays light.
_LAZY = {"Task": "fedinfra.task", "TaskData": "fedinfra.task", "DataSource": "fedinfra.task", "Table": "fedinfra.task"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedinfra' has no attribute {name!r}")


__all__ = ["DataSource", "Table", "Task", "TaskData", "__version__"]
