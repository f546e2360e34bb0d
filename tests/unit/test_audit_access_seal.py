"""Issue 15, step 5: the readers' access log is sealed into the signed log, so a read cannot vanish unseen.

Real stores, the real CLI readers (``audit show``/``prove``) writing the real access log,
and the real writer (:class:`~fedinfra.audit.AuditLog` with the log's key) sealing it at
its next checkpoint; the attacks edit the files as the coordinator's operator could.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedinfra.audit import Actor, AuditLog, Receipt, Signer, verify_receipt, verify_store
from fedinfra.audit.access import SUFFIX
from fedinfra.cli import build_app

ORIGIN = "fedinfra.test/seal"
COORD = Actor(kind="coordinator", id="coord")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


class Store:
    """A coordinator's store, its signing key (in a key file, as a kit keeps it) and the access log beside it."""

    def __init__(self, root: Path) -> None:
        self.path = root / "audit.sqlite"
        self.signer = Signer.generate(ORIGIN)
        self.key_file = root / "audit.key"
        self.key_file.write_text(self.signer.skey + "\n")
        self.access = Path(str(self.path) + SUFFIX)
        self.round = 0
        self.checkpoint()

    def checkpoint(self) -> None:
        """One round of the coordinator: an entry and a signed checkpoint (which seals the reads)."""
        self.round += 1
        with AuditLog.open(self.path, origin=ORIGIN, signer=self.signer) as log:
            log.append(run_id="run-1", round=self.round, type="round.started", actor=COORD, outcome="success")
            log.publish_checkpoint(run_id="run-1", round=self.round)

    def read(self, times: int = 1) -> None:
        for _ in range(times):
            code, out = _run("audit", "show", str(self.path))
            assert code == 0, out

    def sealed(self) -> list[dict[str, object]]:
        with AuditLog.open(self.path, readonly=True) as log:
            return [e.details for e in log.entries(type="log.read")]

    def drop_line(self, number: int) -> None:
        lines = self.access.read_text().splitlines()
        del lines[number]
        self.access.write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_reads_are_sealed_into_the_signed_log_at_the_next_checkpoint(store: Store) -> None:
    store.read(3)
    assert store.sealed() == []  # not yet: the reads wait for the writer's next checkpoint
    store.checkpoint()
    sealed = store.sealed()
    assert [d["access_seq"] for d in sealed] == [0, 1, 2]
    assert all(d["command"] == "show" for d in sealed)
    result = verify_store(store.path, public_key=store.signer.vkey, access_log=store.access, workers=1)
    assert result.ok, result.problem
    assert (result.access_records, result.sealed_reads) == (3, 3)
    code, out = _run("audit", "verify", str(store.path))  # the access log beside the store is checked by default
    assert code == 0, out
    assert "3 sealed in the log" in out


@pytest.mark.parametrize("which", ["newest", "middle"])
def test_deleting_a_sealed_read_record_is_detected(store: Store, which: str) -> None:
    store.read(3)
    store.checkpoint()
    store.drop_line(2 if which == "newest" else 1)
    code, out = _run("audit", "verify", str(store.path))
    assert code == 1
    assert "removed or edited" in out
    code, out = _run("audit", "verify", str(store.path), "--access-log", str(store.access), "--format", "json")
    assert code == 1
    assert json.loads(out)["position"].startswith("access log")


def test_deleting_the_whole_access_log_loses_no_sealed_read(store: Store) -> None:
    store.read(2)
    store.checkpoint()
    store.access.unlink()
    assert len(store.sealed()) == 2  # the reads are in the signed log itself
    assert verify_store(store.path, public_key=store.signer.vkey, workers=1).ok


def test_a_read_record_removed_before_sealing_is_sealed_as_a_broken_chain(store: Store) -> None:
    store.read(3)
    store.drop_line(1)  # before the writer's next checkpoint: the chain breaks at record 1
    store.checkpoint()
    sealed = store.sealed()
    assert sealed[0]["access_seq"] == 0
    assert "record 1 breaks the chain" in str(sealed[-1]["problem"])
    code, out = _run("audit", "verify", str(store.path))
    assert code == 1
    assert "breaks the chain" in out
    store.read()  # sealing goes on after the break
    store.checkpoint()
    assert store.sealed()[-1]["access_seq"] == 2


def test_prove_of_an_entry_in_the_unsigned_tail_signs_the_tail_and_the_read_first(store: Store) -> None:
    with AuditLog.open(store.path, origin=ORIGIN, signer=store.signer) as log:
        tail = log.append(run_id="run-1", round=9, type="model.saved", actor=COORD, outcome="success")
    code, out = _run("audit", "prove", str(store.path), "--seq", str(tail.seq))
    assert code == 2
    assert "after the newest signed checkpoint" in out
    assert "--sign-with" in out
    code, out = _run("audit", "prove", str(store.path), "--seq", str(tail.seq), "--sign-with", str(store.key_file))
    assert code == 0, out
    receipt = Receipt.model_validate_json(out)
    checkpoint = verify_receipt(receipt, verifier_key=store.signer.vkey)
    assert receipt.entry == tail
    # The checkpoint returned covers this very read: both prove calls are sealed before it.
    with AuditLog.open(store.path, readonly=True) as log:
        seals = [e for e in log.entries(type="log.read") if e.seq < checkpoint.size]
    assert [(e.details["command"], e.details["seq"]) for e in seals] == [("prove", tail.seq)] * 2
    assert verify_store(store.path, public_key=store.signer.vkey, access_log=store.access, workers=1).ok


def test_an_access_log_the_writer_cannot_read_does_not_stop_its_checkpoints(store: Store) -> None:
    store.read()
    aside = store.access.with_name("aside.jsonl")
    store.access.rename(aside)
    store.access.mkdir()  # unreadable as a file (a mode 0000 file is still readable by root)
    store.checkpoint()  # the run goes on; the reads wait until the file is readable again
    assert store.sealed() == []
    store.access.rmdir()
    aside.rename(store.access)
    store.checkpoint()
    assert [d["access_seq"] for d in store.sealed()] == [0]
