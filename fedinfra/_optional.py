"""Optional dependencies: which extra brings a module, and a one-line error when it is missing.

``pip install fedinfra`` (and ``fedinfra[edge]``, which adds nothing today) installs what every
role runs: a site's or an edge device's SuperNode and ClientApp. The coordinator, Flower's
simulation engine, the bundled data sets, compliance reports, the PostgreSQL audit store and
Parquet tables need the ``server`` extra. Code that needs a module of an extra imports it
lazily, inside :func:`extra_imports` (or calls :func:`require_extra` before starting), so an
edge install gets ``MissingExtra: fedinfra demo needs the 'server' extra: pip install
'fedinfra[server]'`` (exit 2) instead of a traceback.

:data:`EXTRAS` lists *import* names; ``pyproject.toml`` lists the distributions
(``tests/unit/test_packaging.py`` keeps the two in step).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Final

from fedinfra.errors import MissingExtra

#: Extra -> the top-level modules it brings that the base install does not promise.
EXTRAS: Final[dict[str, tuple[str, ...]]] = {
    "server": ("ray", "sklearn", "scipy", "jinja2", "matplotlib", "weasyprint", "psycopg", "pyarrow"),
    "edge": (),
    "imaging": ("PIL", "pydicom"),
    "tracking": ("mlflow", "tensorboardX"),
    "onnx": ("onnx", "onnxscript"),
}


def install_hint(feature: str, extra: str = "server") -> str:
    """The one-line message: ``<feature> needs the '<extra>' extra: pip install 'fedinfra[<extra>]'``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {sorted(EXTRAS)}")
    return f"{feature} needs the '{extra}' extra: pip install 'fedinfra[{extra}]'"


def missing_modules(extra: str = "server", modules: Iterable[str] | None = None) -> list[str]:
    """The modules of ``extra`` (or just ``modules``) that cannot be found; nothing is imported."""
    names = EXTRAS[extra] if modules is None else tuple(modules)
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_extra(feature: str, extra: str = "server", *, modules: Iterable[str] | None = None) -> None:
    """Raise :class:`~fedinfra.errors.MissingExtra` unless every module of ``extra`` is installed.

    Called first by commands that only make sense with the extra (``fedinfra demo``,
    ``fedinfra server start``), so they fail before doing any work.
    """
    if missing_modules(extra, modules):
        raise MissingExtra(install_hint(feature, extra))


@contextmanager
def extra_imports(feature: str, extra: str = "server") -> Iterator[None]:
    """Turn a ``ModuleNotFoundError`` for a module of ``extra`` into :class:`MissingExtra`.

    Any other missing module (a broken install, a dependency's own dependency) is re-raised
    unchanged: only the modules the extra brings are the user's to install.

    >>> with extra_imports("reading Parquet tables"):
    ...     import json
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in EXTRAS[extra]:
            raise
        raise MissingExtra(install_hint(feature, extra)) from exc
