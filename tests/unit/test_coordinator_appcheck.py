"""The coordinator runs only a ServerApp its kit approved, as sites do (issue 12).

Real kits (:func:`provision`), real FABs built as ``flwr run`` builds them, Flower's real
``flwr-serverapp`` module patched by the guard; no SuperLink needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fedinfra.config import JobSpec
from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.crypto import _sign
from fedinfra.errors import ConfigError, CryptoError
from fedinfra.runtime.appcheck import COORDINATOR_AUDIT_FILE, RELEASES_DIR, guard_serverapp
from fedinfra.runtime.provision import provision
from fedinfra.runtime.release import build_app_fab, record_name, sign_app, write_record
from fedinfra.runtime.serverapp_guard import ENV_KIT, check_own_app, launcher_env, write_launcher
from fedinfra.runtime.submit import submit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coordinator-appcheck") / "kits"
    provision(ConsortiumConfig(name="c", sites=["a", "b"], coordinator={"address": "127.0.0.1:9092"}), out,
              app_dir=REPO / "server")
    return out


def _tampered(tmp_path: Path) -> Path:
    """The fedinfra app with its manifest edited: still names fedinfra's components, another FAB."""
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    shutil.copyfile(REPO / "server" / "README.md", app / "README.md")  # the manifest's fab-include
    manifest = (REPO / "server" / "pyproject.toml").read_text()
    assert 'runs-dir = "runs"' in manifest
    (app / "pyproject.toml").write_text(manifest.replace('runs-dir = "runs"', 'runs-dir = "/tmp/elsewhere"'))
    return app


def test_the_coordinator_kit_pins_the_release_key_and_approves_the_app(kits: Path) -> None:
    record = check_own_app(REPO / "server", kits / "coordinator")

    assert record["app"] == "fedinfra/fedinfra-app"
    assert any((kits / "coordinator" / RELEASES_DIR).glob("*.json"))


def test_an_app_the_coordinator_did_not_approve_is_refused_in_one_line_and_audited(
    kits: Path, tmp_path: Path
) -> None:
    app = _tampered(tmp_path)
    assert build_app_fab(app).content != build_app_fab(REPO / "server").content

    with pytest.raises(CryptoError) as info:
        check_own_app(app, kits / "coordinator", tmp_path / "state")

    assert "\n" not in str(info.value)
    assert "fedinfra app approve" in str(info.value)
    (line,) = (tmp_path / "state" / COORDINATOR_AUDIT_FILE).read_text().splitlines()
    assert json.loads(line)["event"] == "app.refused"
    assert (tmp_path / "state" / COORDINATOR_AUDIT_FILE).stat().st_mode & 0o077 == 0


def test_a_release_signed_by_an_unpinned_key_does_not_help(kits: Path, tmp_path: Path) -> None:
    kit = tmp_path / "coordinator"
    shutil.copytree(kits / "coordinator", kit)
    app = _tampered(tmp_path)
    stranger, _ = _sign.new_signing_key()
    record = sign_app(app, stranger)
    write_record(record, kit / RELEASES_DIR / record_name(record))  # dropped into the kit

    with pytest.raises(CryptoError):
        check_own_app(app, kit)


def test_submit_refuses_before_anything_reaches_the_superlink(kits: Path, tmp_path: Path) -> None:
    app = _tampered(tmp_path)
    home = tmp_path / "flwr-home"  # no config.toml: had 'flwr run' been reached, it would fail differently

    with pytest.raises(CryptoError):
        submit(JobSpec(), run_id="r1", runs_dir=tmp_path / "runs", app_dir=app, flwr_home=home,
               kit=kits / "coordinator", audit_dir=tmp_path / "state")

    assert not (tmp_path / "runs").exists()  # no run directory, no flower-run-config.toml
    assert (tmp_path / "state" / COORDINATOR_AUDIT_FILE).is_file()


def test_the_superlinks_serverapp_refuses_before_flower_installs_the_fab(kits: Path, tmp_path: Path) -> None:
    import importlib

    runner = importlib.import_module("flwr.superlink.runtime.run_serverapp")
    installed: list[bytes] = []
    original = runner.install_from_fab
    runner.install_from_fab = lambda fab, *a, **k: installed.append(fab)  # type: ignore[assignment]
    try:
        guard_serverapp(kits / "coordinator", tmp_path / "state")
        with pytest.raises(CryptoError):
            runner.install_from_fab(build_app_fab(_tampered(tmp_path)).content, skip_prompt=True)
        assert installed == []
        approved = build_app_fab(REPO / "server").content
        runner.install_from_fab(approved, skip_prompt=True)
    finally:
        runner.install_from_fab = original
    assert installed == [approved]
    (line,) = (tmp_path / "state" / COORDINATOR_AUDIT_FILE).read_text().splitlines()
    assert json.loads(line)["reason"].startswith("app release refused")


def test_the_superlink_finds_the_checking_flwr_serverapp_first_on_its_path(kits: Path, tmp_path: Path) -> None:
    env = launcher_env({"PATH": "/usr/bin"}, tmp_path / "state", kits / "coordinator")

    found = shutil.which("flwr-serverapp", path=env["PATH"])
    assert found is not None
    assert Path(found).parent == tmp_path / "state" / "serverapp-bin"
    assert env[ENV_KIT] == str((kits / "coordinator").resolve())


def test_the_launcher_without_a_kit_runs_nothing(tmp_path: Path) -> None:
    script = write_launcher(tmp_path) / "flwr-serverapp"
    env = {k: v for k, v in os.environ.items() if k != ENV_KIT}

    done = subprocess.run([str(script), "--runtime-api-address", "127.0.0.1:1", "--token", "x"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert ENV_KIT in done.stderr


def test_a_coordinator_kit_that_pins_no_release_key_refuses_to_start(kits: Path, tmp_path: Path) -> None:
    from fedinfra.config.server import ServerConfig
    from fedinfra.runtime.deploy import start_superlink
    from fedinfra.runtime.kit import load_coordinator_transport

    kit = tmp_path / "coordinator"
    shutil.copytree(kits / "coordinator", kit)
    toml = kit / "kit.toml"
    text = toml.read_text()
    start = text.index("[release]")
    end = text.find("\n[", start + 1)
    toml.write_text(text[:start] + (text[end + 1:] if end != -1 else ""))
    cfg = ServerConfig(port=9092, state_dir=tmp_path / "state").resolved(tmp_path)

    with pytest.raises(ConfigError, match=r"\[release\] public_keys"):
        start_superlink(cfg, load_coordinator_transport(kit))
    assert not (tmp_path / "state" / "superlink.json").exists()
