"""Install the edge client into a temporary prefix from this checkout, run it, remove it.

Dependencies already installed in the test interpreter are reused (``--reuse-site``) so
the test needs PyPI only for the build backend, not for torch and friends.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "edge" / "install.sh"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _install(prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    site = sysconfig.get_paths()["purelib"]
    cmd = ["bash", str(INSTALL), "--prefix", str(prefix), "--python", sys.executable, "--reuse-site", site, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)


def test_install_preflight_reinstall_and_uninstall(tmp_path):
    prefix = tmp_path / "edge"
    first = _install(prefix, "--server", "127.0.0.1:9092")
    assert first.returncode == 0, first.stderr[-2000:]
    fedinfra = prefix / "venv" / "bin" / "fedinfra"

    version = subprocess.run([str(fedinfra), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0
    assert version.stdout.startswith("fedinfra ")

    device = prefix / "etc" / "device.toml"
    pre = subprocess.run(
        [str(fedinfra), "edge", "start", "--device", str(device), "--check", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert pre.returncode in (0, 1), pre.stderr  # 1 = a condition (e.g. idle) does not hold now
    doc = json.loads(pre.stdout)
    assert doc["server"] == "127.0.0.1:9092"
    assert doc["state_dir"] == str(prefix / "state")
    assert {c["name"] for c in doc["conditions"]["checks"]} >= {"power", "battery", "idle"}

    # Starting without a kit is bad input (exit 2), which the unit does not restart.
    nokit = subprocess.run(
        [str(fedinfra), "edge", "start", "--device", str(device), "--kit", str(tmp_path / "nokit")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert nokit.returncode == 2
    assert "kit" in nokit.stderr

    unit = prefix / "lib" / "fedinfra-edge.service"
    assert f"ExecStart={fedinfra} edge start" in unit.read_text()
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
        )
        assert verify.returncode == 0, verify.stderr

    # Idempotent: a second run keeps the edited profile and the state.
    (prefix / "state" / "ledger").mkdir()
    (prefix / "state" / "ledger" / "spent.db").write_bytes(b"ledger")
    device.write_text(device.read_text().replace("poll_s = 30", "poll_s = 10"))
    data_dir = tmp_path / "device-data"
    data_dir.mkdir()
    (data_dir / "site.toml").write_text('name = "edge-0"\n')
    second = _install(prefix, "--site", str(data_dir / "site.toml"))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "poll_s = 10" in device.read_text()
    assert f"--kit {prefix}/etc/kit --site {data_dir}/site.toml\n" in unit.read_text()

    # The data declaration is remembered: a plain re-run keeps it in the unit.
    third = _install(prefix)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"--site {data_dir}/site.toml" in unit.read_text()
    missing = _install(prefix, "--site", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2
    assert "--site" in missing.stderr

    # Uninstall removes what the installer created and keeps the ledger (spent budget).
    gone = subprocess.run(
        ["bash", str(INSTALL), "--prefix", str(prefix), "--uninstall"], capture_output=True, text=True, timeout=120
    )
    assert gone.returncode == 0
    assert sorted(p.name for p in prefix.iterdir()) == ["state"]
    assert (prefix / "state" / "ledger" / "spent.db").read_bytes() == b"ledger"
    purge = subprocess.run(
        ["bash", str(INSTALL), "--prefix", str(prefix), "--uninstall", "--purge"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert purge.returncode == 0


def test_installer_rejects_a_bad_server_address(tmp_path):
    bad = subprocess.run(
        ["bash", str(INSTALL), "--prefix", str(tmp_path / "p"), "--server", "not an address"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2
    assert "--server must be host:port" in bad.stderr


# --- fedinfra[edge] is a slim install -------------------------------------------------------
# A fresh prefix, no --reuse-site: torch's CPU build first (as `make` does), then the installer
# puts this checkout in with only the edge extra. Nothing of the server stack may come along,
# and the client path (preflight, ClientApp, a round with user-level DP, compression and HE)
# must still work; server-only commands must say which extra to install.

# Where the coordinator-only packages are; opacus stays in the base install: devices charge
# their own ledger with its accountants (and run DP-SGD when a job asks for it).
SERVER_ONLY = ("ray", "sklearn", "matplotlib", "weasyprint", "psycopg", "pyarrow")
CLIENT_STACK = ("torch", "flwr", "opacus", "tenseal", "cryptography", "sqlalchemy", "psutil")
_SKIP = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "results"
)
_FIND = (
    "import importlib.util, json, sys; "
    "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))"
)

# Runs inside the slim venv: one device, deployed (its own site.toml and CSV), trains round 1 of
# a user-level DP job twice - once with 8-bit top-k compression, once 8-bit and encrypted (packed BFV).
_ROUND = """
import json, sys
from pathlib import Path
from fedinfra.config import JobSpec
from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.config.wire import TrainInstruction
from fedinfra.models import build_model, get_weights
from fedinfra.privacy import PrivacyLedger
from fedinfra.runtime.provision import provision
from fedinfra.site.context import site_context
from fedinfra.site.round import run_round

work = Path(sys.argv[1])
result = {}
for kind in ("compressed", "he"):
    job = JobSpec.model_validate_json((work / f"job-{kind}.json").read_text())
    node = {"site-manifest": str(work / "site.toml"), "state-dir": str(work / f"home-{kind}")}
    if kind == "he":
        consortium = ConsortiumConfig(
            name="slim", scenario="edge", sites=["device-0"], secure_aggregation=job.secure_aggregation
        )
        provision(consortium, work / "kits")
        node["kit"] = str(work / "kits" / "sites" / "device-0")
    ctx = site_context(node, job)
    model = build_model(job.model, num_features=int(ctx.data.x.shape[1]), num_classes=10, seed=0)
    instruction = TrainInstruction(
        run_id=f"slim-{kind}", round=1, phase="train", job=job.model_dump(mode="json"), sampled=20, admitted=100
    )
    out = run_round(ctx, instruction, get_weights(model), tls=True, sampled=20)
    ledger = PrivacyLedger(ctx.home.ledger)
    try:
        spent = ledger.spent(dataset_fingerprint=ctx.fingerprint)
    finally:
        ledger.close()
    result[kind] = {
        "details": out.report.details,
        "compressed": len(out.compressed or b""),
        "ciphertext": len(out.ciphertext or b""),
        "plaintext": out.update is not None,
        "spent": spent,
    }
result["modules"] = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps(result, default=str))
"""


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prefix of a fresh ``fedinfra[edge]`` install made by edge/install.sh."""
    root = tmp_path_factory.mktemp("slim")
    src = root / "src"  # a copy: building in the checkout would leave build/ behind
    shutil.copytree(REPO, src, symlinks=True, ignore=_SKIP)
    prefix = root / "edge"
    venv = prefix / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    torch = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "torch==2.13.0"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert torch.returncode == 0, torch.stderr[-2000:]
    cmd = ["bash", str(INSTALL), "--prefix", str(prefix), "--source", str(src), "--python", sys.executable]
    installed = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return prefix


def _present(prefix: Path, *modules: str) -> dict[str, bool]:
    proc = subprocess.run(
        [str(prefix / "venv" / "bin" / "python"), "-c", _FIND, *modules],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return dict(json.loads(proc.stdout))


def _device_files(work: Path) -> None:
    """A device's site.toml and CSV (digits), a compressed job and a user-level DP job under HE."""
    import csv

    import tomli_w
    from sklearn.datasets import load_digits

    from fedinfra.config import JobSpec
    from fedinfra.privacy import user_level_epsilon
    from fedinfra.site.simulated import simulated_manifest

    work.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    columns = [f"px{i}" for i in range(64)]
    with (work / "device.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*columns, "digit"])
        for x, y in zip(digits.data[:240], digits.target[:240], strict=True):
            writer.writerow([*(f"{v:g}" for v in x), int(y)])
    eps = user_level_epsilon(
        noise_multiplier=1.0, sites_per_round=20, total_sites=100, rounds=3, delta=1e-5, accountant="rdp"
    )
    base = {
        "scenario": "edge",
        "purpose": "on-device-model-improvement",
        "policy_packs": ["gdpr"],
        "rounds": 3,
        "data": {"dataset": "digits"},
        "model": {"kind": "mlp", "hidden": [32]},
        "sites": {"count": 100, "fraction": 0.2, "min_sites": 2},
        "training": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "privacy": {
            "mechanism": "user-dp",
            "epsilon": round(eps + 0.005, 2),
            "noise_multiplier": 1.0,
            "max_grad_norm": 1.0,
            "delta": 1e-5,
            "accountant": "rdp",
        },
    }
    jobs = {
        # Plaintext compression carries no user-level DP: its noise share needs a secure sum.
        "compressed": {
            **base,
            "privacy": {"mechanism": "none"},
            "compression": {"bits": 8, "clip": 1.0, "topk_fraction": 0.1},
        },
        # Compressed and encrypted: the codec's 8-bit lanes are the compression's quantization.
        "he": {
            **base,
            "compression": {"bits": 8, "clip": 1.0},
            "secure_aggregation": {"mode": "bfv", "quant_bits": 8, "max_sites": 20, "example_cap": 1},
        },
    }
    for kind, doc in jobs.items():
        (work / f"job-{kind}.json").write_text(JobSpec.model_validate(doc).model_dump_json())
    manifest = simulated_manifest(JobSpec.model_validate(jobs["compressed"]), "device-0")
    data = manifest.model_dump(mode="python", exclude_none=True)
    data["dataset"] = {"path": "device.csv", "format": "csv", "label_column": "digit", "feature_columns": columns}
    (work / "site.toml").write_text(tomli_w.dumps(data))


def test_edge_extra_installs_no_server_package(slim):
    present = _present(slim, *SERVER_ONLY, *CLIENT_STACK)

    assert [m for m in SERVER_ONLY if present[m]] == []
    assert [m for m in CLIENT_STACK if not present[m]] == []
    check = subprocess.run(
        [str(slim / "venv" / "bin" / "python"), "-m", "pip", "check"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert check.returncode == 0, check.stdout  # every installed distribution has its dependencies


def test_slim_install_runs_version_preflight_and_loads_the_client_app(slim):
    fedinfra = slim / "venv" / "bin" / "fedinfra"

    version = subprocess.run([str(fedinfra), "--version"], capture_output=True, text=True, timeout=60, check=False)
    pre = subprocess.run(
        [str(fedinfra), "edge", "start", "--device", str(slim / "etc" / "device.toml"), "--check", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    app = subprocess.run(
        [str(slim / "venv" / "bin" / "python"), "-c", "import fedinfra.site.app as a; print(type(a.app).__name__)"],
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("fedinfra ")
    assert pre.returncode in (0, 1), pre.stderr  # 1 = a condition (e.g. idle) does not hold now
    assert {c["name"] for c in json.loads(pre.stdout)["conditions"]["checks"]} >= {"power", "battery", "idle"}
    assert app.returncode == 0, app.stderr[-2000:]
    assert app.stdout.strip() == "ClientApp"


def test_slim_install_trains_a_compressed_round_and_a_user_level_dp_round_encrypted(slim, tmp_path):
    work = tmp_path / "device"
    _device_files(work)

    proc = subprocess.run(
        [str(slim / "venv" / "bin" / "python"), "-c", _ROUND, str(work)],
        capture_output=True, text=True, timeout=300, check=False,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    compressed, he = result["compressed"], result["he"]
    assert he["details"]["mechanism"] == "user-dp"
    assert 0 < compressed["details"]["bytes_sent"] == compressed["compressed"] < compressed["details"]["bytes_dense"]
    assert 0 < he["ciphertext"] == he["details"]["bytes_sent"]
    assert he["details"]["quantized_by"] == "bfv"
    assert not compressed["plaintext"]
    assert not he["plaintext"]
    assert he["spent"] == he["details"]["epsilon_total"] > 0
    assert {"torch", "opacus", "tenseal"} <= set(result["modules"])


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["demo", "--rounds", "1"], "fedinfra demo"),
        (["compliance", "report", "--store", "audit.sqlite", "--run", "r1"], "fedinfra compliance report"),
    ],
)
def test_server_only_commands_name_the_extra_to_install(slim, tmp_path, argv, command):
    proc = subprocess.run(
        [str(slim / "venv" / "bin" / "fedinfra"), *argv],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )

    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {command} needs the 'server' extra: pip install 'fedinfra[server]'"
    assert list(tmp_path.iterdir()) == []  # refused before doing anything
