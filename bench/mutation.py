"""Mutation testing of the modules that protect people (``make mutate``; CONTRIBUTING.md).

Runs mutmut (configured in ``pyproject.toml`` ``[tool.mutmut]``: which modules, which unit
and property tests) on the modules named on the command line, or on all of them, in
parallel (``--jobs``), and merges per-module counts into ``bench/results/mutation.json``:
mutants, killed, survived, timeouts, score = killed / (mutants - skipped - not checked); a
mutant no selected test reaches ("no tests") counts as not killed, and so does a timeout
unless ``[loops]`` of ``bench/mutation_equivalent.toml`` says why that mutant never
terminates (a mutant that is only slow must be killed by a test, not by the clock). mutmut keeps its
results in ``mutants/`` and re-tests only mutants whose function changed, so a second run
is a cache hit. Survivors are listed by name; a survivor that is equivalent to the original
gets its reason in ``bench/mutation_equivalent.toml``.

    python bench/mutation.py fedinfra.privacy.ledger fedinfra.site.receipts --jobs 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "mutation.json"
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.toml"
_LINE = re.compile(r"^\s*(?P<name>[\w.]+__mutmut_\d+): (?P<status>[\w ]+?)\s*$")


def modules_from_config() -> list[str]:
    """Dotted module prefixes of ``[tool.mutmut] only_mutate``."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return [p.removesuffix(".py").removesuffix("/*").replace("/", ".") for p in conf["only_mutate"]]


def test_selection() -> list[str]:
    """The test files mutmut runs (``[tool.mutmut] pytest_add_cli_args_test_selection``)."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(conf.get("pytest_add_cli_args_test_selection", []))


def module_of(mutant: str) -> str:
    """``fedinfra.privacy.ledger.x_reserve__mutmut_3`` -> ``fedinfra.privacy.ledger``."""
    return mutant.split("__mutmut_")[0].rsplit(".", 1)[0]


def _launch_prefix() -> list[str]:
    """How this process was started, as a shell prefix: the thread limits and ``nice`` level
    (``OMP_NUM_THREADS=1 ... nice -n 15``), so the recorded command can be run again as it was."""
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ]
    level = os.nice(0)
    return env + (["nice", "-n", str(level)] if level > 0 else [])


def run(modules: list[str], jobs: int) -> float:
    """Run mutmut on ``modules``; return the wall time in seconds."""
    start = time.monotonic()
    patterns = [f"{m}.*" for m in modules]
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *patterns]
    # mutmut forks each mutant's test run from a parent that already ran torch (the stats run); torch's
    # OpenMP thread pool is not fork-safe, and with more than one thread every forked child that runs a
    # torch op hangs until the timeout (seen on privacy.dp_sgd_fused). One thread per process avoids it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=ROOT, check=False, env=env)
    return time.monotonic() - start


def results() -> dict[str, str]:
    """Every mutant's status from ``mutmut results --all true``."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        if m := _LINE.match(line):
            found[m["name"]] = m["status"].strip()
    return found


def summarise(statuses: dict[str, str], modules: list[str], seconds: float, jobs: int) -> dict[str, object]:
    """Per-module counts and survivors (with their equivalence reasons where known)."""
    listed = tomllib.loads(EQUIVALENT.read_text(encoding="utf-8")) if EQUIVALENT.exists() else {}
    reasons, loop_reasons = listed.get("equivalent", {}), listed.get("loops", {})
    per: dict[str, object] = {}
    for module in modules:
        mine = {k: v for k, v in statuses.items() if module_of(k) == module or module_of(k).startswith(module + ".")}
        if not mine:
            continue
        counts = Counter(mine.values())
        killed = counts["killed"]
        survived = [k for k, v in mine.items() if v == "survived"]
        pending = counts["not checked"]  # not run yet (an interrupted run): outside the score
        skipped = counts["skipped"]
        tested = len(mine) - skipped - pending
        equivalent = [k for k in survived if k in reasons]
        timeouts = sorted(k for k, v in mine.items() if v == "timeout")
        loops = [k for k in timeouts if k in loop_reasons]  # verified never to terminate: detected
        detected = killed + len(loops)
        per[module] = {
            "mutants": len(mine),
            "killed": killed,
            "survived": len(survived),
            "timeouts": counts["timeout"],
            "suspicious": counts["suspicious"],
            "no_tests": counts["no tests"],
            "skipped": skipped,
            "not_checked": pending,
            "timeouts_looping": len(loops),
            "score": round(detected / tested, 4) if tested else None,
            "score_counting_equivalent_as_killed": round((detected + len(equivalent)) / tested, 4) if tested else None,
            "survivors": {k: reasons.get(k, "not yet analysed") for k in sorted(survived)},
            "timed_out": {k: loop_reasons.get(k, "not analysed: a slow mutant is not killed") for k in timeouts},
        }
    return {"modules": per, "seconds": round(seconds, 1), "jobs": jobs}


def main(argv: list[str] | None = None) -> int:
    """Run, summarise, merge into bench/results/mutation.json and print the scores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("modules", nargs="*", help="dotted modules (default: every module in [tool.mutmut])")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel")
    parser.add_argument("--report-only", action="store_true", help="summarise mutmut's cached results, run nothing")
    args = parser.parse_args(argv)
    modules = args.modules or modules_from_config()
    seconds = 0.0 if args.report_only else run(modules, args.jobs)
    summary = summarise(results(), modules, seconds, args.jobs)
    doc: dict[str, Any] = {"name": "mutation", "modules": {}}
    if RESULTS.exists():
        doc = json.loads(RESULTS.read_text(encoding="utf-8"))
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    run_info: dict[str, object] = {
        "command": " ".join(
            [*_launch_prefix(), "python bench/mutation.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "seconds": summary["seconds"],
        "jobs": args.jobs,
        "at": stamp,
        "test_selection": test_selection(),
    }
    for module, entry in list(summary["modules"].items()):  # type: ignore[attr-defined]
        before = doc["modules"].get(module, {})
        if args.report_only and entry["score"] is None:  # mutmut's cache holds no result for it: keep the record
            print(f"{module}: no tested mutant in mutants/ (a stale or fresh cache); its entry is kept as it was")
            del summary["modules"][module]  # type: ignore[attr-defined]
            continue
        if args.report_only:  # re-summarised (e.g. new equivalence reasons): keep when and how it was run
            kept = {k: before[k] for k in ("measured_at", "run") if k in before}
            doc["modules"][module] = {**entry, "measured_at": stamp, **kept}
        else:
            doc["modules"][module] = {**entry, "measured_at": stamp, "run": run_info}
    if not args.report_only:
        doc["last_run"] = {"modules": modules, **run_info}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # mutant names hold "ǁ" (mutmut's class separator): written as it is, so a re-run changes only its own modules
    RESULTS.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    for module, entry in summary["modules"].items():  # type: ignore[attr-defined]
        print(
            f"{module}: {entry['mutants']} mutants, {entry['killed']} killed, {entry['survived']} survived, "
            f"{entry['timeouts']} timeouts, score {entry['score']}"
        )
    print(f"{summary['seconds']} s with {args.jobs} jobs; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
