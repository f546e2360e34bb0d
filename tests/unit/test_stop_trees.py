"""``stop_trees``: a federation's daemons stop within one grace period, not one each."""

from __future__ import annotations

import subprocess
import sys
import time

from fedinfra.runtime.signals import stop_trees

# A daemon that ignores SIGTERM (as a busy SuperNode may for a while) and has a child.
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


def test_four_stubborn_trees_are_killed_in_one_grace_period_with_their_children() -> None:
    import psutil

    procs = [subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    children = [c for proc in procs for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(children) == 4

    t0 = time.monotonic()
    stop_trees([p.pid for p in procs], timeout=2.0)
    elapsed = time.monotonic() - t0

    # SIGTERM was ignored, so each needed the SIGKILL; psutil reaped them (Popen then reads 0).
    assert all(p.poll() is not None for p in procs)
    for p in procs:
        assert p.stdout is not None
        p.stdout.close()
    assert not any(psutil.pid_exists(c.pid) and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert elapsed < 6.0, elapsed  # one shared 2 s grace period; one per tree would be >= 8 s
