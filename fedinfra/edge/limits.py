"""Per-round CPU-time and memory limits, enforced for real.

Three enforcement points, each measuring the process it stops:

* :func:`run_limited` runs one round function in a child process with a kernel CPU limit
  (``setrlimit(RLIMIT_CPU)``, setrlimit(2): SIGXCPU at the soft limit, SIGKILL at the hard
  one) while the parent samples the child's resident memory and CPU time with psutil and
  kills it the moment either passes its limit.
* :class:`ProcessWatchdog` watches the ClientApp processes a Flower SuperNode starts (Flower
  1.41 starts one ``flwr-clientapp`` process per message, so one process is one round) and
  kills any that passes a limit; the SuperNode reports the failed round to the server.
* :class:`RoundGuard` is for code already inside the round's process: a kernel CPU limit
  from *now*, and a peak-RSS check (``getrusage(2)`` ``ru_maxrss``) before the reply leaves,
  so an over-budget round is refused rather than sent.

Address-space limits (``RLIMIT_AS``) are not used: torch and glibc reserve far more virtual
memory than they touch, so resident memory is the honest measure.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

import psutil

from fedinfra.config.device import LimitsSpec
from fedinfra.errors import ResourceLimitExceeded

T = TypeVar("T")
MB = 1024 * 1024


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def tree_usage(proc: psutil.Process) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of ``proc`` and its descendants."""
    cpu, rss = 0.0, 0
    for p in _tree(proc):
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
        except psutil.Error:
            continue
    return cpu, rss


def _kill_tree(proc: psutil.Process) -> None:
    for p in reversed(_tree(proc)):
        try:
            p.kill()
        except psutil.Error:
            continue


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], cpu_seconds: float) -> None:
    soft = max(1, math.ceil(cpu_seconds))
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # report every failure to the parent, then exit
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_limited(fn: Callable[..., T], *args: Any, limits: LimitsSpec, poll_s: float = 0.02) -> T:
    """Run ``fn(*args)`` in a forked child within ``limits``; return its (picklable) result.

    Raises
    ------
    ResourceLimitExceeded
        If the child passes its CPU-time or resident-memory limit (it is killed), or dies.
    """
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, limits.max_cpu_seconds), daemon=True)
    proc.start()
    child.close()
    watched = psutil.Process(proc.pid)
    peak_rss = 0
    reason: str | None = None
    try:
        while proc.is_alive() and not parent.poll():
            cpu, rss = tree_usage(watched)
            peak_rss = max(peak_rss, rss)
            if rss > limits.max_memory_mb * MB:
                reason = f"memory {rss / MB:.0f} MB > limits.max_memory_mb={limits.max_memory_mb}"
            elif cpu > limits.max_cpu_seconds:
                reason = f"CPU {cpu:.1f} s > limits.max_cpu_seconds={limits.max_cpu_seconds:g}"
            if reason:
                _kill_tree(watched)
                break
            time.sleep(poll_s)
        message = parent.recv() if reason is None and parent.poll(1.0) else None
    except EOFError:
        message = None
    finally:
        proc.join(5)
        parent.close()
    if reason is not None:
        raise ResourceLimitExceeded(f"round stopped: {reason}")
    if message is None:
        if proc.exitcode == -signal.SIGXCPU or proc.exitcode == -signal.SIGKILL:
            raise ResourceLimitExceeded(
                f"round stopped: CPU > limits.max_cpu_seconds={limits.max_cpu_seconds:g}"
            )
        raise ResourceLimitExceeded(f"round process died (exit code {proc.exitcode})")
    status, value = message
    if status != "ok":
        raise ResourceLimitExceeded(f"round failed in its limited process: {value}")
    return value  # type: ignore[no-any-return]


def _same_argv(proc: psutil.Process, argv: list[str]) -> bool:
    try:
        return bool(proc.cmdline() == argv)
    except psutil.Error:
        return False


@dataclass
class Violation:
    """A process the watchdog stopped."""

    pid: int
    reason: str


@dataclass
class ProcessWatchdog:
    """Kill any child of ``root_pid`` (one ClientApp process = one round) that passes a limit."""

    root_pid: int
    limits: LimitsSpec
    poll_s: float = 0.25
    on_violation: Callable[[Violation], None] | None = None
    #: Watch only children forked from ``root_pid`` (same command line: a fork keeps its
    #: parent's argv) - the warm launcher's round processes, not its SuperNode child.
    forks_only: bool = False
    violations: list[Violation] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def check_once(self) -> list[Violation]:
        """Inspect every direct child once; kill and return the offenders."""
        found: list[Violation] = []
        try:
            root = psutil.Process(self.root_pid)
            children = root.children()
            argv = root.cmdline() if self.forks_only else None
        except psutil.Error:
            return found
        for child in children:
            if argv is not None and not _same_argv(child, argv):
                continue
            cpu, rss = tree_usage(child)
            reason = None
            if rss > self.limits.max_memory_mb * MB:
                reason = f"memory {rss / MB:.0f} MB > {self.limits.max_memory_mb} MB"
            elif cpu > self.limits.max_cpu_seconds:
                reason = f"CPU {cpu:.1f} s > {self.limits.max_cpu_seconds:g} s"
            if reason:
                _kill_tree(child)
                v = Violation(child.pid, reason)
                found.append(v)
                self.violations.append(v)
                if self.on_violation is not None:
                    self.on_violation(v)
        return found

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check_once()

    def start(self) -> None:
        """Watch in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="fedinfra-edge-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class RoundGuard:
    """In-process limits for one round: ``with RoundGuard(limits): train()``.

    On entry the kernel CPU limit is set to the CPU used so far plus
    ``limits.max_cpu_seconds`` (SIGXCPU raises :class:`ResourceLimitExceeded` in the main
    thread); on exit the process's peak RSS is checked. Must run in the main thread.
    """

    def __init__(self, limits: LimitsSpec) -> None:
        self.limits = limits
        self._old_limit: tuple[int, int] | None = None
        self._old_handler: Any = None

    @staticmethod
    def _on_xcpu(signum: int, frame: FrameType | None) -> None:
        raise ResourceLimitExceeded("round stopped: CPU time limit reached (limits.max_cpu_seconds)")

    def __enter__(self) -> RoundGuard:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        self._old_limit = resource.getrlimit(resource.RLIMIT_CPU)
        self._old_handler = signal.signal(signal.SIGXCPU, self._on_xcpu)
        soft = math.ceil(used + self.limits.max_cpu_seconds)
        hard = self._old_limit[1]
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._old_limit is not None:
            resource.setrlimit(resource.RLIMIT_CPU, self._old_limit)
        signal.signal(signal.SIGXCPU, self._old_handler)
        if exc_type is None:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
            if peak_mb > self.limits.max_memory_mb:
                raise ResourceLimitExceeded(
                    f"round refused: peak memory {peak_mb:.0f} MB > "
                    f"limits.max_memory_mb={self.limits.max_memory_mb}"
                )
