"""A job's task travels inside the signed Flower App, and sites import it only from there.

A deployed site runs only Flower Apps (FABs) whose digest a release key it pinned signed
and it approved (:mod:`fedinfra.crypto.release`, issue 12). A task is code, so it must be
part of that release: the job's ``[task] ref`` names a module, and whoever can submit a
run names the ref. If sites imported the ref from wherever Python finds it, a coordinator
could name a module the site never approved - a file left in the SuperNode's working
directory, an earlier app's folder, any installed package with import-time effects - and
the signature on the app would protect nothing (the confused deputy, Hardy 1988: the site
would lend its trust to code chosen by the party it does not trust).

So:

* :func:`build_task_app` (``fedinfra app build --job job.toml``) writes a Flower App
  directory: the stock manifest (``server/pyproject.toml``: fedinfra's ServerApp and
  ClientApp) plus the task's module or package copied from the job's folder, listed in
  ``fab-include``. Flower builds that directory reproducibly (fixed zip timestamps), so
  ``fedinfra app sign --app-dir`` signs exactly the FAB ``fedinfra run --app-dir``
  submits, and sites approve it like any release.
* :func:`check_app_holds_task` refuses at submission a job whose task is not in the app.
* :func:`confine_task` runs at the site before anything imports the task: the ref's
  top-level module must be a file of the approved app Flower installed for this run (its
  folder under ``$FLWR_HOME/apps/``, which Flower put on ``sys.path``) and must resolve
  there; otherwise the site refuses in one line and imports nothing. The built-in
  tabular task is part of the fedinfra the site installed itself and is always allowed.

Third-party packages. A task may import packages the site's fedinfra does not bring
(``[task] requires = ["pydicom>=2.4"]``, PEP 508). :func:`build_task_app` writes them into
the app's manifest (``[tool.fedinfra.task] requires`` and ``[project] dependencies``), so they
are part of what the release key signs and each site approves; the job's own list is not
read at sites. :func:`check_requirements` runs at the site with :func:`confine_task`, before
anything imports the task, and refuses in one line naming every requirement the site's
environment does not satisfy and the command that would. A site installs nothing on the
coordinator's word: which software runs at a site is its operator's decision (HIPAA
§164.308(a)(5)(ii)(B), protection from malicious software), and fedinfra starts Flower with
its runtime installation of app dependencies disabled (``uv sync`` from a package index on the
run's say-so; :mod:`fedinfra.runtime.env`), so the refusal says what to install and the
operator does it.

The task's ``[task.config]`` still travels in the job (data, not code): a coordinator can
change hyperparameters, as it can change ``rounds``; the site's policy and budget gates
bound what that can release.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedinfra.config import JobSpec
from fedinfra.errors import ConfigError

#: Written into a built task app so a rebuild may replace it (and nothing else).
MARKER = ".fedinfra-task-app"
#: The built-in task: fedinfra's own code, installed by the site, never shipped in an app.
BUILTIN_PREFIX = "fedinfra.task.builtin:"
_RESERVED = frozenset({"fedinfra", "flwr", "torch", "numpy", "opacus", "tenseal"})


def task_module(ref: str) -> str:
    """The top-level module a task ref imports first (``pkg`` of ``pkg.mod:Class``)."""
    return ref.partition(":")[0].split(".")[0]


def is_builtin(ref: str) -> bool:
    """Whether ``ref`` names fedinfra's built-in task (shipped with fedinfra itself)."""
    return ref.startswith(BUILTIN_PREFIX)


def _sources(folder: Path, top: str) -> list[tuple[str, Path]]:
    """The task's files under ``folder``: ``top.py`` or the ``top/`` package's ``.py`` files."""
    module, package = folder / f"{top}.py", folder / top
    if module.is_file() and package.is_dir():
        raise ConfigError(f"{folder}: both {module.name} and {top}/ exist; keep one so the import is unambiguous")
    if module.is_file():
        return [(module.name, module)]
    if (package / "__init__.py").is_file():
        files = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
        return [(p.relative_to(folder).as_posix(), p) for p in files]
    raise ConfigError(
        f"task module {top!r} not found next to the job: expected {module} or {package}/__init__.py"
    )


@dataclass(frozen=True)
class TaskApp:
    """A built task app: its folder, the task it carries and the files copied into it."""

    app_dir: Path
    ref: str
    files: tuple[str, ...]


def _manifest(base: Path, top: str, ref: str, files: list[str], version: str | None, requires: list[str]) -> str:
    import tomli_w

    path = base / "pyproject.toml"
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text())
        flwr_app = doc["tool"]["flwr"]["app"]
        project = doc["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not the fedinfra Flower App manifest; pass --base with server/") from exc
    # Flower: letters, digits and hyphens, at most 32 characters; the FAB digest tells apart two
    # tasks whose names agree that far.
    project["name"] = f"{project['name']}-{top.replace('_', '-').lower()}"[:32].rstrip("-")
    if version is not None:
        project["version"] = version
    project["description"] = f"fedinfra's ServerApp and ClientApp with the task {ref}"
    include = [p for p in flwr_app.get("fab-include", []) if (base / p.lstrip("/")).is_file()]
    flwr_app["fab-include"] = [*include, *(f"/{f}" for f in files)]
    deps = [d for d in project.get("dependencies", []) if isinstance(d, str)]
    project["dependencies"] = [*deps, *(r for r in requires if r not in deps)]
    doc.setdefault("tool", {}).setdefault("fedinfra", {})["task"] = {"ref": ref, "files": files, "requires": requires}
    return tomli_w.dumps(doc)


def build_task_app(job_path: Path, out: Path, *, base: Path, version: str | None = None) -> TaskApp:
    """Write the Flower App that carries ``job_path``'s task into ``out`` (see module doc)."""
    from fedinfra.config import load_job

    job = load_job(job_path)
    if job.task is None or is_builtin(job.task.ref):
        raise ConfigError(f"{job_path}: the job names no [task] of its own; the stock app ({base}) runs it")
    ref, top = job.task.ref, task_module(job.task.ref)
    if top in _RESERVED or top in sys.stdlib_module_names:
        raise ConfigError(f"{job_path}: task module {top!r} shadows an installed module; rename it")
    sources = _sources(job_path.resolve().parent, top)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ConfigError(f"{out}: exists and is not a task app built here; pass a new --out directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [rel for rel, _ in sources]
    (out / "pyproject.toml").write_text(_manifest(base, top, ref, names, version, list(job.task.requires)))
    for extra in ("README.md", "LICENSE"):
        if (base / extra).is_file():
            shutil.copyfile(base / extra, out / extra)
    for rel, src in sources:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)
    (out / MARKER).write_text(f"{ref}\n")
    return TaskApp(out, ref, tuple(names))


def _found_in(app_dir: Path, top: str) -> Path | None:
    for candidate in (app_dir / f"{top}.py", app_dir / top / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def check_app_holds_task(app_dir: Path, job: JobSpec) -> None:
    """Refuse to submit a job whose task module is not part of the app about to be submitted."""
    if job.task is None or is_builtin(job.task.ref):
        return
    top = task_module(job.task.ref)
    if _found_in(app_dir, top) is None:
        raise ConfigError(
            f"{app_dir}: the app does not carry task module {top!r} of task.ref {job.task.ref!r}; "
            "build it with 'fedinfra app build --job JOB --out DIR', sign it, have sites approve it, "
            "and submit with --app-dir DIR"
        )


def installed_app_dir() -> Path | None:
    """The folder of the app Flower installed and put on ``sys.path`` for this process, if any.

    Flower's ``run_clientapp`` installs the (verified) FAB under ``$FLWR_HOME/apps/`` and
    inserts that folder at the front of ``sys.path`` before it imports the ClientApp.
    """
    from flwr.supercore.utils import get_flwr_home

    apps = (get_flwr_home() / "apps").resolve()
    for entry in sys.path:
        if entry and Path(entry).resolve().parent == apps:
            return Path(entry).resolve()
    return None


def _within(path: str | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder)


def confine_task(job: JobSpec, app_dir: Path | None) -> None:
    """At a deployed site: refuse a task ref the approved app does not carry; import nothing.

    ``app_dir`` is :func:`installed_app_dir`. The check runs before the task is imported,
    so a refused ref executes no code: the top-level module must be a file of the app,
    must not already be loaded from elsewhere, and Python's finder must resolve it there.
    """
    if job.task is None or is_builtin(job.task.ref):
        return
    ref, top = job.task.ref, task_module(job.task.ref)
    where = "no app was installed for this run" if app_dir is None else f"it is not a file of {app_dir.name}"
    refused = ConfigError(
        f"task.ref {ref!r} refused: module {top!r} is not part of the approved app ({where}); "
        "the coordinator must submit the signed app built with 'fedinfra app build --job'"
    )
    if app_dir is None or _found_in(app_dir, top) is None:
        raise refused
    loaded = sys.modules.get(top)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
    else:
        spec = importlib.util.find_spec(top)  # a top-level name: runs no module code
        origin = None if spec is None else spec.origin
    if not _within(origin, app_dir):
        raise refused
    check_requirements(app_dir)


def app_requirements(app_dir: Path) -> list[str]:
    """The third-party requirements the app at ``app_dir`` declares for its task (its signed manifest)."""
    path = app_dir / "pyproject.toml"
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: the approved app's manifest is unreadable ({exc})") from exc
    raw = doc.get("tool", {}).get("fedinfra", {}).get("task", {}).get("requires", [])
    if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
        raise ConfigError(f"{path}: [tool.fedinfra.task] requires must be a list of requirement strings")
    return list(raw)


def unmet_requirements(requires: list[str]) -> list[str]:
    """Each requirement of ``requires`` this Python environment does not satisfy, with why."""
    from importlib import metadata

    from fedinfra.config.job import parse_requirement

    unmet: list[str] = []
    for text in requires:
        try:
            req = parse_requirement(text)  # the job's own check: the manifest may not have come from a job
        except ValueError as exc:
            unmet.append(f"{text!r} ({exc})")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue  # not meant for this platform or Python
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{text} (not installed)")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            unmet.append(f"{text} (installed {installed})")
    return unmet


def check_requirements(app_dir: Path) -> None:
    """At a deployed site: refuse, before the task is imported, an app whose requirements are unmet."""
    requires = app_requirements(app_dir)
    unmet = unmet_requirements(requires)
    if unmet:
        wanted = " ".join(f"'{r}'" for r in requires)
        raise ConfigError(
            f"the approved app {app_dir.name} needs packages this site's environment lacks: {', '.join(unmet)}; "
            f"the site's operator installs them (pip install {wanted}) and restarts the SuperNode"
        )


__all__ = [
    "MARKER",
    "TaskApp",
    "app_requirements",
    "build_task_app",
    "check_app_holds_task",
    "check_requirements",
    "confine_task",
    "installed_app_dir",
    "is_builtin",
    "task_module",
    "unmet_requirements",
]
