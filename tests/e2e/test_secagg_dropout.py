"""SecAgg on loopback: a site SIGKILLed mid-run drops out; the round completes with the rest.

Real SuperLink (TLS + SuperNode auth) and four real SuperNodes; ``secure_aggregation.mode =
"secagg"`` (the first test also ``"secagg+he"``) with max_dropouts = 1, max_colluders = 1
(n = 4, t = 3). After round 1 one site's
SuperNode and its ClientApp processes are killed with SIGKILL: round 2 completes with the
three survivors and its ``aggregation.completed`` entry names the dropout. In the second
test two sites are killed: three survivors are needed, so round 2 is abandoned, nothing is
released (no ``aggregation.completed`` for it) and ``run.failed`` says why and names the
round (``released = false``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from fedinfra.config import JobSpec
from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.config.server import load_server
from fedinfra.runtime.deploy import SuperLink, start_superlink, start_supernode
from fedinfra.runtime.kit import load_coordinator_transport, load_site_transport
from fedinfra.runtime.loopback import write_demo_sites
from fedinfra.runtime.preflight import preflight
from fedinfra.runtime.procs import FlowerProcess, free_port, stop_all
from fedinfra.runtime.provision import provision

# Two loopback federations with killed sites: `make e2e` (marked slow); `make test` covers
# secagg on loopback with tests/e2e/test_task_deploy.py.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITES = ["site0", "site1", "site2", "site3"]
MODES = ["secagg", pytest.param("secagg+he", marks=pytest.mark.slow)]
JOB = """name = "e2e-secagg"
rounds = 3
timeout_s = 25

[sites]
count = 4
min_sites = 2

[training]
local_epochs = 1

[secure_aggregation]
mode = "{mode}"
max_dropouts = 1
max_colluders = 1
min_contributors = 3
"""


@dataclass
class Federation:
    root: Path
    link: SuperLink
    nodes: dict[str, FlowerProcess]
    server_toml: Path


@pytest.fixture
def federation(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Federation]:
    mode = getattr(request, "param", "secagg")  # the kits' HE parameters follow the mode
    root = tmp_path
    os.environ["FLWR_HOME"] = str(root / "flwr-home")
    port = free_port()
    consortium = ConsortiumConfig(
        name="e2e", sites=SITES, coordinator={"address": f"127.0.0.1:{port}"}, secure_aggregation={"mode": mode}
    )
    kits = root / "kits"
    provision(consortium, kits, app_dir=REPO / "server")  # the sites approve this release (issue 12)
    manifests = write_demo_sites(JobSpec(), SITES, root / "sites")
    server_toml = root / "server.toml"
    server_toml.write_text(
        f'host = "127.0.0.1"\nport = {port}\nstate_dir = "state"\nruns_dir = "runs"\n'
        f'app_dir = "{REPO / "server"}"\nkit = "kits/coordinator"\n'
    )
    (root / "job.toml").write_text(JOB.format(mode=mode))
    link = start_superlink(load_server(server_toml), load_coordinator_transport(kits / "coordinator"))
    nodes: dict[str, FlowerProcess] = {}

    def start(name: str) -> FlowerProcess:
        return start_supernode(
            manifests[name],
            preflight(manifests[name]),
            load_site_transport(kits / "sites" / name),
            state_dir=root / "site-state" / name,
            port=free_port(),
        )

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for name, fut in [(n, pool.submit(start, n)) for n in SITES]:
                nodes[name] = fut.result()
        yield Federation(root, link, nodes, server_toml)
    finally:
        stop_all([*nodes.values(), *link.daemons()])
        link.stop()  # its status file


def _rounds_done(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "metrics.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def _wait_for(predicate: object, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _sigkill_tree(node: FlowerProcess) -> None:
    root = psutil.Process(node.pid)
    for proc in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def _run_and_kill(fed: Federation, victims: list[str]) -> tuple[subprocess.CompletedProcess[str], Path]:
    env = {**os.environ, "FLWR_HOME": str(fed.root / "flwr-home")}
    runs = fed.root / "runs"
    proc = subprocess.Popen(
        [
            str(BIN / "fedinfra"),
            "run",
            "--job",
            str(fed.root / "job.toml"),
            "--config",
            str(fed.server_toml),
            "--format",
            "json",
            "--timeout",
            "400",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for(lambda: runs.is_dir() and any(runs.iterdir()), timeout=90, what="the run directory")
        (run_dir,) = list(runs.iterdir())
        _wait_for(lambda: _rounds_done(run_dir) >= 1, timeout=240, what="round 1")
        for name in victims:
            _sigkill_tree(fed.nodes[name])
        out, err = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), run_dir


def _store(run_dir: Path) -> str:
    """The audit store the run wrote to: the consortium's one log (issue 15), named in metrics.json."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # A run abandoned before its first aggregate wrote no store path: the server's default log.
    return str(metrics.get("audit_store") or run_dir.parent.parent / "state" / "audit.sqlite")


def _entries(fed: Federation, run_dir: Path, kind: str) -> list[dict[str, object]]:
    env = {**os.environ, "FLWR_HOME": str(fed.root / "flwr-home")}
    shown = subprocess.run(
        [str(BIN / "fedinfra"), "audit", "show", _store(run_dir), "--run", run_dir.name, "--type", kind,
         "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    return list(json.loads(shown.stdout))


@pytest.mark.parametrize("federation", MODES, indirect=True)
def test_a_site_killed_mid_run_drops_out_and_the_round_completes_with_the_survivors(federation: Federation) -> None:
    done, run_dir = _run_and_kill(federation, ["site2"])

    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    completed = {e["round"]: e["details"] for e in _entries(federation, run_dir, "aggregation.completed")}
    assert sorted(completed) == [1, 2, 3]
    assert completed[1]["survivors"] == SITES
    for rnd in (2, 3):
        assert completed[rnd]["dropped"] == ["site2"], completed[rnd]
        assert completed[rnd]["survivors"] == ["site0", "site1", "site3"]
        assert completed[rnd]["t"] == 3
    result = json.loads(done.stdout)
    assert result["final_accuracy"] >= 0.8  # the mean of the survivors trains the model


def test_two_sites_killed_leave_fewer_than_t_and_nothing_is_released(federation: Federation) -> None:
    done, run_dir = _run_and_kill(federation, ["site1", "site3"])

    assert done.returncode != 0
    completed = [e["round"] for e in _entries(federation, run_dir, "aggregation.completed")]
    assert completed == [1]
    (failed,) = _entries(federation, run_dir, "run.failed")
    assert "abandoned" in str(failed["details"]["reason"])
    assert failed["details"]["abandoned_round"] == 2
    assert failed["details"]["released"] is False
