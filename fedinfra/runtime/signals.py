"""Signals from the first instant: a stopped command never leaves a child process behind.

``fedinfra server start``, ``client start`` and ``edge start`` spawn Flower daemons in
their own sessions (so a terminal's Ctrl-C reaches the command, which stops them in
order). That makes every child the command's responsibility: a SIGTERM that lands while
the SuperLink is still registering site keys used to end the CLI with Python's default
action and leave the SuperLink running as an orphan.

:func:`child_guard` is entered before anything is spawned. Inside it SIGINT and SIGTERM
raise :class:`Shutdown` in the main thread, so ``finally`` blocks run at every stage, and
on the way out every process started through :func:`spawn` - with all its descendants -
is terminated, then killed. :func:`spawn` blocks both signals while ``Popen`` runs and
the child is recorded, so there is no instant at which a child exists that the guard
does not know of (POSIX ``pthread_sigmask``: a blocked signal stays pending and is
delivered when unblocked). Grandchildren orphaned mid-start are re-parented to the
command (Linux ``PR_SET_CHILD_SUBREAPER``) and stopped too.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Children started through :func:`spawn` and not yet stopped, by pid.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


class Shutdown(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; unwinding stops every child (a ``KeyboardInterrupt``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Shutdown(signum)


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)``, recorded for :func:`stop_children` atomically."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)  # noqa: S603 - argv from fedinfra
        _LIVE[proc.pid] = proc
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return proc


def forget(proc: subprocess.Popen[bytes]) -> None:
    """``proc`` was stopped by its owner: the guard need not stop it."""
    _LIVE.pop(proc.pid, None)


def _frozen_tree(pid: int) -> list[Any]:
    """Stop (SIGSTOP) ``pid`` and its descendants until no new one appears; return them all.

    A process that is starting up may spawn a child between a listing of its tree and the
    SIGTERM (the SuperLink starts ``flower-superexec`` that way); frozen first, it cannot.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        root.suspend()
    except psutil.Error:
        return []
    tree: dict[int, psutil.Process] = {pid: root}
    while True:
        try:
            found = [c for c in root.children(recursive=True) if c.pid not in tree]
        except psutil.Error:
            break
        if not found:
            break
        for child in found:
            with contextlib.suppress(psutil.Error):
                child.suspend()
            tree[child.pid] = child
    return list(tree.values())


def stop_tree(pid: int, *, timeout: float = 10.0) -> None:
    """Terminate ``pid`` and every descendant (frozen first; SIGTERM, then SIGKILL after ``timeout``)."""
    stop_trees([pid], timeout=timeout)


def stop_trees(pids: Sequence[int], *, timeout: float = 10.0) -> None:
    """:func:`stop_tree` for several roots at once: one shared ``timeout``, not one per root.

    Every tree is frozen and sent SIGTERM before any is waited for, so a federation of
    N daemons stops in one grace period instead of N.
    """
    import psutil

    procs = [p for pid in pids for p in _frozen_tree(pid)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
            p.resume()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def become_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to this process, not to init.

    ``prctl(PR_SET_CHILD_SUBREAPER)`` (man 2 prctl): a grandchild whose parent died while
    it was being spawned - e.g. the SuperNode of a launcher stopped mid-start - stays in
    this process's tree, where :func:`stop_children` finds it. Returns False elsewhere.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def stop_children(timeout: float = 10.0) -> None:
    """Stop every recorded child with its descendants, then any other descendant left, and reap them."""
    import os

    import psutil

    while _LIVE:
        _, proc = _LIVE.popitem()
        if proc.poll() is None:
            stop_tree(proc.pid, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    for _ in range(3):  # orphans re-parented to us (become_subreaper), in waves
        try:
            left = [p for p in psutil.Process(os.getpid()).children() if p.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            return
        for p in left:
            stop_tree(p.pid, timeout=timeout)
        psutil.wait_procs(psutil.Process(os.getpid()).children(), timeout=0.5)
        if not left:
            return


@contextlib.contextmanager
def child_guard() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Shutdown`; on exit every recorded child is stopped.

    While the children are being stopped further signals are ignored, so a second Ctrl-C
    cannot interrupt the clean-up half-way.
    """
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _raise)
    become_subreaper()
    try:
        yield
    finally:
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        try:
            stop_children()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


__all__ = ["SIGNALS", "Shutdown", "become_subreaper", "child_guard", "forget", "spawn", "stop_children", "stop_tree"]
