"""Run every benchmark in ``bench/`` (what ``make bench`` calls).

Each ``bench/<name>.py`` (not helpers starting with ``_``, not this file) runs in its own
process with the same interpreter, with ``--quick`` when asked. Each prints its figures
and writes ``bench/results/<name>.json``; this runner then summarises the goals recorded
there. Exit status: 1 if any benchmark crashed, else 0 (an unmet goal is reported, not
fatal: timings on a shared machine are evidence, not a test).

Run: ``python bench/run_all.py [--quick] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


def discover(bench_dir: Path = BENCH_DIR) -> list[Path]:
    """Return the benchmark scripts in ``bench_dir``, sorted by name."""
    me = Path(__file__).resolve().name
    skip = (me, "mutation.py")  # mutation.py is `make mutate`, not a benchmark
    return sorted(p for p in bench_dir.glob("*.py") if not p.name.startswith("_") and p.name not in skip)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark in bench/.")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmark names")
    args = parser.parse_args(argv)

    scripts = discover()
    if args.only:
        unknown = set(args.only) - {p.stem for p in scripts}
        if unknown:
            print(f"error: unknown benchmark(s) {sorted(unknown)}; have {[p.stem for p in scripts]}")
            return 2
        scripts = [p for p in scripts if p.stem in args.only]

    outcomes: list[tuple[str, int, float]] = []
    for script in scripts:
        cmd = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        print(f"=== {script.stem} ===", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(cmd, cwd=BENCH_DIR.parent, check=False).returncode
        outcomes.append((script.stem, rc, time.perf_counter() - start))

    print("\n=== summary ===")
    failed = 0
    for name, rc, seconds in outcomes:
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        failed += rc != 0
        print(f"{name}: {status} in {seconds:.1f} s")
        result = RESULTS_DIR / f"{name}.json"
        if rc == 0 and result.is_file():
            goals = json.loads(result.read_text(encoding="utf-8")).get("goals", {})
            for goal, g in goals.items():
                state = "met" if g.get("met") else "NOT MET"
                print(f"  goal {goal}: {_describe(g)} {state}")
    return 1 if failed else 0


def _describe(goal: dict[str, object]) -> str:
    """One goal as text, whatever its shape (a ratio, a bound from above or from below)."""
    value = next((goal[k] for k in goal if str(k).startswith("value")), None)
    shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
    name = f"{goal['ratio']} = " if "ratio" in goal else ""
    bounds = [f"<= {goal[k]}" for k in goal if str(k).startswith("at_most")]
    bounds += [f">= {goal[k]}" for k in goal if str(k).startswith("at_least")]
    return f"{name}{shown} ({', '.join(bounds) or 'no bound'})"


if __name__ == "__main__":
    sys.exit(main())
