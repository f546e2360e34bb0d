"""A job's task travels inside the signed Flower App; a deployed site imports it from there only.

The site side is exercised the way Flower's ``run_clientapp`` does it: install the FAB
with Flower's ``install_from_fab`` into a private ``FLWR_HOME`` and load the ClientApp
component with Flower's own loader (which puts the app's folder on ``sys.path``).
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest

from fedinfra.config import JobSpec, load_job
from fedinfra.crypto import _sign
from fedinfra.crypto.release import check_fab, sign_release
from fedinfra.errors import ConfigError
from fedinfra.runtime.release import build_app_fab
from fedinfra.runtime.submit import submit
from fedinfra.task import load_task
from fedinfra.task.packaging import (
    MARKER,
    build_task_app,
    check_app_holds_task,
    confine_task,
    installed_app_dir,
)
from tests.unit.task_app_site import install_and_load

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "server"

TASK = '''
from torch import nn

import fedinfra


class TinyTask(fedinfra.Task):
    kind = "binary"

    def build_model(self) -> nn.Module:
        return nn.Linear(3, 2)
'''

# A module with an import-time effect, planted where the site's Python would find it
# (the SuperNode runs in the site's folder): naming it must not run it.
PLANTED = '''
from pathlib import Path

Path({marker!r}).write_text("imported")

import fedinfra


class PlantedTask(fedinfra.Task):
    pass
'''


def _job(folder: Path, ref: str = "tiny_task:TinyTask") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.toml"
    path.write_text(f'name = "tiny"\n[task]\nref = "{ref}"\n')
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    job = _job(tmp_path / "project")
    (job.parent / "tiny_task.py").write_text(TASK)
    return job


@pytest.fixture
def clean_modules() -> Iterator[None]:
    before = set(sys.modules)
    path = list(sys.path)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in {"tiny_task", "planted_task", "pkg_task"}:
            del sys.modules[name]
    sys.path[:] = path


def test_the_built_app_carries_the_task_and_builds_reproducibly(project: Path, tmp_path: Path) -> None:
    built = build_task_app(project, tmp_path / "app", base=SERVER)
    first, second = build_app_fab(built.app_dir), build_app_fab(built.app_dir)

    names = zipfile.ZipFile(BytesIO(first.content)).namelist()
    assert first.content == second.content
    assert "tiny_task.py" in names
    assert MARKER not in names  # only the app's files travel
    assert first.app == "fedinfra/fedinfra-app-tiny-task"
    # A rebuild from the same files is byte-identical: the record signed once covers what runs.
    rebuilt = build_task_app(project, tmp_path / "app", base=SERVER)
    assert build_app_fab(rebuilt.app_dir).content == first.content
    key, public = _sign.new_signing_key()
    record = sign_release(key, first.content, app=first.app, version=first.version, signed_at=1)
    assert check_fab(second.content, [record], [public])["app"] == first.app


def test_a_task_package_travels_with_every_module_but_no_bytecode(tmp_path: Path) -> None:
    job = _job(tmp_path / "project", ref="pkg_task.model:TinyTask")
    pkg = job.parent / "pkg_task"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(TASK)
    (pkg / "__pycache__" / "model.cpython-311.py").write_text("stale")

    built = build_task_app(job, tmp_path / "app", base=SERVER)

    names = zipfile.ZipFile(BytesIO(build_app_fab(built.app_dir).content)).namelist()
    assert {"pkg_task/__init__.py", "pkg_task/model.py"} <= set(names)
    assert not any("__pycache__" in n for n in names)


@pytest.mark.parametrize(
    ("ref", "files", "needle"),
    [
        ("absent_task:Task", {}, "not found next to the job"),
        ("json:JSONDecoder", {}, "shadows an installed module"),
        ("twice:Task", {"twice.py": TASK, "twice/__init__.py": ""}, "keep one"),
    ],
)
def test_a_task_that_cannot_be_packed_is_refused_in_one_line(
    tmp_path: Path, ref: str, files: dict[str, str], needle: str
) -> None:
    job = _job(tmp_path / "project", ref=ref)
    for rel, text in files.items():
        (job.parent / rel).parent.mkdir(parents=True, exist_ok=True)
        (job.parent / rel).write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        build_task_app(job, tmp_path / "app", base=SERVER)
    assert "\n" not in str(info.value)


def test_a_folder_that_is_not_a_built_app_is_never_replaced(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    with pytest.raises(ConfigError, match="not a task app built here"):
        build_task_app(project, out, base=SERVER)
    assert (out / "notes.md").read_text() == "mine"


def test_the_coordinator_refuses_to_submit_a_task_its_app_does_not_carry(project: Path, tmp_path: Path) -> None:
    job = load_job(project)
    with pytest.raises(ConfigError, match="does not carry task module 'tiny_task'"):
        submit(job, run_id="r1", runs_dir=tmp_path / "runs", app_dir=SERVER, flwr_home=tmp_path / "h", kit=tmp_path)
    check_app_holds_task(build_task_app(project, tmp_path / "app", base=SERVER).app_dir, job)
    check_app_holds_task(SERVER, JobSpec())  # the built-in task needs nothing in the app


@pytest.mark.usefixtures("clean_modules")
def test_a_site_imports_the_task_from_the_installed_approved_app(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fab = build_app_fab(build_task_app(project, tmp_path / "app", base=SERVER).app_dir).content
    shutil.rmtree(project.parent)  # the job's folder is not at the site
    installed = install_and_load(fab, tmp_path / "flwr-home", monkeypatch)
    job = JobSpec.model_validate({"name": "tiny", "task": {"ref": "tiny_task:TinyTask"}})

    assert installed_app_dir() == installed.resolve()
    confine_task(job, installed_app_dir())
    task = load_task("tiny_task:TinyTask")
    assert Path(sys.modules["tiny_task"].__file__ or "").resolve().parent == installed.resolve()
    assert task.kind == "binary"


@pytest.mark.usefixtures("clean_modules")
def test_a_task_ref_outside_the_approved_app_is_refused_before_it_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: the coordinator names a module the site has on its path but never approved."""
    from fedinfra.runtime.loopback import write_demo_sites
    from fedinfra.site.context import site_context

    manifest = write_demo_sites(JobSpec(), ["site0"], tmp_path / "sites")["site0"]
    marker = tmp_path / "IMPORTED"
    planted = tmp_path / "site-dir"
    planted.mkdir()
    (planted / "planted_task.py").write_text(PLANTED.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(planted))
    install_and_load(build_app_fab(SERVER).content, tmp_path / "flwr-home", monkeypatch)  # the stock app
    job = JobSpec.model_validate({
        "name": "x", "task": {"ref": "planted_task:PlantedTask"}, "policy_packs": ["gdpr", "hipaa"],
        "sites": {"count": 3, "min_sites": 3}, "secure_aggregation": {"mode": "bfv"},
        "privacy": {"mechanism": "dp-sgd", "epsilon": 4.0, "noise_multiplier": 2.0, "accountant": "rdp"},
    })

    with pytest.raises(ConfigError) as info:
        site_context({"site-manifest": str(manifest), "state-dir": str(tmp_path / "state")}, job)

    message = str(info.value)
    assert "planted_task" in message
    assert "not part of the approved app" in message
    assert "\n" not in message
    assert not marker.exists()
    assert "planted_task" not in sys.modules


@pytest.mark.usefixtures("clean_modules")
def test_a_module_named_like_the_apps_but_loaded_from_elsewhere_is_refused(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fab = build_app_fab(build_task_app(project, tmp_path / "app", base=SERVER).app_dir).content
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tiny_task.py").write_text(TASK)
    monkeypatch.syspath_prepend(str(elsewhere))
    import tiny_task  # noqa: F401 - loaded before the app, from another folder

    installed = install_and_load(fab, tmp_path / "flwr-home", monkeypatch)
    job = JobSpec.model_validate({"name": "tiny", "task": {"ref": "tiny_task:TinyTask"}})
    with pytest.raises(ConfigError, match="not part of the approved app"):
        confine_task(job, installed)
    with pytest.raises(ConfigError, match="no app was installed"):
        confine_task(job, None)
    confine_task(JobSpec(), None)  # the built-in task is the site's own fedinfra


REQUIRES = ["numpy>=1.0", "surely-not-a-package-fedinfra>=1", "torch<1", "winonly-pkg ; sys_platform == 'win32'"]


@pytest.mark.usefixtures("clean_modules")
def test_a_tasks_requirements_are_signed_into_the_app_and_unmet_ones_refused_before_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's ``[task] requires`` goes into the app's manifest (what the release key signs); the
    site reads it from the installed app, not from the job, and refuses before the task is imported."""
    import json
    import tomllib

    from fedinfra.task.packaging import app_requirements, check_requirements

    job_path = _job(tmp_path / "project")
    job_path.write_text(job_path.read_text() + "requires = " + json.dumps(REQUIRES) + "\n")  # JSON strings are TOML
    (job_path.parent / "tiny_task.py").write_text(TASK)
    built = build_task_app(job_path, tmp_path / "app", base=SERVER)
    fab = build_app_fab(built.app_dir).content
    manifest = tomllib.loads(zipfile.ZipFile(BytesIO(fab)).read("pyproject.toml").decode())
    normal = [str(load_job(job_path).task.requires[i]) for i in range(len(REQUIRES))]  # type: ignore[union-attr]
    assert manifest["tool"]["fedinfra"]["task"]["requires"] == normal
    assert set(normal) <= set(manifest["project"]["dependencies"])
    assert manifest["project"]["dependencies"][0].startswith("fedinfra")  # the stock entry kept first

    installed = install_and_load(fab, tmp_path / "flwr-home", monkeypatch)
    assert app_requirements(installed) == normal
    bare = JobSpec.model_validate({"name": "tiny", "task": {"ref": "tiny_task:TinyTask"}})  # the job says nothing
    with pytest.raises(ConfigError) as info:
        confine_task(bare, installed_app_dir())
    message = str(info.value)
    assert "surely-not-a-package-fedinfra>=1 (not installed)" in message
    assert "torch<1 (installed 2.13.0" in message  # the local version label (+cpu) follows
    assert "numpy" not in message.split("lacks:")[1].split(";")[0]  # met
    assert "winonly" not in message.split("lacks:")[1].split(";")[0]  # not for this platform
    assert "pip install" in message
    assert "\n" not in message
    assert "tiny_task" not in sys.modules  # nothing of the task ran

    # Met requirements pass (and markers for other platforms are skipped).
    met = tmp_path / "met-app"
    met.mkdir()
    met_list = json.dumps([REQUIRES[0], REQUIRES[3]])
    (met / "pyproject.toml").write_text(f"[tool.fedinfra.task]\nrequires = {met_list}\n")
    check_requirements(met)


@pytest.mark.parametrize(
    ("requirement", "error"),
    [
        ("pydicom @ https://example.org/pydicom.whl", "direct URL"),
        ("not a requirement!!", "PEP 508"),
        ("x" * 201, "200 characters"),
    ],
)
def test_a_requirement_that_names_no_package_version_is_refused_in_the_job(requirement: str, error: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        JobSpec.model_validate({"name": "t", "task": {"ref": "m:T", "requires": [requirement]}})
