"""Seconds per round on Flower's deployment engine: plain Flower FedAvg vs fedinfra.

One loopback federation (SuperLink with TLS + SuperNode auth, three SuperNodes, each with
its own CSV partition) serves both apps. Baseline: a plain Flower app (FedAvg strategy from
``flwr.serverapp.strategy``, a torch logistic regression trained on the site's CSV).
Figure: the fedinfra app (coordinator + site ClientApp) on the same data and model with the
full stack: DP-SGD (Opacus, target epsilon), packed BFV secure aggregation, the GDPR and
HIPAA policy packs, the signed audit log and the site's receipt checks. A fedinfra round
is two message waves (train, then federated evaluation of the encrypted aggregate, which
only the sites can open); a plain FedAvg round here is one.
Both apps run on the SuperNodes fedinfra starts (``start_supernode``: the warm launcher of
:mod:`fedinfra.runtime.warm`, one forked process per message with the imports done once).
For context the full run also times the plain app on stock SuperNodes (Flower's default
``--isolation subprocess``: a fresh ``flwr-clientapp`` process per message), as baseline
``plain-stock``; the goal is against ``plain``, the same deployment for both apps.
Issue 12 adds ``fleet-request-direct`` vs ``fleet-request-proxied`` (one Fleet API request
straight to the SuperLink vs through the proxy; ``FEDINFRA_BENCH_TRANSPORT_ONLY=1`` runs only
these and ``app-check``) and baseline ``fedinfra-before``: the same fedinfra round with the sites dialling
the SuperLink's loopback port directly with no app-release check, as before issue 12; goal
``proxy-overhead``: the round behind the proxy, with every FAB checked, within 10% of it
(arms alternate per repeat; ``FEDINFRA_BENCH_ISSUE12_ONLY=1`` skips the plain-Flower arms,
``FEDINFRA_BENCH_ROUNDS`` / ``FEDINFRA_BENCH_REPEATS`` override 3 / 3;
``FEDINFRA_BENCH_COORDINATOR_TIMED=1`` runs one R-round run per block and takes the goal from
the coordinator's own seconds per round, rounds 2.., instead of the wall-clock difference). ``app-check`` times the
per-message verification of the FAB against the site's approved, signed releases.
Seconds per round = (wall time of an R-round run - wall time of a 1-round run) / (R - 1),
which cancels run start-up (FAB install, ServerApp process start) out of the figure.

    python bench/deploy.py [--quick]     # FEDINFRA_BENCH_STOCK=1: plain-stock in quick mode too
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, parse_args

REPO = Path(__file__).resolve().parents[1]
SITES = ["site0", "site1", "site2"]

PLAIN_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "plainfed"
version = "0.1.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "bench"

[tool.flwr.app.components]
serverapp = "plainfed.apps:server"
clientapp = "plainfed.apps:client"

[tool.flwr.app.config]
num-server-rounds = 1
"""

PLAIN_APPS = '''
"""Plain Flower FedAvg: torch logistic regression on the site's CSV (benchmark baseline)."""
import csv
import tomllib
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

NUM_FEATURES, NUM_CLASSES = 30, 2
client = ClientApp()
server = ServerApp()


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(NUM_FEATURES, NUM_CLASSES)


def _data(manifest):
    doc = tomllib.loads(Path(manifest).read_text())
    path = Path(manifest).parent / doc["dataset"]["path"]
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    label = doc["dataset"]["label_column"]
    x = np.array([[float(r[k]) for k in r if k != label] for r in rows], dtype=np.float32)
    y = np.array([int(r[label]) for r in rows], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


@client.train()
def train(msg: Message, context: Context) -> Message:
    model = _model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = _data(str(context.node_config["site-manifest"]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.tensor(0.0)
    for _ in range(2):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            loss.backward()
            opt.step()
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord({"loss": float(loss), "num-examples": len(y)})}),
                   reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config["num-server-rounds"])
    FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3).start(
        grid=grid, initial_arrays=ArrayRecord(_model().state_dict()),
        train_config=ConfigRecord({"lr": 0.1}), num_rounds=rounds, timeout=600)
'''


def _plain_app(root: Path) -> Path:
    app = root / "plainfed"
    (app / "plainfed").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PLAIN_PYPROJECT)
    (app / "plainfed" / "__init__.py").write_text("")
    (app / "plainfed" / "apps.py").write_text(PLAIN_APPS)
    return app


def _approve_everywhere(app: Path, kits: Path) -> None:
    """Sign the baseline app with the consortium's release key and approve it at every site and the coordinator.

    Sites and the coordinator run only approved releases (fedinfra.runtime.appcheck); the baseline app is one.
    """
    from fedinfra.runtime.appcheck import approve
    from fedinfra.runtime.release import RELEASE_KEY_FILE, read_release_key, sign_app, write_record

    key = read_release_key(kits / "release" / RELEASE_KEY_FILE)
    record = write_record(sign_app(app, key), app.parent / "plain.json")
    for kit in (kits / "coordinator", *(kits / "sites" / name for name in SITES)):  # the coordinator runs it too
        approve(record, kit)


def _fleet_request(address: str, ca: Path) -> dict[str, float]:
    """Seconds per Fleet API request (an unauthenticated heartbeat: refused, full round trip)."""
    import ssl

    import httpx
    from _common import time_median

    context = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(verify=context, timeout=30) as client:
        url = f"https://{address}/v1/fleet/send-node-heartbeat"
        return time_median(lambda: client.post(url, content=b"", headers={"Content-Type": "application/protobuf"}),
                           repeats=300, warmup=5)


def _app_check(kit: Path) -> dict[str, float]:
    """Seconds to check the fedinfra FAB at a site (digest, record lookup, Ed25519 verify)."""
    from _common import time_median

    from fedinfra.runtime.appcheck import check_app
    from fedinfra.runtime.release import build_app_fab

    fab = build_app_fab(REPO / "server").content
    return time_median(lambda: check_app(fab, kit, None), repeats=200)


def _wait(flower_run_id: str, flwr_home: Path) -> None:
    from fedinfra.runtime.deploy import CONNECTION
    from fedinfra.runtime.procs import flower_bin, flower_env
    from fedinfra.runtime.submit import run_status

    subprocess.run([flower_bin("flwr"), "log", flower_run_id, CONNECTION, "--stream"], env=flower_env(flwr_home),
                   capture_output=True, timeout=1800, check=False)
    status = run_status(flower_run_id, flwr_home=flwr_home)
    if status != "finished:completed":
        raise RuntimeError(f"run {flower_run_id} ended {status}")


def _time_plain(app: Path, rounds: int, flwr_home: Path) -> float:
    from fedinfra.runtime.deploy import CONNECTION, flwr_cli

    start = time.perf_counter()
    answer = flwr_cli(["run", str(app), CONNECTION, "--run-config", f"num-server-rounds={rounds}"], flwr_home=flwr_home)
    _wait(str(answer["run-id"]), flwr_home)
    return time.perf_counter() - start


def _time_fedinfra(rounds: int, flwr_home: Path, runs: Path, store: str, coordinator_rounds: list[float]) -> float:
    """Wall seconds of one fedinfra run; the coordinator's own seconds of rounds 2.. go to ``coordinator_rounds``.

    The run writes the consortium's one audit log (``store``), as ``fedinfra run`` does: a
    site holds receipts per log, and a second log under the same key that starts again
    from size 0 is a split view it refuses (issue 15) - which is what crashed this arm.
    """
    import json

    from fedinfra.coordinator.app import new_run_id
    from fedinfra.runtime.submit import submit

    job = full_stack_job(rounds)
    start = time.perf_counter()
    run_id = new_run_id()
    sub = submit(job, run_id=run_id, runs_dir=runs, app_dir=REPO / "server", flwr_home=flwr_home,
                 kit=runs.parent / "kits" / "coordinator", audit_store=store, report_formats=())
    try:
        _wait(sub.flower_run_id, flwr_home)
    except RuntimeError as exc:
        error = runs / run_id / "error.json"
        raise RuntimeError(f"{exc}: {error.read_text() if error.exists() else 'no error.json'}") from exc
    elapsed = time.perf_counter() - start
    metrics = json.loads((runs / run_id / "metrics.json").read_text())
    coordinator_rounds.extend(float(r["seconds"]) for r in metrics.get("rounds", [])[1:])
    return elapsed


def full_stack_job(rounds: int) -> object:
    """DP-SGD (target epsilon 4, noise multiplier 3.0 fixed: no per-site planning) + packed BFV + GDPR/HIPAA."""
    from fedinfra.config import JobSpec

    return JobSpec(
        rounds=rounds, sites={"count": 3, "min_sites": 3}, timeout_s=600, policy_packs=["gdpr", "hipaa"],
        training={"local_epochs": 2},
        privacy={"mechanism": "dp-sgd", "epsilon": 4.0, "noise_multiplier": 3.0, "accountant": "rdp"},
        secure_aggregation={"mode": "bfv"},
    )


def _per_round(timer: object, rounds: int, repeats: int) -> dict[str, float]:
    samples = []
    for _ in range(repeats):
        one = timer(1)  # type: ignore[operator]
        many = timer(rounds)  # type: ignore[operator]
        samples.append((many - one) / (rounds - 1))
    return _summary(samples)


def _summary(samples: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "repeats": float(len(samples))}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def main() -> None:
    args = parse_args(__doc__ or "")
    rounds, repeats = (2, 1) if args.quick else (3, 3)
    rounds, repeats = _env_int("FEDINFRA_BENCH_ROUNDS", rounds), _env_int("FEDINFRA_BENCH_REPEATS", repeats)
    issue12_only = bool(os.environ.get("FEDINFRA_BENCH_ISSUE12_ONLY"))
    coordinator_timed = bool(os.environ.get("FEDINFRA_BENCH_COORDINATOR_TIMED"))
    from fedinfra.config import JobSpec
    from fedinfra.config.consortium import ConsortiumConfig
    from fedinfra.config.server import ServerConfig
    from fedinfra.coordinator.inbox import PULL_INTERVAL_S
    from fedinfra.runtime.deploy import start_superlink, start_supernode
    from fedinfra.runtime.env import harden
    from fedinfra.runtime.kit import load_coordinator_transport, load_site_transport
    from fedinfra.runtime.loopback import write_demo_sites
    from fedinfra.runtime.preflight import preflight
    from fedinfra.runtime.procs import TASK_POLL_INTERVAL_S, free_port
    from fedinfra.runtime.provision import provision

    with tempfile.TemporaryDirectory(prefix="fedinfra-bench-deploy-") as tmp:
        root = Path(tmp)
        harden(flwr_home=root / "flwr-home")
        os.environ["FLWR_HOME"] = str(root / "flwr-home")
        port = free_port()
        provision(ConsortiumConfig(name="bench", sites=SITES, coordinator={"address": f"127.0.0.1:{port}"},
                                   secure_aggregation={"mode": "bfv"}), root / "kits", app_dir=REPO / "server")
        manifests = write_demo_sites(JobSpec(), SITES, root / "sites")
        cfg = ServerConfig(port=port, state_dir=root / "state", runs_dir=root / "runs").resolved(root)
        store = str(cfg.audit_store)  # the consortium's one audit log (state/audit.sqlite)
        link = start_superlink(cfg, load_coordinator_transport(root / "kits" / "coordinator"))
        nodes: list[object] = []

        def start_nodes(warm: bool, tag: str, superlink: str | None = None, verify: bool = True) -> None:
            from concurrent.futures import ThreadPoolExecutor

            from fedinfra.errors import RuntimeLaunchError

            def one(name: str) -> object:
                # A stopped SuperNode is not deactivated: the SuperLink refuses its key (2004)
                # until its heartbeat lapses. Retry for a while when restarting the same sites.
                deadline = time.monotonic() + 240
                while True:
                    try:
                        return start_supernode(manifests[name], preflight(manifests[name]),
                                               load_site_transport(root / "kits" / "sites" / name),
                                               state_dir=root / f"site-state-{tag}" / name, port=free_port(),
                                               warm=warm, superlink=superlink, verify_apps=verify,
                                               connect_timeout=300)  # a loaded shared machine
                    except RuntimeLaunchError as exc:
                        # free_port() can race with another start (port taken between pick and bind)
                        retryable = "2004" in str(exc) or "is in use" in str(exc)
                        if not retryable or time.monotonic() > deadline:
                            raise
                        time.sleep(10 if "2004" in str(exc) else 0.5)

            with ThreadPoolExecutor(max_workers=len(SITES)) as pool:
                futures = [pool.submit(one, name) for name in SITES]
                for future in futures:  # every started node is recorded, so a failure stops them all
                    try:
                        nodes.append(future.result())
                    except RuntimeLaunchError:
                        for other in futures:
                            if other is not future and other.exception() is None:
                                nodes.append(other.result())
                        raise

        def stop_nodes() -> None:
            while nodes:
                nodes.pop().stop()  # type: ignore[attr-defined]

        try:
            app = _plain_app(root)
            _approve_everywhere(app, root / "kits")
            report = Report("deploy", "seconds per round, 3 sites on one loopback deployment (TLS + node auth)",
                            params={"sites": 3, "rounds": rounds, "repeats": repeats,
                                    "task_poll_interval_s": TASK_POLL_INTERVAL_S,
                                    "coordinator_pull_interval_s": PULL_INTERVAL_S,
                                    "supernode": "fedinfra warm launcher (--isolation process, fork per message)",
                                    "issue12_only": issue12_only, "coordinator_timed": coordinator_timed,
                                    "loadavg_start": list(os.getloadavg())})
            # Issue 12: one Fleet request (TLS, keep-alive, as a SuperNode sends them) straight
            # to the loopback SuperLink vs through the Fleet-only nginx proxy.
            ca = root / "kits" / "coordinator" / "ca.crt"
            report.baseline("fleet-request-direct", _fleet_request(link.address, ca),
                            label="one Fleet request, straight to the SuperLink")
            report.figure("fleet-request-proxied", _fleet_request(link.public, ca),
                          label="one Fleet request through the nginx proxy", against=["fleet-request-direct"])
            report.figure("app-check", _app_check(root / "kits" / "sites" / SITES[0]),
                          label="verifying one FAB against the site's approved releases (per message)", against=[])
            if os.environ.get("FEDINFRA_BENCH_TRANSPORT_ONLY"):
                report.save(args.out)
                return
            if not issue12_only and (not args.quick or os.environ.get("FEDINFRA_BENCH_STOCK")):
                # What a plain Flower user gets: stock SuperNodes (--isolation subprocess, a
                # fresh flwr-clientapp process per message). Context only, not the goal.
                start_nodes(warm=False, tag="stock")
                report.baseline("plain-stock", _per_round(lambda r: _time_plain(app, r, link.flwr_home), rounds,
                                                          repeats),
                                label="plain Flower FedAvg round, stock SuperNodes (--isolation subprocess)")
                stop_nodes()
            if not issue12_only:
                start_nodes(warm=True, tag="warm")
                report.baseline("plain", _per_round(lambda r: _time_plain(app, r, link.flwr_home), rounds, repeats),
                                label="plain Flower FedAvg round, same SuperNodes as fedinfra")
                stop_nodes()
            # Issue 12's cost, round level: the same fedinfra job with the sites dialling the
            # SuperLink's loopback port directly and no app-release check (the deployment before
            # issue 12) vs through the Fleet-only nginx proxy with every FAB checked. Arms
            # alternate per repeat (A B, B A, A B ...) so a slow spell of the shared machine
            # falls on both; each block has fresh site state (privacy ledgers, receipts).
            arms = {"fedinfra-before": {"superlink": link.address, "verify": False},
                    "fedinfra": {"superlink": None, "verify": True}}
            walls: dict[str, list[float]] = {a: [] for a in arms}
            coord: dict[str, list[float]] = {a: [] for a in arms}
            fleet = 0
            log = cfg.state_dir / "superlink.log"
            for i in range(repeats):
                for arm in (list(arms) if i % 2 == 0 else list(reversed(arms))):
                    start_nodes(warm=True, tag=f"{arm}-{i}", **arms[arm])  # type: ignore[arg-type]
                    before = log.read_text(errors="replace").count("POST /v1/fleet/")

                    def timer(r: int, arm: str = arm) -> float:
                        return _time_fedinfra(r, link.flwr_home, root / "runs", store, coord[arm])

                    one = None if coordinator_timed else timer(1)
                    many = timer(rounds)
                    if one is not None:
                        walls[arm].append((many - one) / (rounds - 1))
                    if arm == "fedinfra":
                        fleet += log.read_text(errors="replace").count("POST /v1/fleet/") - before
                    print(f"  repeat {i + 1} {arm}: {rounds} rounds {many:.1f} s wall, coordinator-timed rounds "
                          f"so far {[round(x, 2) for x in coord[arm]]}, 1 round {one} s; "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
                    stop_nodes()
            runs_per_block = 1 if coordinator_timed else 2
            report.params["fleet_requests_per_fedinfra_round_upper"] = fleet / (
                repeats * (rounds + (0 if coordinator_timed else 1)))
            report.params["fedinfra_runs_per_block"] = runs_per_block
            report.params["loadavg_end"] = list(os.getloadavg())
            if walls["fedinfra"]:
                report.baseline("fedinfra-before", _summary(walls["fedinfra-before"]),
                                label="fedinfra round, sites dial the SuperLink directly, no app check (before #12)")
                against = [b for b in ("plain", "plain-stock") if b in report.baselines]
                report.figure("fedinfra", _summary(walls["fedinfra"]),
                              label="fedinfra round, sites dial the Fleet-only nginx proxy, every FAB checked",
                              against=[*against, "fedinfra-before"])
                if "plain" in report.baselines:
                    report.goal("round-latency", ratio="fedinfra/plain", at_most=1.2)
                report.goal("proxy-overhead", ratio="fedinfra/fedinfra-before", at_most=1.1)
            # From inside the run: the coordinator's own seconds per round (rounds 2.., admission
            # excluded), free of the ServerApp start-up that dominates wall time on a loaded host.
            report.baseline("coordinator-round-before", _summary(coord["fedinfra-before"]),
                            label="coordinator-timed round (rounds 2..), before #12")
            report.figure("coordinator-round", _summary(coord["fedinfra"]),
                          label="coordinator-timed round (rounds 2..), behind the proxy with app checks",
                          against=["coordinator-round-before"])
            if coordinator_timed:
                report.goal("proxy-overhead", ratio="coordinator-round/coordinator-round-before", at_most=1.1)
            report.save(args.out)
        finally:
            stop_nodes()
            link.stop()


if __name__ == "__main__":
    main()
