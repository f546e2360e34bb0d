"""Signed app releases: a site accepts exactly the FABs it approved under a pinned key."""

from __future__ import annotations

import json
import subprocess
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from fedinfra.crypto import _sign
from fedinfra.crypto.release import REFUSED, check_fab, sign_release, verify_record
from fedinfra.errors import ConfigError, CryptoError
from fedinfra.runtime.appcheck import SITE_AUDIT_FILE, approve, check_app, guard_clientapp, pinned_keys
from fedinfra.runtime.release import build_app_fab, new_release_key, sign_app, write_record

REPO = Path(__file__).resolve().parents[2]


def _kit(tmp_path: Path, public_hex: str) -> Path:
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "kit.toml").write_text(f'[release]\npublic_keys = "{public_hex}"\n')
    return kit


def _modified(fab: bytes) -> bytes:
    out = BytesIO()
    with zipfile.ZipFile(BytesIO(fab)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr("evil.py", "import os\nos.system('id')\n")
    return out.getvalue()


def test_the_fab_is_built_reproducibly_as_flwr_run_builds_it() -> None:
    first, second = build_app_fab(REPO / "server"), build_app_fab(REPO / "server")
    assert first.content == second.content
    assert first.app == "fedinfra/fedinfra-app"


def test_a_signed_release_is_accepted_and_anything_else_refused() -> None:
    key, public = _sign.new_signing_key()
    other, other_public = _sign.new_signing_key()
    fab = build_app_fab(REPO / "server").content
    record = sign_release(key, fab, app="fedinfra/fedinfra-app", version="0.1.0", signed_at=1)

    assert check_fab(fab, [record], [public])["fab_sha256"] == record["fab_sha256"]
    cases = {
        "modified FAB": (_modified(fab), [record], [public]),
        "signed by another key": (fab, [sign_release(other, fab, app="x/y", version="1", signed_at=1)], [public]),
        "unsigned (no record)": (fab, [], [public]),
        "record edited after signing": (fab, [{**record, "version": "9.9.9"}], [public]),
        "record of another key id": (fab, [record], [other_public]),
    }
    for case, (data, records, keys) in cases.items():
        with pytest.raises(CryptoError) as info:
            check_fab(data, records, keys)
        assert str(info.value) == REFUSED, case  # one message: no oracle on which check failed


def test_a_record_with_a_mangled_signature_is_refused() -> None:
    key, public = _sign.new_signing_key()
    record = sign_release(key, b"fab", app="a/b", version="1", signed_at=1)
    for bad in ({**record, "signature": "zz"}, {k: v for k, v in record.items() if k != "signature"}):
        with pytest.raises(CryptoError):
            verify_record(bad, [public])


def test_a_site_refusal_is_audited_at_the_site_with_digests_only(tmp_path: Path) -> None:
    secret, public_hex = new_release_key(tmp_path / "release")
    kit = _kit(tmp_path, public_hex)
    state = tmp_path / "state"
    fab = build_app_fab(REPO / "server").content

    with pytest.raises(CryptoError):
        check_app(fab, kit, state)

    (line,) = (state / SITE_AUDIT_FILE).read_text().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "app.refused"
    assert len(entry["fab_sha256"]) == 64
    assert (state / SITE_AUDIT_FILE).stat().st_mode & 0o077 == 0
    assert secret.stat().st_mode & 0o077 == 0


def test_approve_then_run_only_that_release(tmp_path: Path) -> None:
    secret, public_hex = new_release_key(tmp_path / "release")
    kit = _kit(tmp_path, public_hex)
    record = write_record(sign_app(REPO / "server", secret.read_bytes()), tmp_path / "rel.json")

    approve(record, kit)

    assert check_app(build_app_fab(REPO / "server").content, kit, None)["version"] == "0.1.0"
    other_secret, _ = new_release_key(tmp_path / "other")
    forged = write_record(sign_app(REPO / "server", other_secret.read_bytes()), tmp_path / "forged.json")
    with pytest.raises(CryptoError):
        approve(forged, kit)


def test_a_kit_without_a_pinned_release_key_is_refused_in_one_line(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "kit.toml").write_text("[kit]\n")
    with pytest.raises(ConfigError, match=r"release"):
        pinned_keys(kit)


def test_the_guard_refuses_before_flower_installs_the_fab(tmp_path: Path) -> None:
    import flwr.supernode.runtime.run_clientapp as runner

    _, public_hex = new_release_key(tmp_path / "release")
    kit = _kit(tmp_path, public_hex)
    installed: list[bytes] = []
    original = runner.install_from_fab  # type: ignore[attr-defined]
    runner.install_from_fab = lambda fab, *a, **k: installed.append(fab)  # type: ignore[attr-defined]
    try:
        guard_clientapp(kit, tmp_path / "state")
        with pytest.raises(CryptoError):
            runner.install_from_fab(b"PK-not-approved", skip_prompt=True)  # type: ignore[attr-defined]
    finally:
        runner.install_from_fab = original  # type: ignore[attr-defined]
    assert installed == []


def test_cli_sign_approve_verify(tmp_path: Path, fedinfra_bin: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([fedinfra_bin, *args], capture_output=True, text=True, timeout=120, check=False)

    assert cli("app", "keygen", "--out", str(tmp_path / "rel")).returncode == 0
    public_hex = (tmp_path / "rel" / "release_signing.pub").read_text().strip()
    kit = _kit(tmp_path, public_hex)
    key = tmp_path / "rel" / "release_signing.key"
    signed = cli("app", "sign", "--app-dir", str(REPO / "server"), "--key", str(key), "--out", str(tmp_path / "r.json"))
    assert signed.returncode == 0, signed.stderr

    before = cli("app", "verify", "--kit", str(kit), "--app-dir", str(REPO / "server"))
    assert before.returncode == 1
    assert "refused" in before.stderr
    assert cli("app", "approve", "--release", str(tmp_path / "r.json"), "--kit", str(kit)).returncode == 0
    after = cli("app", "verify", "--kit", str(kit), "--app-dir", str(REPO / "server"), "--format", "json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["approved"] is True
