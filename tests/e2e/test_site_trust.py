"""Sites run only what they approved; the coordinator's port obeys no stranger (issue 12).

Replays, on loopback with real Flower processes and a real nginx, the attacks the review
ran against the old deployment:

* with nothing but ``ca.crt``, ``flwr supernode register`` and ``flwr run`` succeeded
  against the public port, and ``AcquireTask`` for ``flwr-serverapp`` answered;
* a crafted Flower App ran at every site and read the site's HE secret key;
* a second node declaring ``site0`` was admitted as ``site0``.

and checks that the signed fedinfra app still completes a DP + HE job. The coordinator
refuses to launch a ServerApp its own kit did not approve; when a malicious operator
approves the crafted app at the coordinator, every site - and an edge device started with
``fedinfra edge start`` - still refuses it before any of its code runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedinfra.config import JobSpec
from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.config.server import load_server
from fedinfra.crypto import _sign
from fedinfra.crypto.tls import generate_node_auth_key
from fedinfra.runtime.appcheck import COORDINATOR_AUDIT_FILE, RELEASES_DIR, SITE_AUDIT_FILE, approve
from fedinfra.runtime.deploy import SuperLink, start_superlink, start_supernode
from fedinfra.runtime.env import hardened_env
from fedinfra.runtime.kit import load_coordinator_transport, load_site_transport
from fedinfra.runtime.loopback import write_demo_sites
from fedinfra.runtime.preflight import preflight
from fedinfra.runtime.procs import FlowerProcess, flower_env, free_port, stop_all
from fedinfra.runtime.provision import provision
from fedinfra.runtime.release import record_name, sign_app, write_record

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITES = ["site0", "site1", "site2"]
SPOOFER = "site3"  # a registered node that declares itself site0
DEVICE = "edge-0"  # a consortium device, started only for the last test
JOB = """name = "e2e-site-trust"
rounds = 2
timeout_s = 180
policy_packs = ["gdpr", "hipaa"]

[sites]
count = 4
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

CRAFTED_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "crafted"
version = "6.6.6"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "attacker"

[tool.flwr.app.components]
serverapp = "crafted.apps:server"
clientapp = "crafted.apps:client"

[tool.flwr.app.config]
out = ""
min-nodes = 4
"""

CRAFTED_APPS = '''
"""An attacker's app: at each site, read the HE secret key and leave a marker."""
import hashlib
import json
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.query()
def steal(msg: Message, context: Context) -> Message:
    kit = Path(str(context.node_config["kit"]))
    state = Path(str(context.node_config["state-dir"]))
    digest = hashlib.sha256((kit / "he_secret.key").read_bytes()).hexdigest()
    (state / "PWNED").write_text(digest)
    return Message(RecordDict({"c": ConfigRecord({"he": digest})}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    import time

    nodes = list(grid.get_node_ids())
    while len(nodes) < int(context.run_config["min-nodes"]):
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=120))
    out = [{"error": r.error.reason if r.has_error() else None,
            "he": None if r.has_error() else r.content.config_records["c"]["he"]} for r in replies]
    Path(str(context.run_config["out"])).write_text(json.dumps(out))
'''


@dataclass
class Federation:
    root: Path
    kits: Path
    link: SuperLink
    nodes: list[FlowerProcess]
    server_toml: Path
    public_port: int

    def env(self) -> dict[str, str]:
        return {**os.environ, "FLWR_HOME": str(self.root / "flwr-home")}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("trust")
    port = free_port()
    consortium = ConsortiumConfig(
        name="trust", sites=[*SITES, SPOOFER, DEVICE], coordinator={"address": f"127.0.0.1:{port}"},
        secure_aggregation={"mode": "bfv"},
    )
    kits = root / "kits"
    provision(consortium, kits, app_dir=REPO / "server")
    manifests = write_demo_sites(JobSpec(), [*SITES, DEVICE], root / "sites")
    server_toml = root / "server.toml"
    server_toml.write_text(
        f'host = "127.0.0.1"\nport = {port}\nstate_dir = "state"\nruns_dir = "runs"\n'
        f'app_dir = "{REPO / "server"}"\nkit = "kits/coordinator"\n'
    )
    (root / "job.toml").write_text(JOB)
    link = start_superlink(load_server(server_toml), load_coordinator_transport(kits / "coordinator"))
    nodes: list[FlowerProcess] = []
    try:
        for name in SITES:
            nodes.append(start_supernode(
                manifests[name], preflight(manifests[name]), load_site_transport(kits / "sites" / name),
                state_dir=root / "site-state" / name, port=free_port(),
            ))
        # The spoofer: site3's registered key, declaring site0's manifest (and data).
        # Its cosigning key is its own, made under site0's name (issue 15 pins cosigner keys too).
        spoof_dir = root / "spoof-kit"
        shutil.copytree(kits / "sites" / SPOOFER, spoof_dir)
        for own in ("cosigner.key", "cosigner.vkey"):
            (spoof_dir / own).unlink(missing_ok=True)
        spoof_kit = dataclasses.replace(load_site_transport(spoof_dir), site_id="site0")
        nodes.append(start_supernode(
            manifests["site0"], preflight(manifests["site0"]), spoof_kit,
            state_dir=root / "site-state" / SPOOFER, port=free_port(),
        ))
        yield Federation(root, kits, link, nodes, server_toml, port)
    finally:
        stop_all([*nodes, *link.daemons()])
        link.stop()  # its status file


def _attacker_home(fed: Federation) -> Path:
    """An attacker's Flower home: the public address and the consortium CA, nothing else."""
    home = fed.root / "attacker"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "attack"\n\n[superlink.attack]\n'
        f'address = "127.0.0.1:{fed.public_port}"\nroot-certificates = "{fed.kits / "sites" / "site0" / "ca.crt"}"\n'
    )
    return home


def _flwr(args: list[str], home: Path) -> dict[str, object]:
    done = subprocess.run([str(BIN / "flwr"), *args, "--format", "json"], env=flower_env(home),
                          capture_output=True, text=True, timeout=120, check=False)
    text = done.stdout[done.stdout.find("{"):] if "{" in done.stdout else "{}"
    answer: dict[str, object] = json.loads(text)
    return answer


def _crafted_app(root: Path) -> Path:
    app = root / "crafted"
    (app / "crafted").mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(CRAFTED_PYPROJECT)
    (app / "crafted" / "__init__.py").write_text("")
    (app / "crafted" / "apps.py").write_text(CRAFTED_APPS)
    return app


def test_with_only_the_ca_certificate_nobody_registers_runs_or_takes_a_task(federation: Federation) -> None:
    home = _attacker_home(federation)
    pub = federation.root / "attacker.pub"
    pub.write_bytes(generate_node_auth_key().public)

    registered = _flwr(["supernode", "register", str(pub), "attack", "--name", "site0"], home)
    submitted = _flwr(["run", str(_crafted_app(federation.root)), "attack"], home)
    listed = _flwr(["ls", "attack"], home)

    assert registered.get("success") is not True, registered
    assert submitted.get("success") is not True, submitted
    assert listed.get("success") is not True, listed

    import ssl

    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    ca = ssl.create_default_context(cafile=str(federation.kits / "sites" / "site0" / "ca.crt"))
    body = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP.value]).SerializeToString()
    with httpx.Client(verify=ca, timeout=30) as client:
        answer = client.post(f"https://127.0.0.1:{federation.public_port}/v1/runtime/acquire-task", content=body,
                             headers={"Content-Type": "application/protobuf"})
    assert answer.status_code == 403
    # The SuperLink itself listens on loopback only, never on the public port.
    assert federation.link.address != f"127.0.0.1:{federation.public_port}"


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)


def _operator_approves(fed: Federation, record: dict[str, object], public: bytes) -> None:
    """A malicious operator pins the attacker's key in its own kit and approves the crafted app there."""
    toml = fed.kits / "coordinator" / "kit.toml"
    text, n = re.subn(r'("?public_keys"?\s*=\s*")', lambda m: m.group(1) + public.hex() + ",", toml.read_text())
    assert n == 1
    toml.write_text(text)
    path = write_record(dict(record), fed.root / "crafted-release.json")
    approve(path, fed.kits / "coordinator")


def _crafted_run(fed: Federation, out: Path, *, min_nodes: int) -> dict[str, object]:
    # Submitted the way the coordinator's operator submits (loopback, operator's Flower home).
    return _flwr(["run", str(_crafted_app(fed.root)), "fedinfra", "--run-config", f'out="{out}" min-nodes={min_nodes}'],
                 fed.link.flwr_home)


def test_an_app_signed_by_an_untrusted_key_is_refused_at_the_coordinator_and_at_every_site(
    federation: Federation,
) -> None:
    app = _crafted_app(federation.root)
    attacker_key, attacker_public = _sign.new_signing_key()
    record = sign_app(app, attacker_key)
    # Even a record dropped into a site's kit does not help: its key is not pinned there.
    write_record(record, federation.kits / "sites" / "site0" / RELEASES_DIR / record_name(record))

    # 1. The coordinator's own kit did not approve it: the SuperLink's ServerApp refuses it.
    first = federation.root / "crafted-first.json"
    answer = _crafted_run(federation, first, min_nodes=4)
    assert answer.get("success") is True, answer
    audit = federation.link.status_path.parent / COORDINATOR_AUDIT_FILE
    _wait_file(audit, 120)
    time.sleep(2)
    assert not first.exists()  # the crafted ServerApp never ran on the coordinator host
    entry = json.loads(audit.read_text().splitlines()[-1])
    assert (entry["event"], entry["fab_sha256"]) == ("app.refused", record["fab_sha256"])

    # 2. A malicious operator approves it at the coordinator: every site still refuses it.
    _operator_approves(federation, record, attacker_public)
    out = federation.root / "crafted-out.json"
    answer = _crafted_run(federation, out, min_nodes=4)
    assert answer.get("success") is True, answer
    _wait_file(out, 240)
    replies = json.loads(out.read_text())

    assert len(replies) == 4
    assert all(r["he"] is None for r in replies)  # no site key left any site
    assert all("app release refused" in (r["error"] or "") for r in replies)
    assert all("\n" not in (r["error"] or "") for r in replies)  # the submitter sees one line
    for site in [*SITES, SPOOFER]:
        state = federation.root / "site-state" / site
        assert not (state / "PWNED").exists()
        events = [json.loads(line) for line in (state / SITE_AUDIT_FILE).read_text().splitlines()]
        assert {e["event"] for e in events} == {"app.refused"}
        assert events[-1]["fab_sha256"] == record["fab_sha256"]
    flwr_apps = [p for p in (federation.root / "site-state").rglob("crafted*") if "flwr" in p.parts]
    assert flwr_apps == []  # the FAB was never installed at a site


def test_the_signed_app_completes_a_dp_he_job_and_a_spoofing_node_is_refused(federation: Federation) -> None:
    done = subprocess.run(
        [str(BIN / "fedinfra"), "run", "--job", str(federation.root / "job.toml"), "--config",
         str(federation.server_toml), "--format", "json", "--timeout", "400"],
        capture_output=True, text=True, env=federation.env(), timeout=450, check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    result = json.loads(done.stdout)
    assert result["status"] == "finished:completed"
    assert result["rounds"] == [1, 2]
    run_dir = Path(result["run_dir"]) if "run_dir" in result else next((federation.root / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    store, run_id = str(metrics["audit_store"]), str(metrics["run_id"])  # the consortium's one log (issue 15)
    shown = subprocess.run(
        [str(BIN / "fedinfra"), "audit", "show", store, "--run", run_id, "--type", "site.rejected", "--format", "json"],
        capture_output=True, text=True, env=federation.env(), timeout=120, check=False,
    )
    rejected = json.loads(shown.stdout)
    assert [e["details"].get("code") for e in rejected] == ["identity"]
    admitted = subprocess.run(
        [str(BIN / "fedinfra"), "audit", "show", store, "--run", run_id, "--type", "site.admitted", "--format", "json"],
        capture_output=True, text=True, env=federation.env(), timeout=120, check=False,
    )
    assert sorted(e["actor"]["id"] for e in json.loads(admitted.stdout)) == SITES


def _device_toml(port: int) -> str:
    return (
        f'name = "{DEVICE}"\nserver = "127.0.0.1:{port}"\nstate_dir = "state"\nprobe = "linux"\npoll_s = 1\n'
        "[conditions]\nrequire_power = true\nmin_battery = 0.2\nrequire_idle = false\n"
        "[limits]\nmax_cpu_seconds = 120\nmax_memory_mb = 2048\n"
    )


def test_a_device_refuses_the_crafted_app_through_the_live_superlink(federation: Federation) -> None:
    """``fedinfra edge start`` (edge runner + verifying launcher) against the same SuperLink and proxy."""
    device_dir = federation.root / "sites" / DEVICE
    (device_dir / "device.toml").write_text(_device_toml(federation.public_port))
    log = federation.root / "device.log"
    env = hardened_env(flwr_home=federation.root / "flwr-home-device")
    with log.open("wb") as fh:
        device = subprocess.Popen(
            [str(BIN / "fedinfra"), "edge", "start", "--device", str(device_dir / "device.toml"),
             "--kit", str(federation.kits / "sites" / DEVICE)],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=federation.root, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "SuperNode ID:" not in log.read_text(errors="replace") and device.poll() is None:
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.5)
        assert device.poll() is None, log.read_text(errors="replace")[-2000:]
        # A malicious operator approves the crafted app at the coordinator: it reaches the device.
        attacker_key, attacker_public = _sign.new_signing_key()
        _operator_approves(federation, sign_app(_crafted_app(federation.root), attacker_key), attacker_public)
        out = federation.root / "crafted-device.json"
        answer = _crafted_run(federation, out, min_nodes=5)
        assert answer.get("success") is True, answer
        _wait_file(out, 240)
        replies = json.loads(out.read_text())
    finally:
        if device.poll() is None:
            os.killpg(device.pid, 15)
            try:
                device.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(device.pid, 9)
                device.wait(timeout=10)

    state = device_dir / "state"
    assert len(replies) == 5  # the four sites and the device
    assert all(r["he"] is None for r in replies)
    assert all("app release refused" in (r["error"] or "") for r in replies)
    assert not (state / "PWNED").exists()  # none of its code ran on the device
    events = [json.loads(line) for line in (state / SITE_AUDIT_FILE).read_text().splitlines()]
    assert [e["event"] for e in events] == ["app.refused"]  # audited at the device
    assert [p for p in state.rglob("crafted*")] == []  # never installed there
    # Flower's task process logs the refused ClientApp's exception with its traceback; any
    # other traceback (the edge runner, the launcher, the SuperNode) is a crash of the device.
    assert _tracebacks_other_than(log.read_text(errors="replace"), "CryptoError: app release refused") == []


def _tracebacks_other_than(text: str, expected: str) -> list[str]:
    """Every traceback in ``text`` whose exception line is not ``expected`` (chained ones included)."""
    lines = text.splitlines()
    others = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j] and not lines[j].startswith(" ")), i)
            if expected not in lines[end].replace("fedinfra.errors.", ""):
                others.append("\n".join(lines[i : end + 1]))
    return others
