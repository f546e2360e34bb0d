"""The built wheel ships the run-time files of ``compliance/`` as ``fedinfra/_compliance``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPLIANCE = ROOT / "compliance"
# Not part of the source a wheel is built from: local state, caches, previous builds.
_SKIP = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "results"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build a wheel from a copy of the source tree (the checkout is left untouched)."""
    src = tmp_path_factory.mktemp("src") / "fedinfra-src"
    out = tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, src, symlinks=True, ignore=_SKIP)
    # --no-isolation: build with the installed setuptools instead of fetching a fresh
    # build environment from the network.
    cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", str(out)]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = out.glob("fedinfra-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _compliance_files() -> list[str]:
    return sorted(
        p.relative_to(COMPLIANCE).as_posix()
        for p in COMPLIANCE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def test_compliance_folder_is_linked_into_the_package() -> None:
    link = ROOT / "fedinfra" / "_compliance"

    assert link.resolve() == COMPLIANCE.resolve()
    assert (COMPLIANCE / "__init__.py").is_file()


def test_wheel_holds_the_compliance_package(wheel_names: set[str]) -> None:
    assert "fedinfra/_compliance/__init__.py" in wheel_names


def test_every_compliance_file_is_in_the_wheel(wheel_names: set[str]) -> None:
    files = _compliance_files()

    missing = [f for f in files if f"fedinfra/_compliance/{f}" not in wheel_names]

    assert files
    assert missing == []


def test_policy_packs_in_the_source_tree_are_in_the_wheel(wheel_names: set[str]) -> None:
    packs = sorted(p.name for p in (COMPLIANCE / "packs").glob("*.toml"))

    missing = [p for p in packs if f"fedinfra/_compliance/packs/{p}" not in wheel_names]

    assert missing == []


def test_wheel_ships_the_package_and_its_type_marker(wheel_names: set[str]) -> None:
    assert "fedinfra/__init__.py" in wheel_names
    assert "fedinfra/py.typed" in wheel_names
    assert "fedinfra/cli/__init__.py" in wheel_names


def test_wheel_ships_no_tests_benchmarks_or_caches(wheel_names: set[str]) -> None:
    offending = [n for n in wheel_names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]

    assert offending == []


def test_wheel_declares_the_console_script(wheel: Path, wheel_names: set[str]) -> None:
    (entry_points,) = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()

    assert "fedinfra = fedinfra.cli:main" in text


# --- extras: the base install is what every role runs; the server stack is an extra ---------

# Distribution -> the import name fedinfra/_optional.py knows it by.
_IMPORT_NAME = {"flwr[simulation]": "ray", "scikit-learn": "sklearn", "psycopg[binary]": "psycopg"}


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> list[str]:
    """``"psycopg[binary]>=3.1,<4"`` -> ``"psycopg[binary]"``."""
    return [re.split(r"[<>=!~; ]", r, maxsplit=1)[0] for r in requirements]


def test_base_install_holds_no_server_only_distribution() -> None:
    project = _pyproject()["project"]
    base = {n.lower() for n in _names(project["dependencies"])}
    server = {n.lower() for n in _names(project["optional-dependencies"]["server"])}

    assert base & server == set()
    assert "flwr" in base  # the SuperNode and ClientApp, without Ray
    assert "torch==2.13.0" in project["dependencies"]  # exact: a range pulls a multi-GB CUDA build


def test_all_extra_is_server_plus_edge_plus_imaging_plus_tracking_and_edge_is_kept() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]

    assert extras["all"] == ["fedinfra[server,edge,imaging,tracking,onnx]"]
    assert "edge" in extras  # edge/install.sh installs fedinfra[edge]


def test_optional_module_map_matches_the_server_extra() -> None:
    from fedinfra._optional import EXTRAS

    server = _names(_pyproject()["project"]["optional-dependencies"]["server"])
    modules = {_IMPORT_NAME.get(n, n.lower()) for n in server}

    assert modules == set(EXTRAS["server"])


def test_optional_module_map_matches_the_imaging_extra() -> None:
    from fedinfra._optional import EXTRAS

    imaging = _names(_pyproject()["project"]["optional-dependencies"]["imaging"])

    assert {"PIL" if n == "pillow" else n for n in imaging} == set(EXTRAS["imaging"])


def test_optional_module_map_matches_the_tracking_extra() -> None:
    from fedinfra._optional import EXTRAS

    tracking = _names(_pyproject()["project"]["optional-dependencies"]["tracking"])
    modules = {{"mlflow-skinny": "mlflow"}.get(n, n) for n in tracking}

    assert modules == set(EXTRAS["tracking"])


def test_optional_module_map_matches_the_onnx_extra() -> None:
    from fedinfra._optional import EXTRAS

    assert set(_names(_pyproject()["project"]["optional-dependencies"]["onnx"])) == set(EXTRAS["onnx"])


def test_makefile_installs_every_extra() -> None:
    assert "pip install -q -e '.[all,dev]'" in (ROOT / "Makefile").read_text()


def test_a_missing_server_module_is_a_one_line_missing_extra_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedinfra._optional import extra_imports
    from fedinfra.errors import MissingExtra

    monkeypatch.setitem(sys.modules, "weasyprint", None)  # how Python blocks an import: as if absent

    with pytest.raises(MissingExtra) as info, extra_imports("the PDF compliance report"):
        import weasyprint  # noqa: F401

    assert str(info.value) == "the PDF compliance report needs the 'server' extra: pip install 'fedinfra[server]'"
    assert info.value.exit_code == 2
    assert isinstance(info.value, ImportError)


def test_a_missing_module_outside_the_extra_is_not_disguised() -> None:
    from fedinfra._optional import extra_imports

    with pytest.raises(ModuleNotFoundError), extra_imports("anything"):
        import fedinfra_no_such_module  # type: ignore[import-not-found]  # noqa: F401


def test_require_extra_names_the_command_and_the_extra() -> None:
    from fedinfra._optional import missing_modules, require_extra
    from fedinfra.errors import MissingExtra

    require_extra("fedinfra demo")  # the full install of this venv has the server extra
    with pytest.raises(MissingExtra) as info:
        require_extra("fedinfra demo", modules=("ray", "fedinfra_no_such_module"))
    assert str(info.value) == "fedinfra demo needs the 'server' extra: pip install 'fedinfra[server]'"
    assert missing_modules(modules=("ray", "fedinfra_no_such_module")) == ["fedinfra_no_such_module"]
