"""Provisioning kits: contents, permissions, no overwrite without force, kit loading."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedinfra.config.consortium import ConsortiumConfig, load_consortium
from fedinfra.config.server import load_server
from fedinfra.errors import ConfigError
from fedinfra.runtime.kit import load_coordinator_transport, load_site_transport
from fedinfra.runtime.provision import provision

REPO = Path(__file__).resolve().parents[2]


def _consortium() -> ConsortiumConfig:
    return ConsortiumConfig(
        name="unit", sites=["alpha", "beta"], coordinator={"address": "coord.example.org:9092"},
        secure_aggregation={"mode": "none"},
    )


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kits")
    provision(_consortium(), out)
    return out


def test_every_secret_file_is_owner_only(kits: Path) -> None:
    coord = kits / "coordinator"
    secrets = [coord / "superlink.key", coord / "audit_signing.key", kits / "ca" / "ca.key"]
    secrets += [kits / "sites" / s / n for s in ("alpha", "beta") for n in ("supernode_auth.key", "update_signing.key")]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_the_coordinator_kit_lists_each_site_key_and_holds_no_site_secret(kits: Path) -> None:
    kit = load_coordinator_transport(kits / "coordinator")
    assert sorted(kit.site_keys) == ["alpha", "beta"]
    assert kit.address == "coord.example.org:9092"
    assert not (kits / "coordinator" / "supernode_auth.key").exists()
    assert not (kits / "coordinator" / "update_signing.key").exists()


def test_a_site_kit_pins_the_consortium_ca_and_names_its_site(kits: Path) -> None:
    kit = load_site_transport(kits / "sites" / "beta")
    assert kit.site_id == "beta"
    assert kit.ca.read_bytes() == (kits / "ca" / "ca.crt").read_bytes()
    assert (kits / "sites" / "beta" / "README.md").read_text().count("Secret") == 1


def test_the_certificate_names_the_address_and_loopback(kits: Path) -> None:
    from fedinfra.crypto.tls import check_server_certificate

    kit = load_coordinator_transport(kits / "coordinator")
    names = check_server_certificate(kit.cert, kit.key, kit.ca, host="coord.example.org")
    assert names[:1] == ["coord.example.org"]
    assert "127.0.0.1" in names


def test_rerunning_without_force_keeps_every_key(kits: Path) -> None:
    before = (kits / "sites" / "alpha" / "supernode_auth.key").read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        provision(_consortium(), kits)
    assert (kits / "sites" / "alpha" / "supernode_auth.key").read_bytes() == before


def test_force_replaces_the_keys(tmp_path: Path) -> None:
    provision(_consortium(), tmp_path)
    before = (tmp_path / "sites" / "alpha" / "supernode_auth.key").read_bytes()
    provision(_consortium(), tmp_path, force=True)
    assert (tmp_path / "sites" / "alpha" / "supernode_auth.key").read_bytes() != before


def test_a_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    provision(_consortium(), tmp_path)
    (tmp_path / "sites" / "alpha" / "supernode_auth.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_site_transport(tmp_path / "sites" / "alpha")


def test_a_site_kit_passed_as_coordinator_kit_is_refused(kits: Path) -> None:
    with pytest.raises(ConfigError, match="coordinator kit"):
        load_coordinator_transport(kits / "sites" / "alpha")


def test_the_shipped_examples_load() -> None:
    cfg = load_consortium(REPO / "server" / "consortium.example.toml")
    assert cfg.sites
    server = load_server(REPO / "server" / "server.toml")
    assert server.host == "127.0.0.1"
    assert server.app_dir == (REPO / "server").resolve()


def test_a_malformed_coordinator_address_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "consortium.toml"
    path.write_text('name = "x"\nsites = ["a"]\n[coordinator]\naddress = "nohost"\n')
    with pytest.raises(ConfigError, match=r"coordinator\.address"):
        load_consortium(path)


def test_keys_init_makes_each_sites_cosigner_key_and_the_coordinator_kit_pins_it(kits: Path) -> None:
    """Issue 15: simulation/demo kits pin the cosigner keys too (the demo's verify command uses them)."""
    from fedinfra.audit.cosign import Cosigner, load_witnesses
    from fedinfra.runtime.coordinator_kit import settings_from_kit

    settings = settings_from_kit(kits / "coordinator", store="x", tls=False, in_process=True, he=False)
    assert settings.site_cosigner_keys is not None
    for site in ("alpha", "beta"):
        key = kits / "sites" / site / "cosigner.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert Cosigner.from_skey(key.read_text()).vkey == settings.site_cosigner_keys[site]
        assert not (kits / "coordinator" / "cosigner.key").exists()
    assert len(load_witnesses([kits / "coordinator"])) == 2
    with pytest.raises(ConfigError, match=r"pins no cosigner keys|not a coordinator kit"):
        load_witnesses([kits / "sites" / "alpha"])
