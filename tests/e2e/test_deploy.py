"""Deployment on loopback: SuperLink with TLS + SuperNode auth, three sites, the full stack.

Real Flower processes, real certificates, real DP-SGD, BFV ciphertexts, policy packs and a
signed audit log; every socket binds 127.0.0.1 and FLWR_HOME lives in the test's
temporary directory. The job is kept small (two rounds, one local epoch, a fixed noise
multiplier checked against the target epsilon) so the file stays within a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
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

from fedinfra.config import JobSpec, load_site
from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.config.server import ServerConfig, load_server
from fedinfra.crypto.tls import generate_ca, generate_node_auth_key
from fedinfra.errors import ConfigError, PolicyViolation, RuntimeLaunchError
from fedinfra.runtime.deploy import SuperLink, start_superlink, start_supernode
from fedinfra.runtime.kit import SiteKit, load_coordinator_transport, load_site_transport
from fedinfra.runtime.loopback import write_demo_sites
from fedinfra.runtime.preflight import preflight
from fedinfra.runtime.procs import FlowerProcess, free_port, stop_all
from fedinfra.runtime.provision import provision

# slow (make e2e): a 3-site federation just for refusals; in make test, tests/e2e/test_site_trust.py
# covers the network attacker (no CA-only registration, a spoofing node refused) on its own federation.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITES = ["site0", "site1", "site2"]
FULL_STACK_JOB = """name = "e2e-full-stack"
rounds = 2
timeout_s = 120
policy_packs = ["gdpr", "hipaa"]

[sites]
count = 3
min_sites = 3

[training]
local_epochs = 1

[privacy]
mechanism = "dp-sgd"
epsilon = 4.0
noise_multiplier = 2.0
accountant = "rdp"

[secure_aggregation]
mode = "bfv"
"""


@dataclass
class Federation:
    root: Path
    kits: Path
    link: SuperLink
    nodes: list[FlowerProcess]
    manifests: dict[str, Path]
    server_toml: Path

    def fedinfra(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FLWR_HOME": str(self.root / "flwr-home")}
        return subprocess.run(
            [str(BIN / "fedinfra"), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("deploy")
    os.environ["FLWR_HOME"] = str(root / "flwr-home")
    port = free_port()
    consortium = ConsortiumConfig(
        name="e2e", sites=SITES, coordinator={"address": f"127.0.0.1:{port}"}, secure_aggregation={"mode": "bfv"}
    )
    kits = root / "kits"
    provision(consortium, kits, app_dir=REPO / "server")
    manifests = write_demo_sites(JobSpec(), SITES, root / "sites")
    server_toml = root / "server.toml"
    server_toml.write_text(
        f'host = "127.0.0.1"\nport = {port}\nstate_dir = "state"\nruns_dir = "runs"\n'
        f'app_dir = "{REPO / "server"}"\nkit = "kits/coordinator"\n'
    )
    (root / "job.toml").write_text(FULL_STACK_JOB)
    link = start_superlink(load_server(server_toml), load_coordinator_transport(kits / "coordinator"))
    nodes: list[FlowerProcess] = []

    def start(name: str) -> FlowerProcess:
        return start_supernode(
            manifests[name], preflight(manifests[name]), load_site_transport(kits / "sites" / name),
            state_dir=root / "site-state" / name, port=free_port(),
        )

    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(start, name) for name in SITES]
            for f in futures:
                nodes.append(f.result())
        yield Federation(root, kits, link, nodes, manifests, server_toml)
    finally:
        stop_all([*nodes, *link.daemons()])
        link.stop()  # its status file


def _wait_for(predicate: object, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _rounds_done(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "metrics.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def _serverapps(link: SuperLink) -> list[psutil.Process]:
    tree = psutil.Process(link.process.pid).children(recursive=True)
    return [p for p in tree if any("flwr-serverapp" in part for part in p.cmdline())]


@pytest.mark.slow
def test_full_stack_run_survives_a_coordinator_kill_and_resumes(federation: Federation) -> None:
    runs = federation.root / "runs"
    env = {**os.environ, "FLWR_HOME": str(federation.root / "flwr-home")}
    first = subprocess.Popen(
        [str(BIN / "fedinfra"), "run", "--job", str(federation.root / "job.toml"),
         "--config", str(federation.server_toml), "--format", "json", "--timeout", "300"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        _wait_for(lambda: runs.is_dir() and any(runs.iterdir()), timeout=60, what="the run directory")
        (run_dir,) = list(runs.iterdir())
        _wait_for(lambda: _rounds_done(run_dir) >= 1, timeout=200, what="round 1")
        (serverapp,) = _serverapps(federation.link)
        serverapp.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(timeout=30)
    run_id = run_dir.name

    done = federation.fedinfra(
        "run", "--job", str(federation.root / "job.toml"), "--config", str(federation.server_toml),
        "--resume", run_id, "--format", "json", "--timeout", "240",
    )

    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    result = json.loads(done.stdout)
    assert result["status"] == "finished:completed"
    assert result["rounds"] == [1, 2]
    assert result["final_accuracy"] >= 0.8
    assert Path(result["model"]).name == "model.enc"  # HE: the coordinator never holds the model
    for fmt in ("html", "pdf", "json"):
        assert (run_dir / f"report-{run_id}.{fmt}").stat().st_size > 0
    store = federation.root / "state" / "audit.sqlite"  # the consortium's one log
    witnesses = federation.kits / "coordinator"  # each site's cosigner key, pinned by the key ceremony
    verified = federation.fedinfra(
        "audit", "verify", str(store), "--public-key", str(federation.kits / "coordinator" / "kit.toml"),
        "--witnesses", str(witnesses),
    )
    assert verified.returncode == 0, verified.stderr + verified.stdout  # the sites cosigned the end
    assert json.loads((run_dir / "metrics.json").read_text())["final"] is True
    shown = federation.fedinfra(
        "audit", "show", str(store), "--run", run_id, "--type", "aggregation.completed", "--format", "json"
    )
    assert [e["round"] for e in json.loads(shown.stdout)] == [1, 2]  # no round counted twice
    from fedinfra.privacy import PrivacyLedger

    for site in SITES:
        ledger = PrivacyLedger(federation.root / "site-state" / site / "ledger.sqlite")
        try:
            spent_rounds = {e.round for e in ledger.entries() if e.run_id == run_id}
        finally:
            ledger.close()
        assert {1, 2} <= spent_rounds, site


def _rogue_kit(fed: Federation, name: str, *, register_key: bool) -> SiteKit:
    """A copy of site0's kit, with a fresh unregistered key or a foreign CA."""
    src = fed.kits / "sites" / "site0"
    dst = fed.root / name
    shutil.copytree(src, dst)
    if register_key:
        (dst / "ca.crt").write_bytes(generate_ca("someone else").public)
    else:
        key = dst / "supernode_auth.key"
        key.unlink()
        key.write_bytes(generate_node_auth_key().private)
        key.chmod(0o600)
    return load_site_transport(dst)


def test_an_unregistered_site_key_is_refused(federation: Federation) -> None:
    kit = _rogue_kit(federation, "rogue-key", register_key=False)
    manifest = load_site(federation.manifests["site0"])
    with pytest.raises(RuntimeLaunchError, match=r"2004|activate"):
        start_supernode(federation.manifests["site0"], manifest, kit, state_dir=federation.root / "rogue-key-state",
                        port=free_port(), max_retries=1, connect_timeout=60)


def test_a_site_without_the_consortium_ca_cannot_connect(federation: Federation) -> None:
    kit = _rogue_kit(federation, "rogue-ca", register_key=True)
    manifest = load_site(federation.manifests["site0"])
    with pytest.raises(RuntimeLaunchError, match=r"CERTIFICATE_VERIFY_FAILED|SSL"):
        start_supernode(federation.manifests["site0"], manifest, kit, state_dir=federation.root / "rogue-ca-state",
                        port=free_port(), max_retries=1, connect_timeout=60)


def test_a_kit_missing_its_ca_is_rejected_before_connecting(federation: Federation) -> None:
    dst = federation.root / "no-ca"
    shutil.copytree(federation.kits / "sites" / "site1", dst)
    (dst / "ca.crt").unlink()
    with pytest.raises(ConfigError, match=r"ca\.crt"):
        load_site_transport(dst)


def test_a_site_whose_preflight_fails_never_starts(federation: Federation) -> None:
    site_dir = federation.root / "leaky"
    site_dir.mkdir()
    rows = ["email,mean radius,label"] + [f"patient{i}@example.org,{i}.5,{i % 2}" for i in range(40)]
    (site_dir / "data.csv").write_text("\n".join(rows) + "\n")
    (site_dir / "site.toml").write_text(
        'name = "site2"\norganisation = "Leaky"\njurisdiction = "DE"\n'
        '[dataset]\npath = "data.csv"\nlabel_column = "label"\n'
    )
    with pytest.raises(PolicyViolation, match="email"):
        preflight(site_dir / "site.toml")


def test_a_second_superlink_on_the_same_port_fails_in_one_line(federation: Federation) -> None:
    port = int(federation.link.address.rsplit(":", 1)[1])
    cfg = ServerConfig(host="127.0.0.1", port=port, state_dir=federation.root / "state2").resolved(federation.root)
    with pytest.raises(RuntimeLaunchError, match="in use"):
        start_superlink(cfg, load_coordinator_transport(federation.kits / "coordinator"))
