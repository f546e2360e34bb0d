"""A deployed site's view of a task app, without a SuperNode: what Flower's ``run_clientapp`` does.

:func:`install_and_load` installs a FAB with Flower's ``install_from_fab`` into the given
``FLWR_HOME`` and loads its ClientApp with Flower's own loader, which puts the app's
folder on ``sys.path``; :func:`install_task` first builds the task app of a module.
"""

from __future__ import annotations

import hashlib
import sys
import tomllib
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from fedinfra.runtime.release import build_app_fab
from fedinfra.task.packaging import build_task_app

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "server"


def install_and_load(fab: bytes, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install ``fab`` under ``home`` and load its ClientApp as ``run_clientapp`` does."""
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn

    monkeypatch.setenv("FLWR_HOME", str(home))
    installed = install_from_fab(fab, skip_prompt=True)
    doc = tomllib.loads(zipfile.ZipFile(BytesIO(fab)).read("pyproject.toml").decode())
    fab_id = f"{doc['tool']['flwr']['app']['publisher']}/{doc['project']['name']}"
    load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
    load(fab_id, doc["project"]["version"], hashlib.sha256(fab).hexdigest())
    return Path(installed)


def task_fab(module: str, source: str, root: Path) -> bytes:
    """The FAB of the task app that carries ``module`` (written from ``source``)."""
    project = root / f"project-{module}"
    project.mkdir(parents=True, exist_ok=True)
    (project / f"{module}.py").write_text(source)
    (project / "job.toml").write_text(f'name = "t"\n[task]\nref = "{module}:Task"\n')
    built = build_task_app(project / "job.toml", root / f"app-{module}", base=SERVER)
    return build_app_fab(built.app_dir).content


def install_task(module: str, source: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Build, install and load the task app carrying ``module``; return the installed folder.

    ``sys.path`` is replaced by a copy for the test (``monkeypatch`` restores it), since
    Flower's loader inserts the app's folder into it.
    """
    monkeypatch.setattr(sys, "path", list(sys.path))
    return install_and_load(task_fab(module, source, root), root / "flwr-home", monkeypatch)
