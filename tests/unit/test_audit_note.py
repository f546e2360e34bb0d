"""C2SP signed notes and checkpoints: the Go sumdb/note known answer, keys, parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedinfra.audit import Checkpoint, Signer, Verifier
from fedinfra.audit.merkle import EMPTY_ROOT, leaf_hash
from fedinfra.audit.note import key_hash, split_note
from fedinfra.errors import ConfigError, VerificationError

KAT = json.loads((Path(__file__).parent.parent / "vectors" / "signed-note" / "peterneumann.json").read_text())


def test_signing_the_known_text_reproduces_the_published_note_byte_for_byte() -> None:
    signer = Signer.from_skey(KAT["signer_key"])

    assert signer.sign(KAT["text"]) == KAT["signed_note"]


def test_the_signer_key_derives_the_published_verifier_key() -> None:
    assert Signer.from_skey(KAT["signer_key"]).vkey == KAT["verifier_key"]
    assert Signer.from_skey(KAT["signer_key"]).skey == KAT["signer_key"]


def test_the_published_note_verifies_with_the_published_key() -> None:
    verifier = Verifier.from_vkey(KAT["verifier_key"])

    assert verifier.verify(KAT["signed_note"]) == KAT["text"]


def test_a_second_signature_by_an_unknown_key_is_ignored() -> None:
    note = KAT["signed_note"] + KAT["second_signature_line"]

    assert Verifier.from_vkey(KAT["verifier_key"]).verify(note) == KAT["text"]
    assert Verifier.from_vkey(KAT["second_verifier_key"]).verify(note) == KAT["text"]


def test_the_key_hash_is_the_first_four_bytes_of_the_named_key_digest() -> None:
    verifier = Verifier.from_vkey(KAT["verifier_key"])

    assert key_hash(verifier.name, verifier.raw).hex() == "c74f20a3"


@pytest.mark.parametrize(
    "note",
    [
        KAT["signed_note"].replace("cryptography", "cryptographY"),
        KAT["signed_note"].replace("PeterNeumann x08", "PeterNeumann y08"),
        KAT["signed_note"].replace("\n\n", "\n"),
        KAT["signed_note"][:-1],
        KAT["signed_note"].replace("— ", "- "),
        "",
    ],
    ids=["edited-text", "edited-signature", "no-blank-line", "no-final-newline", "ascii-dash", "empty"],
)
def test_an_altered_or_malformed_note_is_refused(note: str) -> None:
    with pytest.raises(VerificationError, match="signed note does not verify"):
        Verifier.from_vkey(KAT["verifier_key"]).verify(note)


def test_a_note_signed_by_another_key_with_the_same_name_is_refused() -> None:
    impostor = Signer.generate("PeterNeumann")

    with pytest.raises(VerificationError):
        Verifier.from_vkey(KAT["verifier_key"]).verify(impostor.sign(KAT["text"]))


@pytest.mark.parametrize(
    "text",
    [
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",
        "PeterNeumann+c74f20a3+AhpvDlc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW=",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
    ids=["too-short", "wrong-hash", "bad-base64", "wrong-algorithm", "space-in-name"],
)
def test_a_malformed_verifier_key_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        Verifier.from_vkey(text)


def test_a_signer_key_with_a_wrong_hash_is_refused() -> None:
    with pytest.raises(ConfigError, match="malformed signer key"):
        Signer.from_skey(KAT["signer_key"].replace("c74f20a3", "c74f20a4"))


def test_a_saved_key_is_private_to_its_owner_and_loads_back(tmp_path: Path) -> None:
    signer = Signer.generate("fedinfra.test/log")
    path = tmp_path / "log.key"

    signer.save(path)

    assert path.stat().st_mode & 0o777 == 0o600
    assert Signer.load(path).vkey == signer.vkey
    with pytest.raises(ConfigError, match="never overwritten"):
        Signer.generate("fedinfra.test/log").save(path)


def test_a_pem_key_round_trips_with_its_name(tmp_path: Path) -> None:
    signer = Signer.generate("fedinfra.test/log")
    path = tmp_path / "log.pem"
    path.write_bytes(signer.private_pem())

    assert Signer.load(path, name="fedinfra.test/log").vkey == signer.vkey
    with pytest.raises(ConfigError, match="needs the key name"):
        Signer.load(path)


def test_a_checkpoint_has_the_tlog_checkpoint_body_and_verifies() -> None:
    signer = Signer.generate("fedinfra.test/log")
    root = leaf_hash(b"x")

    checkpoint = Checkpoint.sign(signer, 7, root)

    text, signatures = split_note(checkpoint.note)
    assert text == f"fedinfra.test/log\n7\n{checkpoint.root_b64}\n"
    assert [name for name, _ in signatures] == ["fedinfra.test/log"]
    assert Checkpoint.from_note(checkpoint.note, signer.verifier) == checkpoint


def test_a_checkpoint_note_for_another_origin_is_refused() -> None:
    signer = Signer.generate("fedinfra.test/other")
    note = signer.sign(f"fedinfra.test/log\n1\n{Checkpoint.sign(signer, 1, EMPTY_ROOT).root_b64}\n")

    with pytest.raises(VerificationError, match="not a valid checkpoint"):
        Checkpoint.from_note(note, signer.verifier)


@pytest.mark.parametrize(
    "body",
    ["{o}\n01\n{r}\n", "{o}\n-1\n{r}\n", "{o}\n1\nAAAA\n", "{o}\n1\n", "{o}\n1\n{r}=\n"],
    ids=["leading-zero", "negative", "short-root", "no-root", "bad-padding"],
)
def test_a_malformed_checkpoint_body_is_refused(body: str) -> None:
    signer = Signer.generate("fedinfra.test/log")
    root = Checkpoint.sign(signer, 1, EMPTY_ROOT).root_b64
    note = signer.sign(body.format(o="fedinfra.test/log", r=root))

    with pytest.raises(VerificationError):
        Checkpoint.from_note(note, signer.verifier)
