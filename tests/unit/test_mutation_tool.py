"""bench/mutation.py's arithmetic: what counts as detected, what the record keeps (issue 20).

The scores in bench/results/mutation.json are only as honest as this summary: a timeout
counts only when [loops] explains it, an equivalent survivor only in the second score, and a
re-summary of a cache that holds no result must not overwrite a measured entry with zeros.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "bench" / "mutation.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_tool"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    m = _tool()
    listed = tmp_path / "equivalent.toml"
    listed.write_text(
        '[equivalent]\n"pkg.mod.x_f__mutmut_2" = "same value"\n[loops]\n"pkg.mod.x_f__mutmut_4" = "never exits"\n'
    )
    monkeypatch.setattr(m, "EQUIVALENT", listed)
    monkeypatch.setattr(m, "RESULTS", tmp_path / "mutation.json")
    return m


STATUSES = {
    "pkg.mod.x_f__mutmut_1": "killed",
    "pkg.mod.x_f__mutmut_2": "survived",  # listed equivalent
    "pkg.mod.x_f__mutmut_3": "survived",  # not listed
    "pkg.mod.x_f__mutmut_4": "timeout",  # listed as a loop
    "pkg.mod.x_f__mutmut_5": "timeout",  # only slow
    "pkg.mod.x_f__mutmut_6": "not checked",
    "pkg.other.x_g__mutmut_1": "killed",
}


def test_a_timeout_counts_only_when_listed_as_a_loop_and_an_equivalent_only_in_the_second_score(tool) -> None:
    entry = tool.summarise(STATUSES, ["pkg.mod"], 1.0, 1)["modules"]["pkg.mod"]

    assert (entry["mutants"], entry["killed"], entry["survived"], entry["timeouts"]) == (6, 1, 2, 2)
    assert entry["not_checked"] == 1
    assert entry["timeouts_looping"] == 1
    assert entry["score"] == round(2 / 5, 4)  # killed + the listed loop, over the 5 tested
    assert entry["score_counting_equivalent_as_killed"] == round(3 / 5, 4)
    assert entry["survivors"] == {"pkg.mod.x_f__mutmut_2": "same value", "pkg.mod.x_f__mutmut_3": "not yet analysed"}
    assert entry["timed_out"]["pkg.mod.x_f__mutmut_5"] == "not analysed: a slow mutant is not killed"


def test_report_only_over_a_cache_without_results_keeps_the_measured_entry(tool, monkeypatch) -> None:
    measured = {"modules": {"pkg.mod": {"score": 0.95, "run": {"command": "as run"}}}, "name": "mutation"}
    tool.RESULTS.write_text(json.dumps(measured))
    monkeypatch.setattr(tool, "results", lambda: {"pkg.mod.x_f__mutmut_1": "not checked"})

    assert tool.main(["pkg.mod", "--report-only"]) == 0

    assert json.loads(tool.RESULTS.read_text())["modules"]["pkg.mod"] == measured["modules"]["pkg.mod"]


def test_the_recorded_command_carries_the_thread_limits_and_nice_level(tool, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(tool.os, "nice", lambda inc: 15)

    assert tool._launch_prefix() == ["OMP_NUM_THREADS=1", "nice", "-n", "15"]
    monkeypatch.setattr(tool.os, "nice", lambda inc: 0)
    assert tool._launch_prefix() == ["OMP_NUM_THREADS=1"]
