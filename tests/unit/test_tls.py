"""TLS material: CA, coordinator certificate checks, SuperNode auth keys."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedinfra.crypto.tls import (
    PemPair,
    check_server_certificate,
    generate_ca,
    generate_node_auth_key,
    issue_server_certificate,
    load_node_auth_public_key,
    node_auth_public_key,
)
from fedinfra.errors import ConfigError

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _write(tmp: Path, ca: PemPair, server: PemPair) -> tuple[Path, Path, Path]:
    paths = (tmp / "server.crt", tmp / "server.key", tmp / "ca.crt")
    paths[0].write_bytes(server.public)
    paths[1].write_bytes(server.private)
    paths[2].write_bytes(ca.public)
    return paths


@pytest.fixture(scope="module")
def ca() -> PemPair:
    return generate_ca("test CA", now=NOW)


def test_a_certificate_from_the_ca_passes_and_lists_its_sans(tmp_path: Path, ca: PemPair) -> None:
    server = issue_server_certificate(ca, common_name="coord", sans=["coord.example.org", "10.0.0.5"], now=NOW)
    names = check_server_certificate(*_write(tmp_path, ca, server), host="10.0.0.5", now=NOW)
    assert names == ["coord.example.org", "10.0.0.5"]


def test_an_expired_certificate_is_refused_naming_the_date(tmp_path: Path, ca: PemPair) -> None:
    server = issue_server_certificate(ca, common_name="coord", sans=["127.0.0.1"], valid_days=1, now=NOW)
    with pytest.raises(ConfigError, match="expired"):
        check_server_certificate(*_write(tmp_path, ca, server), now=NOW + dt.timedelta(days=3))


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path, ca: PemPair) -> None:
    other = generate_ca("other", now=NOW)
    server = issue_server_certificate(other, common_name="coord", sans=["127.0.0.1"], now=NOW)
    with pytest.raises(ConfigError, match="not issued by the CA"):
        check_server_certificate(*_write(tmp_path, ca, server), now=NOW)


def test_a_host_missing_from_the_sans_is_refused(tmp_path: Path, ca: PemPair) -> None:
    server = issue_server_certificate(ca, common_name="coord", sans=["coord.example.org"], now=NOW)
    with pytest.raises(ConfigError, match="reached as"):
        check_server_certificate(*_write(tmp_path, ca, server), host="other.example.org", now=NOW)


def test_a_key_from_another_pair_is_refused(tmp_path: Path, ca: PemPair) -> None:
    server = issue_server_certificate(ca, common_name="coord", sans=["127.0.0.1"], now=NOW)
    stranger = issue_server_certificate(ca, common_name="coord", sans=["127.0.0.1"], now=NOW)
    cert, key, ca_path = _write(tmp_path, ca, server)
    key.write_bytes(stranger.private)
    with pytest.raises(ConfigError, match="does not match"):
        check_server_certificate(cert, key, ca_path, now=NOW)


def test_node_auth_keys_are_p384_openssh_as_flower_loads_them(tmp_path: Path) -> None:
    pair = generate_node_auth_key()
    private = serialization.load_ssh_private_key(pair.private, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert pair.public.startswith(b"ecdsa-sha2-nistp384 ")
    assert node_auth_public_key(pair.private) == pair.public
    (tmp_path / "node.pub").write_bytes(pair.public)
    assert load_node_auth_public_key(tmp_path / "node.pub") == pair.public


def test_a_non_ec_public_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (tmp_path / "node.pub").write_bytes(pub)
    with pytest.raises(ConfigError, match="not an EC public key"):
        load_node_auth_public_key(tmp_path / "node.pub")
