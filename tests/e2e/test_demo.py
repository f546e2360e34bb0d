"""The main job end to end: real Flower simulation (Ray) in a child process."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

#: Seconds a two-round demo may take. It is CPU-bound (Ray, DP-SGD, BFV, a PDF report): on a
#: 2-core machine shared with other jobs it took 392 s where 300 s was the limit (issue 18),
#: so the budget is 900 s; a run that exceeds it is killed, with its process tree, and fails.
DEMO_BUDGET_S = 900


def _communicate(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """``proc.communicate`` that kills the demo's whole tree (Ray workers included) on timeout."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the demo did not finish within {timeout:.0f} s; its stderr ends: {err[-1500:]}")


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


class SocketWatcher:
    """Polls the sockets of a process tree; records any non-loopback address."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.bad: set[str] = set()
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _loop(self) -> None:
        while not self._stop.is_set():
            for proc in self._procs():
                try:
                    conns = proc.net_connections(kind="inet")
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                for c in conns:
                    self.seen += 1
                    for addr in (c.laddr, c.raddr):
                        if addr and not _is_loopback(addr.ip):
                            self.bad.add(f"{proc.name()}[{proc.pid}] {c.status} {c.laddr} -> {c.raddr}")
            time.sleep(0.1)

    def __enter__(self) -> SocketWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_demo_runs_two_rounds_on_loopback_and_writes_artifacts(fedinfra_bin: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [fedinfra_bin, "demo", "--rounds", "2", "--out", str(tmp_path), "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with SocketWatcher(proc.pid) as watcher:
        out, err = _communicate(proc, DEMO_BUDGET_S)

    assert proc.returncode == 0, err
    assert watcher.seen > 0, "the watcher saw no sockets at all; it would not catch a leak"
    assert sorted(watcher.bad) == []
    metrics = json.loads(out)
    run_dir = tmp_path / metrics["run_id"]
    job = json.loads((run_dir / "job.json").read_text())["job"]
    assert job["rounds"] == 2
    assert job["privacy"]["mechanism"] == "dp-sgd"
    assert job["secure_aggregation"]["mode"] == "bfv"
    # HE mode: the coordinator holds only the encrypted aggregate, never the model.
    assert (run_dir / "model.enc").stat().st_size > 0
    assert not (run_dir / "model.pt").exists()
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["run_id"] == metrics["run_id"]
    assert len(saved["rounds"]) == 2
    assert saved["final_accuracy"] >= 0.85
    assert saved["final_checkpoint"]["tree_size"] > 0
    assert all(0 < eps <= 3.0 for eps in saved["privacy"]["epsilon_per_site"].values())
    for fmt in ("html", "pdf", "json"):
        assert (run_dir / f"report-{metrics['run_id']}.{fmt}").stat().st_size > 0
    # the command the demo prints last verifies with the witnesses the coordinator kit pins (issue 15)
    from fedinfra.cli.demo import verify_command

    printed = shlex.split(verify_command(run_dir))
    assert printed[:3] == ["fedinfra", "audit", "verify"]
    assert "--witnesses" in printed
    assert "--checkpoint" in printed  # the sites' receipts: a log cut back to an earlier cosigned checkpoint fails
    verify = subprocess.run([fedinfra_bin, *printed[1:]], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    assert "witnessed: checkpoint of tree size" in verify.stdout, verify.stdout
    assert "none beyond its end" in verify.stdout, verify.stdout
    # ... and so does the command the report's "How to verify" prints, run in the run directory
    report_doc = json.loads((run_dir / f"report-{metrics['run_id']}.json").read_text())
    printed = shlex.split(report_doc["verify"]["command"])
    verify = subprocess.run([fedinfra_bin, *printed[1:]], capture_output=True, text=True, check=False, cwd=run_dir)
    assert verify.returncode == 0, verify.stderr + verify.stdout
    assert "witnessed: checkpoint of tree size" in verify.stdout, verify.stdout
    # Every artifact with data or keys is private (issue 18): files 0600, directories 0700.
    loose = [
        f"{p.relative_to(run_dir)} {p.stat().st_mode & 0o777:o}"
        for p in [run_dir, *run_dir.rglob("*")]
        if not p.is_symlink() and p.stat().st_mode & 0o077
    ]
    assert loose == []
    assert any("private keys" in w for w in metrics["warnings"])
    # One verdict: an in-process simulation is "completed with findings" (no TLS, no node keys),
    # and the report's HIPAA table and findings say the same; pages 1-3 as PNG in the test output.
    report = json.loads((run_dir / f"report-{metrics['run_id']}.json").read_text())
    assert report["verdict"]["status"] == "completed with findings"
    hipaa = {row["ref"]: row["status"] for row in report["hipaa"]}
    assert hipaa["164.312(e)(1)"] == "not met"
    tls_rule = next(g for g in report["finding_grid"] if g["rule_id"] == "hipaa.transmission-security")
    assert "pass" not in tls_rule["cells"].values()
    if shutil.which("pdftoppm"):
        out_dir = Path(os.environ.get("FEDINFRA_TEST_OUTPUT", tmp_path))
        out_dir.mkdir(parents=True, exist_ok=True)
        pdf = run_dir / f"report-{metrics['run_id']}.pdf"
        subprocess.run(["pdftoppm", "-r", "60", "-f", "1", "-l", "3", "-png", str(pdf), str(out_dir / "demo-report")],
                       check=True)
        assert len(list(out_dir.glob("demo-report-*.png"))) == 3


def test_demo_without_protection_is_refused_by_policy_and_audited(fedinfra_bin: str, tmp_path: Path) -> None:
    res = subprocess.run(
        [fedinfra_bin, "demo", "--privacy", "none", "--rounds", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=DEMO_BUDGET_S,
        check=False,
    )
    assert res.returncode == 1
    assert "hipaa.update-protection" in res.stderr
    assert "Traceback" not in res.stderr
    (run_dir,) = list(tmp_path.iterdir())
    verify = subprocess.run(
        [fedinfra_bin, "audit", "show", str(run_dir / "audit.sqlite"), "--type", "run.failed", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "run.failed" in verify.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sites", "0"], "--sites"),
        (["--sites", "-3"], "--sites"),
        (["--sites", "400"], "--sites"),
        (["--rounds", "0"], "--rounds"),
        # user-level DP splits its noise across devices: only under a secure sum (issue 14)
        (["--scenario", "edge", "--privacy", "dp"], "--privacy dp+he"),
    ],
)
def test_demo_rejects_bad_flags_with_one_line_and_writes_nothing(
    fedinfra_bin: str, tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "runs"
    res = subprocess.run(
        [fedinfra_bin, "demo", *args, "--out", str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("privacy", "max_bytes"),
    [
        # the default, encrypted: the 650 8-bit lanes fit one packed BFV ciphertext (N = 4096), ~33 kB
        ("dp+he", 40_000),
    ],
)
def test_edge_demo_federates_devices_with_user_level_dp_and_compressed_updates(
    fedinfra_bin: str, tmp_path: Path, privacy: str, max_bytes: int
) -> None:
    res = subprocess.run(
        [
            fedinfra_bin,
            "demo",
            "--scenario",
            "edge",
            "--devices",
            "10",
            "--rounds",
            "2",
            "--privacy",
            privacy,
            "--out",
            str(tmp_path),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    run_dir = tmp_path / metrics["run_id"]
    job = json.loads((run_dir / "job.json").read_text())["job"]
    assert job["privacy"]["mechanism"] == "user-dp"
    assert job["compression"]["bits"] == 8
    assert all(r["replies"] >= 2 for r in metrics["rounds"])  # Poisson, 20% of 10 devices, floor 2
    # 10 devices are too few for user-level DP to mean much: the demo says so, on stderr and in its output.
    assert any("only 10 sites" in w for w in metrics["warnings"])
    assert "warning: user-level DP is weak here" in res.stderr
    from fedinfra.audit import AuditLog

    with AuditLog.open(run_dir / "audit.sqlite") as log:
        received = log.entries(type="update.received")
        spent = log.entries(type="budget.spent")
    assert received
    assert spent
    sizes = [int(str(e.details["bytes_sent"])) for e in received]
    assert max(sizes) < max_bytes
    assert all(e.details["mechanism"] == "user-dp" for e in spent)


@pytest.mark.slow
def test_mixed_federation_of_hospitals_and_bedside_devices_reports_both_kinds(
    fedinfra_bin: str, tmp_path: Path
) -> None:
    res = subprocess.run(
        [fedinfra_bin, "demo", "--sites", "2", "--devices", "2", "--rounds", "1", "--out", str(tmp_path),
         "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert sorted(metrics["sites"]) == ["device-2", "device-3", "hospital-0", "hospital-1"]
    report = json.loads((tmp_path / metrics["run_id"] / f"report-{metrics['run_id']}.json").read_text())
    organisations = {p["site"]: p["organisation"] for p in report["participants"]}
    assert organisations["device-2"].startswith("Simulated device")
    assert organisations["hospital-0"].startswith("Simulated hospital")
