"""Issue 15, step 1: strict C2SP note/checkpoint parsing, size-0 consistency, side columns.

Each test is an attack that the code before issue 15 let through.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest

from fedinfra.audit import Actor, AuditLog, Checkpoint, Signer, verify_store
from fedinfra.audit.merkle import EMPTY_ROOT, leaf_hash, root_of, verify_consistency
from fedinfra.audit.verify import load_held_checkpoint
from fedinfra.errors import VerificationError

ORIGIN = "fedinfra.test/strict"


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


def _checkpoint_note(signer: Signer) -> str:
    return Checkpoint.sign(signer, 3, root_of([leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")])).note


def test_a_note_with_a_control_character_is_refused(signer: Signer) -> None:
    text = f"{ORIGIN}\n3\n{base64.b64encode(b'x' * 32).decode()}\nextra\x07bell\n"
    note = text + "\n" + signer.signature_line(text)
    with pytest.raises(VerificationError):
        signer.verifier.verify(note)


def test_a_note_with_a_duplicate_signature_line_is_refused(signer: Signer) -> None:
    note = _checkpoint_note(signer)
    line = note.split("\n\n")[1]
    with pytest.raises(VerificationError):
        signer.verifier.verify(note + line)


def test_an_invalid_signature_by_the_known_key_is_refused_even_before_a_valid_one(signer: Signer) -> None:
    note = _checkpoint_note(signer)
    text, line = note.split("\n\n")
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[10] ^= 1
    forged = f"\u2014 {signer.name} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(VerificationError):
        signer.verifier.verify(text + "\n\n" + forged + line)


def test_a_checkpoint_with_an_empty_extension_line_is_refused(signer: Signer) -> None:
    body = f"{ORIGIN}\n1\n{base64.b64encode(leaf_hash(b'a')).decode()}\n\next\n"
    note = signer.sign(body)
    with pytest.raises(VerificationError):
        Checkpoint.from_note(note, signer.verifier)


def test_a_checkpoint_with_a_non_empty_extension_line_is_accepted(signer: Signer) -> None:
    body = f"{ORIGIN}\n1\n{base64.b64encode(leaf_hash(b'a')).decode()}\next\n"
    assert Checkpoint.from_note(signer.sign(body), signer.verifier).size == 1


def test_a_consistency_proof_from_the_empty_tree_with_an_empty_proof_verifies() -> None:
    verify_consistency(0, 5, EMPTY_ROOT, leaf_hash(b"any"), [])


@pytest.mark.parametrize(
    ("old_root", "proof"),
    [(leaf_hash(b"not empty"), []), (EMPTY_ROOT, [EMPTY_ROOT])],
    ids=["old-root-not-empty-tree", "non-empty-proof"],
)
def test_a_consistency_proof_from_size_zero_needs_the_empty_root_and_no_hashes(
    old_root: bytes, proof: list[bytes]
) -> None:
    with pytest.raises(VerificationError):
        verify_consistency(0, 5, old_root, leaf_hash(b"any"), proof)


def _small_store(path: Path, signer: Signer) -> None:
    actor = Actor(kind="coordinator", id="coord")
    with AuditLog.open(path, origin=ORIGIN, signer=signer) as log:
        log.append(run_id="run-1", round=1, type="round.started", actor=actor, outcome="success")
        log.append(run_id="run-1", round=1, type="aggregation.completed", actor=actor, outcome="success")
        log.publish_checkpoint(run_id="run-1", round=1)


@pytest.mark.parametrize(
    ("column", "value"),
    [("type", "round.started"), ("run_id", "run-2"), ("round", 7), ("ts", "2030-01-01T00:00:00.000000Z")],
)
def test_an_edited_side_column_fails_verification(tmp_path: Path, signer: Signer, column: str, value: object) -> None:
    path = tmp_path / "audit.db"
    _small_store(path, signer)
    con = sqlite3.connect(path)
    con.execute("DROP TRIGGER audit_entries_no_update")
    con.execute(f"UPDATE audit_entries SET {column} = ? WHERE seq = 1", (value,))
    con.commit()
    con.close()
    result = verify_store(path, public_key=signer.vkey, workers=1)
    assert not result.ok
    assert result.position == "entry 1"
    assert "stored column" in (result.problem or "")


def test_metrics_json_is_accepted_as_a_held_checkpoint(tmp_path: Path, signer: Signer) -> None:
    note = _checkpoint_note(signer)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"final_checkpoint": {"tree_size": 3, "note": note}}))
    assert load_held_checkpoint(metrics) == note
