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
    second = _install(prefix)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "poll_s = 10" in device.read_text()

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
