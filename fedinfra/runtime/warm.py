"""A site's SuperNode with a warm ClientApp launcher (Flower's ``--isolation process``).

Flower 1.41's default (``--isolation subprocess``) has the SuperNode start
``flower-superexec``, which starts a fresh ``flwr-clientapp`` process for every message:
each message pays Python, Flower, torch, Opacus and TenSEAL imports again (several
seconds of CPU per message, three sites sharing two cores). In ``--isolation process``
mode Flower leaves launching to "a separate independent process": this module is that
process, and it is a *zygote* (the pattern of Android's app launcher and of Flower's own
warm Kubernetes executors, ``flwr.supercore.superexec.executor.warm_executor``):

* it starts ``flower-supernode`` as its child (same log, same session), then imports the
  heavy modules once, before any message exists, and never runs app code itself;
* it asks the SuperNode's Runtime API for ClientApp tasks (``AcquireTask``), signed with
  a fresh per-start SuperExec secret (HMAC, Flower's ``--superexec-auth-secret-file``), so
  no other local process can take the site's messages - stricter than the default mode,
  where that API is unauthenticated;
* for every task it ``fork()``s: the child runs Flower's own ``run_clientapp`` with the
  task's one-time token and exits; before Flower installs the task's FAB, the child checks
  it is a release the site approved, signed by a key the site pinned in its kit
  (:mod:`fedinfra.runtime.appcheck`), and refuses the task otherwise - no app code runs.
  So each message still runs in its own fresh process that has seen no earlier message
  (the isolation Flower's default gives); only the imports are shared, copy-on-write.

ClientApp processes run torch with ``--threads`` intra-op threads (default 1). fedinfra's
models are small tabular networks: for them OpenMP's thread hand-offs cost more than they
save, and a host serving several sites (or anything else) is oversubscribed. Measured on
the 2-core benchmark machine: 12 DP-SGD steps of the logistic model took 1.1-1.3 s with
torch's default two threads under load, 0.03-0.05 s with one.

If the SuperNode exits, the launcher exits with its code; if the launcher is stopped,
it stops the SuperNode (and on Linux the kernel does, should the launcher be killed).

    python -m fedinfra.runtime.warm --runtime-api-address 127.0.0.1:9094 \
        --superexec-auth-secret-file SECRET -- flower-supernode ... --isolation process
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path

#: Imported once by the launcher, so no ClientApp process pays for them. Only code
#: (no site data, no keys): the site's ClientApp, and what its handlers import lazily.
PRELOAD: tuple[str, ...] = (
    "flwr.supernode.runtime.run_clientapp",
    "fedinfra.runtime.apps",
    "fedinfra.site.round",
    "fedinfra.site.sync",
    "fedinfra.site.receipts",
    "fedinfra.site.training",
    "fedinfra.privacy",
    "fedinfra.privacy.dp_sgd",
    "fedinfra.crypto",
    "fedinfra.audit",
    "fedinfra.policy",
    "fedinfra.policy.scan",
    "fedinfra.aggregation.compression",
    "torch",
    "opacus.accountants",
    "opacus.accountants.analysis.rdp",
    "opacus.grad_sample",
    "opacus.optimizers",
    "opacus.validators",
    "opacus.utils.fast_gradient_clipping_utils",
    "tenseal.sealapi",
    "sqlalchemy",
)

#: The Runtime API method a SuperExec signs (``flwr.supercore.superexec.run_superexec``).
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"
_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


def write_secret(path: Path) -> Path:
    """Write a fresh 32-byte SuperExec secret, readable by the site's account only (0600)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32))
    return path


def launcher_argv(
    runtime_address: str,
    secret: Path,
    supernode_argv: Sequence[str],
    *,
    threads: int = 1,
    kit: Path | None = None,
    state_dir: Path | None = None,
) -> list[str]:
    """The command that runs ``supernode_argv`` (``--isolation process`` added) under this launcher.

    ``kit`` names the site kit whose pinned release keys and approved releases every FAB
    must match (``None``: no verification, tests of the launcher only).
    """
    checks = ["--kit", str(kit)] if kit is not None else []
    if state_dir is not None:
        checks += ["--state-dir", str(state_dir)]
    return [
        sys.executable,
        "-m",
        "fedinfra.runtime.warm",
        "--runtime-api-address",
        runtime_address,
        "--superexec-auth-secret-file",
        str(secret),
        "--threads",
        str(threads),
        *checks,
        "--",
        *supernode_argv,
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(secret),
    ]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the SuperNode gets SIGTERM if the launcher dies (``prctl(PR_SET_PDEATHSIG)``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _poll_interval() -> float:
    try:
        value = float(os.environ.get(_POLL_ENV, "0.1"))
    except ValueError:
        return 0.1
    return min(max(value, 0.01), 5.0)


class _Launcher:
    """The SuperNode child, the Runtime API client and the forked ClientApp children."""

    def __init__(self, runtime_address: str, secret: bytes, supernode_argv: Sequence[str], threads: int) -> None:
        self.address = runtime_address
        self.secret = secret
        self.threads = threads
        self.pid = os.getpid()
        self.supernode = subprocess.Popen(list(supernode_argv), preexec_fn=_die_with_parent)  # noqa: S603 - argv built by deploy.py
        self.children: set[int] = set()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)

    def _stop(self, signum: int, frame: types.FrameType | None) -> None:
        del frame
        if os.getpid() != self.pid:  # a just-forked child, before it reset its handlers
            os._exit(128 + signum)
        self.shutdown(128 + signum)

    def shutdown(self, code: int) -> None:
        """Stop the SuperNode and any running ClientApp, then exit with ``code``."""
        with contextlib.suppress(OSError):
            self.supernode.terminate()
        for pid in list(self.children):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.supernode.wait(timeout=10)
        self._reap()
        sys.exit(code)

    def check_supernode(self) -> None:
        """Exit with the SuperNode's code once it has exited (refused key, bad CA ...)."""
        code = self.supernode.poll()
        if code is not None:
            self.shutdown(code)

    def preload(self, modules: Sequence[str]) -> None:
        """Import ``modules`` (a missing optional one is skipped: its ClientApp would fail alike)."""
        for name in modules:
            self.check_supernode()
            with contextlib.suppress(ImportError):
                importlib.import_module(name)

    def _reap(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
            self.children.discard(pid)

    def _launch(self, token: str) -> None:
        """Fork; the child runs one ClientApp task with Flower's own ``run_clientapp``."""
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.children.add(pid)
            return
        code = 1  # pragma: no cover - the child's path is exercised by tests/e2e/test_deploy.py
        start = time.monotonic()
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(self.threads)
            from flwr.supernode.runtime.run_clientapp import run_clientapp

            run_clientapp(
                runtime_api_address=self.address,
                token=token,
                insecure=True,
                parent_pid=parent,
                runtime_dependency_install=False,
            )
            code = 0
        except SystemExit as exc:  # run_clientapp ends with flwr_exit -> sys.exit
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # the child must never return into the launcher loop
            import traceback

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.write(f"fedinfra warm launcher: task process {os.getpid()} exited {code} "
                                 f"after {time.monotonic() - start:.2f} s\n")
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def serve(self) -> None:
        """Acquire ClientApp tasks from the SuperNode and launch each in a forked child."""
        import httpx
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        invoker = make_simple_http_retry_invoker()
        invoker.max_tries = 1  # the loop below is the retry: it also watches the SuperNode
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=True,
            root_certificates=None,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                SuperExecAuthHttpInterceptor(master_secret=self.secret, protected_methods={_ACQUIRE}),
            ],
            retry_invoker=invoker,
        )
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        interval = _poll_interval()
        while True:
            self.check_supernode()
            self._reap()
            try:
                answer = client.AcquireTask(request)
            except httpx.HTTPError:  # the SuperNode's Runtime API is not up yet
                time.sleep(0.5)
                continue
            if answer.HasField("task") and answer.token:
                self._launch(answer.token)
                continue
            time.sleep(interval)


def main(argv: Sequence[str] | None = None) -> None:
    """Start the SuperNode given after ``--``, preload, then serve its ClientApp tasks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m fedinfra.runtime.warm", description="Warm ClientApp launcher")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's --host:--port")
    parser.add_argument("--superexec-auth-secret-file", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per ClientApp (default 1)")
    parser.add_argument("--kit", type=Path, default=None, help="site kit: run only FABs it approved")
    parser.add_argument("--state-dir", type=Path, default=None, help="site state: its site-audit.jsonl")
    args = parser.parse_args(argv[:cut])
    supernode = argv[cut + 1 :]
    if not supernode:
        parser.error("give the SuperNode command after '--'")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    # Before torch is imported: its OpenMP / MKL pools size themselves from these.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    launcher = _Launcher(args.runtime_api_address, args.superexec_auth_secret_file.read_bytes(), supernode,
                         args.threads)
    launcher.preload(PRELOAD)
    if args.kit is not None:
        from fedinfra.runtime.appcheck import guard_clientapp

        guard_clientapp(args.kit, args.state_dir)  # inherited by every forked task process
    launcher.serve()


if __name__ == "__main__":
    main()
