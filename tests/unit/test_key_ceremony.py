"""Keys born where they are used: the operator never holds a site secret; the HE key travels sealed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.crypto import _sign, load_coordinator_kit, load_site_kit
from fedinfra.crypto.ceremony import SEAL_REFUSED, make_request, open_he_key, seal_he_key, verify_request
from fedinfra.errors import ConfigError, CryptoError
from fedinfra.runtime.ceremony import KEX_FILE, accept, he_open, he_share, issue, request_keys
from fedinfra.runtime.kit import load_coordinator_transport, load_site_transport

SITES = ["hospital-a", "hospital-b", "hospital-c"]


def _consortium() -> ConsortiumConfig:
    return ConsortiumConfig(name="c1", sites=SITES, coordinator={"address": "127.0.0.1:9092"},
                            secure_aggregation={"mode": "bfv"})


def _secrets(kit: Path) -> list[bytes]:
    names = ["supernode_auth.key", "update_signing.key", KEX_FILE, "he_secret.key"]
    return [(kit / n).read_bytes() for n in names if (kit / n).exists()]


def _contains(blob: bytes, secret: bytes) -> bool:
    return secret in blob or secret.hex().encode() in blob


@pytest.fixture
def ceremony(tmp_path: Path) -> dict[str, Path]:
    kits = {s: tmp_path / "site-hosts" / s / "kit" for s in SITES}
    requests = [request_keys(s, "c1", kits[s])[0] for s in SITES]
    release = tmp_path / "release.pub"
    release.write_text(_sign.new_signing_key()[1].hex() + "\n")
    out = tmp_path / "operator"
    issue(_consortium(), requests, out, release_public=[release.read_text().strip()])
    for s in SITES:
        accept(out / "sites" / s, kits[s])
    sealed = he_share(kits["hospital-a"], tmp_path / "relay")
    for path in sealed:
        he_open(kits[path.stem.rsplit("-to-", 1)[1]], path)
    return {"operator": out, "relay": tmp_path / "relay", **kits}


def test_the_operators_files_hold_no_site_secret(ceremony: dict[str, Path]) -> None:
    secrets = [s for site in SITES for s in _secrets(ceremony[site])]
    assert len(secrets) == 4 * len(SITES)  # node, signing, key-agreement and HE key at every site
    operator_files = [p for p in ceremony["operator"].rglob("*") if p.is_file()]
    leaked = [str(p) for p in operator_files for s in secrets if _contains(p.read_bytes(), s)]
    assert leaked == []
    assert not any(p.name.endswith(("he_secret.key", "update_signing.key", "supernode_auth.key", KEX_FILE))
                   for p in operator_files)
    # ... and it is still a working coordinator kit: TLS, the sites' node keys, HE public parameters.
    coordinator = ceremony["operator"] / "coordinator"
    assert set(load_coordinator_transport(coordinator).site_keys) == set(SITES)
    assert set(load_coordinator_kit(coordinator).site_keys) == set(SITES)


def test_the_he_key_reaches_other_sites_only_as_ciphertext(ceremony: dict[str, Path]) -> None:
    he_key = (ceremony["hospital-a"] / "he_secret.key").read_bytes()
    relayed = sorted(ceremony["relay"].iterdir())
    assert [p.name for p in relayed] == ["he-key-hospital-a-to-hospital-b.json", "he-key-hospital-a-to-hospital-c.json"]
    assert not any(_contains(p.read_bytes(), he_key) for p in relayed)
    for site in SITES:
        keys = load_site_kit(ceremony[site])
        assert keys.he_secret_key == he_key
        assert keys.site_id == site
        assert load_site_transport(ceremony[site]).auth_key.is_file()


def test_only_the_addressee_opens_a_sealed_key_and_only_from_a_consortium_site(ceremony: dict[str, Path]) -> None:
    envelope = json.loads((ceremony["relay"] / "he-key-hospital-a-to-hospital-b.json").read_text())
    he_key = (ceremony["hospital-a"] / "he_secret.key").read_bytes()
    directory = json.loads((ceremony["hospital-b"] / "consortium-keys.json").read_text())
    senders = {s: bytes.fromhex(e["signing_public_key"]) for s, e in directory.items()}
    common = {"consortium": "c1", "param_id": envelope["param_id"], "sender_signing_public": senders}

    with pytest.raises(CryptoError) as info:  # another site's key does not open it
        open_he_key(envelope, me="hospital-b", kex_private=(ceremony["hospital-c"] / KEX_FILE).read_bytes(), **common)
    assert str(info.value) == SEAL_REFUSED
    flipped = ("00" if envelope["ciphertext"][:2] != "00" else "11") + envelope["ciphertext"][2:]
    tampered = {**envelope, "ciphertext": flipped}
    with pytest.raises(CryptoError):
        open_he_key(tampered, me="hospital-b", kex_private=(ceremony["hospital-b"] / KEX_FILE).read_bytes(), **common)
    # The relaying coordinator substitutes a key of its own, signed with its own key: refused.
    operator_key, _ = _sign.new_signing_key()
    kex = bytes.fromhex(directory["hospital-b"]["kex_public_key"])
    forged = seal_he_key(b"operator-chosen-key", consortium="c1", param_id=envelope["param_id"], sender="hospital-a",
                         sender_signing_key=operator_key, recipient="hospital-b", recipient_kex_public=kex)
    with pytest.raises(CryptoError):
        open_he_key(forged, me="hospital-b", kex_private=(ceremony["hospital-b"] / KEX_FILE).read_bytes(), **common)
    # The genuine envelope opens for its addressee.
    assert open_he_key(envelope, me="hospital-b", kex_private=(ceremony["hospital-b"] / KEX_FILE).read_bytes(),
                       **common) == he_key


def test_requests_hold_public_keys_only_and_are_signed() -> None:
    doc, secrets = make_request("hospital-a", "c1")
    verify_request(doc)
    text = json.dumps(doc).encode()
    assert not any(_contains(text, s) for name, s in secrets.items() if not name.endswith(".pub"))
    with pytest.raises(CryptoError):
        verify_request({**doc, "kex_public_key": "00" * 32})


def test_issue_refuses_a_missing_or_foreign_request(tmp_path: Path) -> None:
    a, _ = request_keys("hospital-a", "c1", tmp_path / "a")
    stranger, _ = request_keys("hospital-z", "c1", tmp_path / "z")
    release = ["11" * 32]
    with pytest.raises(ConfigError, match="hospital-b"):
        issue(_consortium(), [a], tmp_path / "out", release_public=release)
    with pytest.raises(ConfigError, match="not in the consortium"):
        issue(_consortium(), [a, stranger], tmp_path / "out2", release_public=release)


def test_a_bundle_for_another_node_key_is_refused(ceremony: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        accept(ceremony["operator"] / "sites" / "hospital-b", ceremony["hospital-a"])


def test_accept_takes_the_request_signed_by_the_sites_own_key_not_the_first_file(tmp_path: Path) -> None:
    """Issue 12: another site's request copied into the kit (sorted first) must not make its bundle ours."""
    import shutil

    kits = {s: tmp_path / s for s in SITES}
    requests = [request_keys(s, "c1", kits[s])[0] for s in SITES]
    issue(_consortium(), requests, tmp_path / "operator", release_public=["11" * 32])
    shutil.copyfile(kits["hospital-b"] / "request-hospital-b.json", kits["hospital-a"] / "request-0-copied.json")

    with pytest.raises(ConfigError, match="hospital-b"):  # b's bundle is refused in a's kit
        accept(tmp_path / "operator" / "sites" / "hospital-b", kits["hospital-a"])
    assert accept(tmp_path / "operator" / "sites" / "hospital-a", kits["hospital-a"])  # a's own is accepted

    (kits["hospital-a"] / "request-hospital-a.json").unlink()
    with pytest.raises(ConfigError, match="own key"):
        accept(tmp_path / "operator" / "sites" / "hospital-a", kits["hospital-a"])


def test_the_cosigner_key_is_made_at_the_site_signed_in_its_request_and_pinned_by_the_operator(
    ceremony: dict[str, Path],
) -> None:
    """Issue 15: the coordinator kit pins each site's cosigner key; a changed one breaks the request."""
    from fedinfra.audit.cosign import load_witnesses
    from fedinfra.audit.note import Signer
    from fedinfra.runtime.coordinator_kit import settings_from_kit
    from fedinfra.site.receipts import cosigner

    coordinator = ceremony["operator"] / "coordinator"
    settings = settings_from_kit(coordinator, store="sqlite:///:memory:", tls=False, in_process=True, he=False)
    assert settings.site_cosigner_keys is not None
    for s in SITES:
        kit = ceremony[s]
        assert (kit / "cosigner.key").stat().st_mode & 0o777 == 0o600
        assert not (ceremony["operator"] / "sites" / s / "cosigner.key").exists()
        own = cosigner(kit.parent / "home", s, kit)  # the site cosigns with the ceremony's key
        assert settings.site_cosigner_keys[s] == own.vkey == (kit / "cosigner.vkey").read_text().strip()
        assert not (kit.parent / "home" / "cosigner.key").exists()
        doc = json.loads((kit / f"request-{s}.json").read_text())
        verify_request(doc)
        doc["cosigner_public_key"] = Signer.generate("x").vkey  # swapped in transit
        with pytest.raises(CryptoError):
            verify_request(doc)
    assert sorted(w.vkey for w in load_witnesses([coordinator])) == sorted(settings.site_cosigner_keys.values())


def test_each_sites_kit_pins_every_sites_identity_key_for_secure_aggregation(ceremony: dict[str, Path]) -> None:
    # SecAgg sites check peers' signed masking keys against this directory (issue 13); it
    # comes from the issued bundle, and each site's entry is the key it made itself.
    from fedinfra.site.secagg import _identity

    views = {s: _identity(str(ceremony[s]), s) for s in SITES}

    directories = {d for _, d in views.values()}
    assert len(directories) == 1
    (directory,) = directories
    for s, (private, _) in views.items():
        assert dict(directory)[s] == _sign.public_of(private)
