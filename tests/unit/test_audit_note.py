"""C2SP signed notes and checkpoints: the Go sumdb/note known answer, keys, parsing."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedinfra.audit import Checkpoint, Signer, Verifier
from fedinfra.audit.merkle import EMPTY_ROOT, leaf_hash
from fedinfra.audit.note import ALG_ED25519, MAX_SIGNATURES, key_hash, split_note
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


# -- strict key and note parsing (issue 20: mutation survivors) -----------------------------------
# Each test below pins one decision of the parser that a mutant of note.py flipped without any
# other test noticing. Messages are compared whole where an operator reads them.


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


_BAD_VKEY = "malformed verifier key; expected name+hash+base64 (C2SP signed-note)"
_BAD_SKEY = "malformed signer key; expected PRIVATE+KEY+name+hash+base64"
_BAD = "signed note does not verify"


def _with_algorithm(key_text: str, algorithm: int) -> str:
    *head, blob = key_text.split("+", 4 if key_text.startswith("PRIVATE+") else 2)
    raw = bytearray(base64.b64decode(blob))
    raw[0] = algorithm
    return "+".join([*head, base64.b64encode(bytes(raw)).decode()])


def _signer_whose_key_text_has_a_plus() -> Signer:
    for i in range(256):
        signer = Signer.from_private_bytes("fedinfra.test/log", bytes([i]) * 32)
        if "+" in signer.vkey.split("+", 2)[2] and "+" in signer.skey.split("+", 4)[4]:
            return signer
    raise AssertionError("no seed gave a key text with '+' in its base64")


def test_key_texts_whose_base64_holds_a_plus_parse_back() -> None:
    signer = _signer_whose_key_text_has_a_plus()

    assert Verifier.from_vkey(signer.vkey) == signer.verifier
    assert Signer.from_skey(signer.skey).vkey == signer.vkey


def test_a_verifier_key_with_another_algorithm_byte_is_refused() -> None:
    assert Verifier.from_vkey(_with_algorithm(KAT["verifier_key"], ALG_ED25519)).vkey == KAT["verifier_key"]
    with pytest.raises(ConfigError, match=_exactly(_BAD_VKEY)):
        Verifier.from_vkey(_with_algorithm(KAT["verifier_key"], 0x02))


def test_a_signer_key_with_another_algorithm_byte_is_refused() -> None:
    with pytest.raises(ConfigError, match=_exactly(_BAD_SKEY)):
        Signer.from_skey(_with_algorithm(KAT["signer_key"], 0x02))


@pytest.mark.parametrize(
    "text",
    [
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a3+AR*pc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
    ids=["seven-digit-hash", "no-key", "junk-in-base64"],
)
def test_a_malformed_verifier_key_says_what_shape_is_expected(text: str) -> None:
    with pytest.raises(ConfigError, match=_exactly(_BAD_VKEY)):
        Verifier.from_vkey(text)


def test_a_verifier_key_with_a_wrong_hash_says_so() -> None:
    message = "malformed verifier key: its key hash does not match its name and key"
    with pytest.raises(ConfigError, match=_exactly(message)):
        Verifier.from_vkey(KAT["verifier_key"].replace("c74f20a3", "c74f20a4"))


@pytest.mark.parametrize(
    "text",
    [
        KAT["signer_key"].replace("PRIVATE+KEY", "PRIVATE+KEX"),
        KAT["signer_key"].replace("PRIVATE+KEY", "PUBLIC+KEY"),
        KAT["signer_key"].rsplit("+", 1)[0].rsplit("+", 1)[0],
        KAT["signer_key"][:-4] + "*" + KAT["signer_key"][-4:],
    ],
    ids=["wrong-second-word", "wrong-first-word", "no-key", "junk-in-base64"],
)
def test_a_malformed_signer_key_says_what_shape_is_expected(text: str) -> None:
    with pytest.raises(ConfigError, match=_exactly(_BAD_SKEY)):
        Signer.from_skey(text)


def test_a_signer_key_with_a_wrong_hash_says_so() -> None:
    message = "malformed signer key: its key hash does not match its name and key"
    with pytest.raises(ConfigError, match=_exactly(message)):
        Signer.from_skey(KAT["signer_key"].replace("c74f20a3", "c74f20a4"))


def test_a_key_name_with_a_space_is_refused_with_the_rule() -> None:
    message = "key name 'a b' must be non-empty, without spaces or '+' (C2SP signed-note)"
    with pytest.raises(ConfigError, match=_exactly(message)):
        Signer.generate("a b")


def test_a_seed_of_the_wrong_length_is_refused_with_its_length() -> None:
    with pytest.raises(ConfigError, match=_exactly("an Ed25519 private key has 32 bytes, got 31")):
        Signer.from_private_bytes("k", bytes(31))


def test_a_pem_public_key_builds_the_same_verifier_as_the_key_text() -> None:
    signer = Signer.generate("fedinfra.test/log")
    pem = signer.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    verifier = Verifier.from_public_pem("fedinfra.test/log", pem)

    assert verifier.vkey == signer.vkey
    assert verifier == signer.verifier
    assert verifier.verify(signer.sign("hello\n")) == "hello\n"


def test_a_pem_public_key_of_another_algorithm_or_no_pem_is_refused() -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    with pytest.raises(ConfigError, match=_exactly("public key file does not hold an Ed25519 key")):
        Verifier.from_public_pem("k", ec_pem)
    with pytest.raises(ConfigError, match=_exactly("public key file is neither a verifier key nor a PEM public key")):
        Verifier.from_public_pem("k", b"not a key")


def test_a_pem_private_key_of_another_algorithm_or_no_pem_is_refused() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    with pytest.raises(ConfigError, match=_exactly("signing key is not an Ed25519 key")):
        Signer.from_pem("k", ec_pem)
    with pytest.raises(ConfigError, match=_exactly("signing key is not an unencrypted PEM private key")):
        Signer.from_pem("k", b"not a key")


def test_verifiers_are_equal_by_key_and_name_only() -> None:
    a = Verifier.from_vkey(KAT["verifier_key"])
    b = Verifier.from_vkey(KAT["second_verifier_key"])

    assert a == Verifier.from_vkey(KAT["verifier_key"])
    assert a != b
    assert a != KAT["verifier_key"]  # a key text is not a verifier
    assert len({a, b, Verifier.from_vkey(KAT["verifier_key"])}) == 2


def test_unreadable_or_uncreatable_key_files_name_the_file_and_the_cause(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "log.key"

    cause = "(No such file or directory)"

    with pytest.raises(ConfigError, match=_exactly(f"{missing}: cannot read signing key {cause}")):
        Signer.load(missing)
    with pytest.raises(ConfigError, match=_exactly(f"{missing}: cannot create signing key {cause}")):
        Signer.generate("fedinfra.test/log").save(missing)


@pytest.mark.parametrize("text", ["no final newline", "a\x07bell\n"], ids=["no-newline", "control-character"])
def test_a_text_that_is_not_a_note_body_is_not_signed(text: str) -> None:
    message = "note text must end with a newline and contain no control character but newline"

    with pytest.raises(ValueError, match=_exactly(message)):
        Signer.generate("k").sign(text)


def test_a_text_with_a_blank_line_keeps_it_the_last_blank_line_starts_the_signatures() -> None:
    signer = Signer.generate("fedinfra.test/log")
    text = "origin\n\nbody after a blank line\n"

    assert signer.verifier.verify(signer.sign(text)) == text


def _line(name: str, blob: bytes) -> str:
    return f"— {name} {base64.b64encode(blob).decode()}\n"


def test_a_key_hash_alone_is_a_signature_line_a_shorter_blob_is_not() -> None:
    text, signatures = split_note("t\n\n" + _line("k", b"abcd"))

    assert (text, signatures) == ("t\n", [("k", b"abcd")])
    with pytest.raises(VerificationError, match=_exactly(_BAD)):
        split_note("t\n\n" + _line("k", b"abc"))


def test_one_key_signing_twice_is_refused_two_names_with_one_hash_are_not() -> None:
    sig_a, sig_b = b"hash" + bytes(64), b"hash" + bytes([1]) * 64

    with pytest.raises(VerificationError, match=_exactly(_BAD)):
        split_note("t\n\n" + _line("k", sig_a) + _line("k", sig_b))
    assert [n for n, _ in split_note("t\n\n" + _line("k", sig_a) + _line("j", sig_b))[1]] == ["k", "j"]
    assert len(split_note("t\n\n" + _line("k", sig_a) + _line("k", b"hasi" + bytes(64)))[1]) == 2


def test_at_most_one_hundred_signature_lines() -> None:
    lines = [_line(f"k{i}", b"hash" + bytes(64)) for i in range(MAX_SIGNATURES + 1)]

    assert MAX_SIGNATURES == 100
    assert len(split_note("t\n\n" + "".join(lines[:MAX_SIGNATURES]))[1]) == MAX_SIGNATURES
    with pytest.raises(VerificationError, match=_exactly(_BAD)):
        split_note("t\n\n" + "".join(lines))


@pytest.mark.parametrize(
    "block",
    ["", "—  k aGFzaA==\n", "— k aGFzaA== \n", "— k aGFz*aA==\n", "— k aGFzaA=\n"],
    ids=["no-signature-line", "double-space", "trailing-space", "junk-in-base64", "bad-padding"],
)
def test_a_malformed_signature_block_is_refused(block: str) -> None:
    with pytest.raises(VerificationError, match=_exactly(_BAD)):
        split_note("t\n\n" + block)


def test_verify_lines_answers_a_bool() -> None:
    verifier = Verifier.from_vkey(KAT["verifier_key"])

    assert verifier.verify_lines("t\n", []) is False
    assert verifier.verify_lines(*split_note(KAT["signed_note"])) is True


def test_a_signers_repr_names_it_without_its_private_key() -> None:
    """A signer may end up in a log line or a traceback: its repr names the key, never the seed."""
    signer = Signer.from_skey(KAT["signer_key"])
    seed_b64 = KAT["signer_key"].rsplit("+", 1)[-1]

    assert repr(signer) == f"Signer(name={signer.name!r}, key_id={signer.key_id!r})"
    assert seed_b64 not in repr(signer)
    assert repr(Verifier.from_vkey(signer.vkey)) == f"Verifier({signer.vkey!r})"
