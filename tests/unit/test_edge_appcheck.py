"""``fedinfra edge start`` runs its SuperNode under the site's verifying launcher (issue 12).

Real FABs (Flower's own reproducible build of ``server/`` and of a crafted copy), real
Ed25519 release keys, and Flower's real ``install_from_fab`` in a child process that
installs the guard exactly as the warm launcher's forked task processes do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedinfra.config.device import DeviceProfile
from fedinfra.crypto.release import REFUSED, fab_digest
from fedinfra.edge.kit import load_edge_kit
from fedinfra.errors import ConfigError
from fedinfra.runtime.appcheck import RELEASES_DIR, SITE_AUDIT_FILE, approve
from fedinfra.runtime.edge_launch import edge_supernode_argv
from fedinfra.runtime.release import build_app_fab, new_release_key, sign_app, write_record

REPO = Path(__file__).resolve().parents[2]
DEVICE = "edge-0"

#: What a forked task process of the warm launcher does with a FAB: guard, then Flower installs.
_TASK = """
import sys
from pathlib import Path
import flwr.supernode.runtime.run_clientapp as runner
from fedinfra.runtime.appcheck import guard_clientapp
argv = sys.argv[1:]
guard_clientapp(Path(argv[argv.index("--kit") + 1]), Path(argv[argv.index("--state-dir") + 1]))
try:
    print(runner.install_from_fab(FAB, skip_prompt=True))
except Exception as exc:
    print(f"ERROR {type(exc).__name__}: {exc}")
    raise SystemExit(3)
"""


def _device(tmp_path: Path, public_hex: str | None) -> tuple[DeviceProfile, Path]:
    kit = tmp_path / "kit"
    kit.mkdir()
    release = f'[release]\npublic_keys = "{public_hex}"\n' if public_hex else ""
    (kit / "kit.toml").write_text(
        f'[kit]\nformat = "fedinfra-kit/1"\nrole = "site"\nsite_id = "{DEVICE}"\nconsortium = "c"\n{release}'
    )
    profile = DeviceProfile(name=DEVICE, server="127.0.0.1:9", insecure=True, state_dir=tmp_path / "state")
    return profile, kit


def _task(argv: list[str], fab: Path, home: Path) -> subprocess.CompletedProcess[str]:
    launcher = argv[: argv.index("--")]  # the launcher's own options: --kit, --state-dir
    code = _TASK.replace("FAB", f"Path({str(fab)!r}).read_bytes()")
    return subprocess.run(
        [sys.executable, "-c", code, *launcher], capture_output=True, text=True, timeout=120, check=False,
        env={"FLWR_HOME": str(home), "PATH": "/usr/bin:/bin", "FLWR_TELEMETRY_ENABLED": "0",
             "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONPATH": str(REPO)},
    )


def test_the_edge_launcher_refuses_an_unpinned_release_and_runs_the_approved_one(tmp_path: Path) -> None:
    secret, public_hex = new_release_key(tmp_path / "release")
    profile, kit_dir = _device(tmp_path, public_hex)
    approve(write_record(sign_app(REPO / "server", secret.read_bytes()), tmp_path / "rel.json"), kit_dir)
    kit = load_edge_kit(kit_dir, device=DEVICE, require_tls=False)

    argv = edge_supernode_argv(profile, kit, executable="flower-supernode", manifest=None, port=9099)

    # The edge SuperNode runs under the warm launcher, which checks FABs against this kit.
    assert argv[1:3] == ["-m", "fedinfra.runtime.warm"]
    assert argv[argv.index("--kit") + 1] == str(kit_dir.resolve())
    assert argv[argv.index("--state-dir") + 1] == str(profile.state_dir.resolve())
    assert argv[argv.index("--isolation") + 1] == "process"
    assert "flower-supernode" in argv[argv.index("--") + 1 :]

    # A crafted app signed by a key the device did not pin, its record even in releases/.
    crafted = tmp_path / "crafted"
    shutil.copytree(REPO / "server", crafted)
    marker = tmp_path / "ran"
    (crafted / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    manifest = crafted / "pyproject.toml"
    text = manifest.read_text().replace('fab-include = ["/README.md"]', 'fab-include = ["/README.md", "/evil.py"]')
    manifest.write_text(text.replace("fedinfra.runtime.apps:client_app", "evil:app"))
    other, _ = new_release_key(tmp_path / "other")
    forged = sign_app(crafted, other.read_bytes())
    write_record(forged, kit_dir / RELEASES_DIR / "forged.json")
    crafted_fab = tmp_path / "crafted.fab"
    crafted_fab.write_bytes(build_app_fab(crafted).content)
    approved_digest = fab_digest(build_app_fab(REPO / "server").content)
    assert forged["fab_sha256"] == fab_digest(crafted_fab.read_bytes()) != approved_digest

    refused = _task(argv, crafted_fab, tmp_path / "flwr-refused")
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert refused.stdout.strip().splitlines() == [f"ERROR CryptoError: {REFUSED}"]
    assert not marker.exists()
    assert not (tmp_path / "flwr-refused" / "apps").exists()  # nothing installed
    audit = [json.loads(line) for line in (profile.state_dir / SITE_AUDIT_FILE).read_text().splitlines()]
    assert [(e["event"], e["fab_sha256"]) for e in audit] == [("app.refused", forged["fab_sha256"])]
    assert str(crafted) not in json.dumps(audit)

    approved_fab = tmp_path / "approved.fab"
    approved_fab.write_bytes(build_app_fab(REPO / "server").content)
    ran = _task(argv, approved_fab, tmp_path / "flwr-ok")
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert any((tmp_path / "flwr-ok" / "apps").iterdir())  # Flower installed the approved release
    assert len((profile.state_dir / SITE_AUDIT_FILE).read_text().splitlines()) == 1


def test_a_device_kit_pinning_no_release_key_is_refused_before_anything_starts(tmp_path: Path) -> None:
    profile, kit_dir = _device(tmp_path, None)
    kit = load_edge_kit(kit_dir, device=DEVICE, require_tls=False)
    with pytest.raises(ConfigError, match=r"release"):
        edge_supernode_argv(profile, kit, executable="flower-supernode", manifest=None, port=9099)
    assert not (profile.state_dir / "superexec.secret").exists()


def test_under_the_launcher_only_its_forked_rounds_are_held_to_the_limits() -> None:
    """The launcher's long-lived SuperNode child is not a round; a fork of it is."""
    import time

    import psutil

    from fedinfra.config.device import LimitsSpec
    from fedinfra.edge.limits import ProcessWatchdog

    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(60)\n"
    script = f"import os, subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {busy!r}])\n" \
        f"if os.fork() == 0:\n    exec({busy!r})\ntime.sleep(60)\n"
    root = subprocess.Popen([sys.executable, "-c", script])
    try:
        proc = psutil.Process(root.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kids = proc.children()
            if len(kids) == 2 and all(k.cpu_times().user + k.cpu_times().system > 0.5 for k in kids):
                break
            time.sleep(0.1)
        fork = next(k for k in proc.children() if k.cmdline() == proc.cmdline())
        other = next(k for k in proc.children() if k.cmdline() != proc.cmdline())
        limits = LimitsSpec(max_cpu_seconds=0.3)
        found = ProcessWatchdog(root.pid, limits, forks_only=True).check_once()
        assert [v.pid for v in found] == [fork.pid]
        assert other.is_running()
        # Without forks_only (Flower's stock launcher) every child counts: the SuperNode would be killed.
        assert other.pid in [v.pid for v in ProcessWatchdog(root.pid, limits).check_once()]
    finally:
        for k in psutil.Process(root.pid).children(recursive=True):
            k.kill()
        root.kill()
        root.wait()


def test_edge_check_reports_the_pinned_release_keys_and_the_approved_releases(
    tmp_path: Path, fedinfra_bin: str
) -> None:
    from fedinfra.crypto import _sign
    from fedinfra.crypto.release import key_id
    from fedinfra.runtime.release import record_name

    secret, public_hex = new_release_key(tmp_path / "release")
    _, kit = _device(tmp_path, public_hex)
    approved = approve(write_record(sign_app(REPO / "server", secret.read_bytes()), tmp_path / "r.json"), kit)
    stranger, _ = _sign.new_signing_key()
    forged = sign_app(REPO / "server", stranger)
    write_record({**forged, "version": "6.6.6"}, kit / RELEASES_DIR / record_name({**forged, "version": "6.6.6"}))
    device = tmp_path / "device.toml"
    device.write_text(
        f'name = "{DEVICE}"\nserver = "127.0.0.1:9"\ninsecure = true\nstate_dir = "state"\nprobe = "linux"\n'
        "[conditions]\nrequire_power = false\nmin_battery = 0.0\nrequire_idle = false\n"
    )

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([fedinfra_bin, "edge", "start", "--device", str(device), "--kit", str(kit), "--check",
                               *extra], capture_output=True, text=True, timeout=120, check=False)

    done = check("--format", "json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)["kit"]
    assert info["release_keys"] == [key_id(bytes.fromhex(public_hex))]
    by_version = {r["version"]: r for r in info["approved_releases"]}
    assert by_version["0.1.0"]["valid"] is True
    assert by_version["0.1.0"]["fab_sha256"] == json.loads(approved.read_text())["fab_sha256"]
    assert by_version["6.6.6"]["valid"] is False  # a record no pinned key signed is shown as ignored
    text = check()
    assert "release keys pinned: " + key_id(bytes.fromhex(public_hex)) in text.stdout
    assert "ignored" in text.stdout

    (kit / "kit.toml").write_text((kit / "kit.toml").read_text().split("[release]")[0])
    unpinned = check()
    assert unpinned.returncode == 2
    assert len(unpinned.stderr.strip().splitlines()) == 1
    assert "[release] public_keys" in unpinned.stderr
