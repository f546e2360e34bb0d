"""``fedinfra compliance report``: exit codes and one-line errors, and the published schema."""

from __future__ import annotations

import json
import shutil
import sqlite3
from importlib import resources
from pathlib import Path

import pytest
from test_report import RUN, build_store
from typer.testing import CliRunner

from fedinfra.cli import build_app
from fedinfra.report.model import report_schema


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("cli") / "audit.db")


@pytest.fixture
def store(master: Path, tmp_path: Path) -> Path:
    target = tmp_path / "audit.db"
    shutil.copy(master, target)
    return target


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app(), ["compliance", "report", *args])
    return result.exit_code, result.stdout, result.stderr


def test_report_writes_the_requested_formats(store: Path, tmp_path: Path) -> None:
    code, out, _ = _invoke(
        "--store", str(store), "--run", RUN, "--format", "json,html", "--out", str(tmp_path / "o"), "--output", "json"
    )
    assert code == 0
    doc = json.loads(out)
    assert sorted(doc["paths"]) == ["html", "json"]
    assert Path(doc["paths"]["html"]).read_text().startswith("<!DOCTYPE html>")


def test_unknown_run_is_one_line_and_exit_2(store: Path, tmp_path: Path) -> None:
    code, _, err = _invoke("--store", str(store), "--run", "missing-run", "--out", str(tmp_path))
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "missing-run" in err


def test_tampered_store_exits_1_without_writing(store: Path, tmp_path: Path) -> None:
    with sqlite3.connect(store) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("DELETE FROM audit_entries WHERE seq = 4")
    out = tmp_path / "o"
    code, _, err = _invoke("--store", str(store), "--run", RUN, "--out", str(out))
    assert code == 1
    assert "entry 4" in err
    assert not out.exists()


def test_missing_store_and_missing_key_exit_2(store: Path, tmp_path: Path) -> None:
    code_store, _, _ = _invoke("--store", str(tmp_path / "nope.db"), "--run", RUN)
    code_key, _, err = _invoke("--store", str(store), "--run", RUN, "--public-key", str(tmp_path / "nope.vkey"))
    assert (code_store, code_key) == (2, 2)
    assert "--public-key" in err


def test_unknown_format_exits_2(store: Path) -> None:
    code, _, err = _invoke("--store", str(store), "--run", RUN, "--format", "html,docx")
    assert code == 2
    assert "docx" in err


def test_published_schema_matches_the_report_model() -> None:
    text = (resources.files("fedinfra._compliance") / "report.schema.json").read_text(encoding="utf-8")
    assert json.loads(text) == report_schema(), "regenerate compliance/report.schema.json from report_schema()"
