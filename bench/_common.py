"""Helpers shared by the benchmarks in ``bench/``.

Every benchmark times its subject and a named baseline in the same process, reports
medians over repeats (robust to a noisy, shared machine), prints each figure with its
ratio to the baseline, and writes ``bench/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the options every benchmark takes (``--quick``, ``--out``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer repeats / smaller sizes (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for <name>.json")
    return parser.parse_args(argv)


def time_median(
    fn: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Time ``fn`` ``repeats`` times (after ``warmup`` untimed calls); seconds.

    ``setup`` runs untimed before every call. Returns the median, min, max and
    the number of repeats.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    samples: list[float] = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": float(repeats),
    }


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    setups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, dict[str, float]]:
    """Time several functions round-robin (A, B, C, A, B, C, ...); seconds, per name.

    Interleaving spreads any slow period of a shared machine over every candidate, so
    their ratios stay fair even when the absolute times drift.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    setups = setups or {}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            setup = setups.get(name)
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                samples[name].append(elapsed)
    return {
        name: {
            "median_s": statistics.median(xs),
            "min_s": min(xs),
            "max_s": max(xs),
            "repeats": float(repeats),
        }
        for name, xs in samples.items()
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def machine_info() -> dict[str, Any]:
    """Describe the machine a figure was measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import numpy as np

        info["numpy"] = np.__version__
    except ImportError:
        pass
    return info


def _fmt_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


@dataclass
class Report:
    """Figures of one benchmark, their baselines and ratios; printed and saved as JSON."""

    name: str
    description: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, dict[str, Any]] = field(default_factory=dict)
    goals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def baseline(self, key: str, timing: dict[str, float], *, label: str, unit_bytes: int | None = None) -> None:
        """Record a baseline measured in this run and print it."""
        entry = {"label": label, **timing}
        if unit_bytes:
            entry["throughput_gb_s"] = unit_bytes / timing["median_s"] / 1e9
        self.baselines[key] = entry
        self._print(f"baseline {label}", timing, entry.get("throughput_gb_s"))

    def figure(
        self,
        key: str,
        timing: dict[str, float],
        *,
        label: str,
        against: list[str],
        unit_bytes: int | None = None,
    ) -> None:
        """Record a figure and print it with its ratio to each named baseline (time / baseline)."""
        entry: dict[str, Any] = {"label": label, **timing}
        if unit_bytes:
            entry["throughput_gb_s"] = unit_bytes / timing["median_s"] / 1e9
        self.figures[key] = entry
        self._print(label, timing, entry.get("throughput_gb_s"))
        for base in against:
            ref = self.baselines.get(base) or self.figures.get(base)
            if ref is None:
                raise KeyError(f"unknown baseline {base!r}; record it before the figures that use it")
            ratio = timing["median_s"] / ref["median_s"]
            self.ratios[f"{key}/{base}"] = {
                "figure": key,
                "baseline": base,
                "time_ratio": ratio,
                "meaning": f"{label} takes {ratio:.2f}x the time of {ref['label']}",
            }
            print(f"    ratio vs {ref['label']}: {ratio:.2f}x time")

    def goal(self, key: str, *, ratio: str, at_most: float) -> bool:
        """Check a time ratio recorded with :meth:`figure` against a bound; print and record it."""
        value = self.ratios[ratio]["time_ratio"]
        met = value <= at_most
        self.goals[key] = {"ratio": ratio, "value": value, "at_most": at_most, "met": met}
        print(f"goal {key}: {ratio} = {value:.2f}x <= {at_most}x: {'met' if met else 'NOT MET'}")
        return met

    @staticmethod
    def _print(label: str, timing: dict[str, float], gbps: float | None) -> None:
        extra = f", {gbps:.2f} GB/s" if gbps is not None else ""
        print(
            f"{label}: median {_fmt_seconds(timing['median_s'])} "
            f"(min {_fmt_seconds(timing['min_s'])}, {int(timing['repeats'])} runs{extra})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document written by :meth:`save`."""
        return {
            "name": self.name,
            "description": self.description,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "machine": machine_info(),
            "params": self.params,
            "baselines": self.baselines,
            "figures": self.figures,
            "ratios": self.ratios,
            "goals": self.goals,
        }

    def save(self, out_dir: Path = RESULTS_DIR) -> Path:
        """Write ``<out_dir>/<name>.json`` and return its path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {path}")
        return path
