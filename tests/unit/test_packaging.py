"""The built wheel ships the run-time files of ``compliance/`` as ``fedinfra/_compliance``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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
