"""Issue 15, steps 2-3: sites cosign checkpoints; `verify --witnesses` and `gossip` catch a dishonest coordinator.

The coordinator here is real code (:class:`~fedinfra.coordinator.witnesses.Witnessing` over a
real SQLite :class:`~fedinfra.audit.AuditLog`), and so are the sites
(:func:`fedinfra.site.receipts.cosign_checkpoint` with their own keys on disk); only the
Flower transport between them is left out. The attacks are those of the issue: the
coordinator holds its own signing key and its own store.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedinfra.audit import Actor, AuditLog, Checkpoint, Entry, Signer, verify_store
from fedinfra.audit.cosign import Cosigner, CosignReply, Witness, load_witnesses, signed_message
from fedinfra.audit.gossip import gossip, load_held
from fedinfra.cli import build_app
from fedinfra.coordinator.witnesses import Witnessing
from fedinfra.errors import VerificationError
from fedinfra.site.receipts import ALERTS_FILE, cosign_checkpoint, cosigner

ORIGIN = "fedinfra-audit.test"
SITES = ("hospital-a", "hospital-b", "hospital-c")
COORD = Actor(kind="coordinator", id="coordinator")


class Federation:
    """A coordinator's log and three sites that witness it after every checkpoint."""

    def __init__(self, root: Path, signer: Signer) -> None:
        self.root = root
        self.signer = signer
        self.store = root / "audit.sqlite"
        self.log = AuditLog.open(self.store, origin=ORIGIN, signer=signer)
        self.witnessing = Witnessing(self.log)
        self.held = dict.fromkeys(SITES, 0)
        for site in SITES:
            self.witnessing.enrol(site, cosigner(self.home(site), site).vkey)

    def home(self, site: str) -> Path:
        return self.root / "sites" / site

    def receipts(self, site: str) -> Path:
        return self.home(site) / "receipts" / ORIGIN

    def round(self, rnd: int, *, final_accuracy: float | None = None, run_id: str = "run-1") -> Checkpoint:
        self.log.append(run_id=run_id, round=rnd, type="round.started", actor=COORD, outcome="success")
        if final_accuracy is None:
            self.log.append(run_id=run_id, round=rnd, type="aggregation.completed", actor=COORD, outcome="success")
        else:
            self.log.append(
                run_id=run_id,
                round=rnd,
                type="run.completed",
                actor=COORD,
                outcome="success",
                details={"final_accuracy": final_accuracy},
            )
        checkpoint = self.log.publish_checkpoint(run_id=run_id, round=rnd)
        for site in SITES:
            self.witness(site, self.witnessing.request(self.held[site]))
            self.held[site] = checkpoint.size
        return checkpoint

    def witness(self, site: str, request: str) -> str:
        reply = cosign_checkpoint(
            request, directory=self.receipts(site), verifier_key=self.signer.vkey, home=self.home(site), site=site
        )
        assert self.witnessing.accept(site, reply)
        return reply

    def witness_file(self) -> Path:
        path = self.root / "witnesses.txt"
        path.write_text("".join(self.witnessing.keys[s].vkey + "\n" for s in SITES))
        return path


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    federation = Federation(tmp_path, Signer.generate(ORIGIN))
    for rnd in (1, 2):
        federation.round(rnd)
    federation.round(3, final_accuracy=0.92)
    federation.log.close()
    return federation


def _witnesses(fed: Federation) -> list[Witness]:
    return load_witnesses([fed.witness_file()])


def _forge(fed: Federation, path: Path, edit: dict[int, dict[str, object]], *, keep_cosignatures: bool) -> None:
    """The dishonest coordinator rebuilds its log with edited entries and re-signs every checkpoint."""
    with AuditLog.open(fed.store) as honest:
        entries = honest.entries()
        sizes = [size for size, *_ in honest._store.checkpoints()]
        cosigs = honest._store.cosignatures()
    with AuditLog.open(path, origin=ORIGIN, signer=fed.signer) as forged:
        for entry in entries:
            obj = entry.to_json_dict()
            obj.update(edit.get(entry.seq, {}))
            forged_entry = Entry.model_validate(obj)
            if forged_entry.type == "checkpoint.published":
                assert forged_entry.seq + 1 in sizes
                forged.publish_checkpoint(run_id=forged_entry.run_id, round=forged_entry.round, now=forged_entry.ts)
                continue
            forged.append(
                run_id=forged_entry.run_id,
                round=forged_entry.round,
                type=forged_entry.type,
                actor=forged_entry.actor,
                outcome=forged_entry.outcome,
                details=forged_entry.details,
                now=forged_entry.ts,
            )
    if keep_cosignatures:
        con = sqlite3.connect(path)
        con.executemany(
            "INSERT INTO audit_cosignatures (tree_size, cosigner, key_id, line, received_at) VALUES (?, ?, ?, ?, ?)",
            [(size, line.split(" ")[1], "00000000", line, "2026-01-01T00:00:00.000000Z") for size, line in cosigs],
        )
        con.commit()
        con.close()


# -- the cosignature format -------------------------------------------------------------


def test_a_cosignature_is_a_c2sp_tlog_cosignature_v1_line(tmp_path: Path) -> None:
    signer = Signer.generate(ORIGIN)
    checkpoint = Checkpoint.sign(signer, 0, base64.b64decode("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="))
    site = Cosigner.generate("witness.example/w1")
    line = site.cosign(checkpoint, timestamp=1679315147)
    dash, name, b64 = line.split(" ")
    blob = base64.b64decode(b64)
    assert (dash, name) == ("\u2014", "witness.example/w1")
    assert blob[:4] == site.witness.key_hash
    assert struct.unpack(">Q", blob[4:12]) == (1679315147,)
    message = signed_message(checkpoint.note.split("\n\n")[0] + "\n", 1679315147)
    assert message.startswith(b"cosignature/v1\ntime 1679315147\nfedinfra-audit.test\n0\n")
    site.witness.public_key.verify(blob[12:], message)
    assert Witness.from_vkey(site.vkey) == site.witness
    assert base64.b64decode(site.vkey.split("+", 2)[2])[0] == 0x04


def test_a_cosignature_on_another_checkpoint_does_not_verify() -> None:
    signer = Signer.generate(ORIGIN)
    one = Checkpoint.sign(signer, 1, b"\x01" * 32)
    two = Checkpoint.sign(signer, 1, b"\x02" * 32)
    site = Cosigner.generate("site")
    with pytest.raises(VerificationError):
        site.witness.verify_line(two, site.cosign(one, timestamp=1))


# -- sites witness, the coordinator keeps the cosignatures --------------------------------


def test_every_checkpoint_is_cosigned_by_every_site_and_verifies_with_witnesses(fed: Federation) -> None:
    result = verify_store(fed.store, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert result.ok, result.problem
    assert result.head_cosigners == tuple(f"fedinfra-site.{s}" for s in SITES)
    with AuditLog.open(fed.store) as log:
        assert all(len(log.cosignatures(size)) == 3 for size, *_ in log._store.checkpoints()[1:])


def test_the_site_cosigning_key_is_private_and_its_public_key_sits_beside_it(fed: Federation) -> None:
    key = fed.home("hospital-a") / "cosigner.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert Witness.from_vkey((key.with_suffix(".vkey")).read_text()) == fed.witnessing.keys["hospital-a"]


def test_a_cosignature_by_a_key_other_than_the_sites_is_refused_by_the_coordinator(fed: Federation) -> None:
    with AuditLog.open(fed.store, origin=ORIGIN, signer=fed.signer) as log:
        head = log.latest_checkpoint
        assert head is not None
        impostor = Cosigner.generate("fedinfra-site.hospital-a")
        forged = CosignReply(tree_size=head.size, line=impostor.cosign(head, timestamp=5))
        witnessing = Witnessing(log)
        witnessing.keys = dict(fed.witnessing.keys)
        assert not witnessing.accept("hospital-a", forged.model_dump_json())


# -- the attacks of the issue --------------------------------------------------------------


def test_a_rewritten_and_re_signed_final_accuracy_passes_the_old_check_but_not_the_witnesses(
    fed: Federation, tmp_path: Path
) -> None:
    with AuditLog.open(fed.store) as log:
        (completed,) = log.entries(type="run.completed")
    forged = tmp_path / "forged.sqlite"
    details = {**completed.details, "final_accuracy": 0.99}
    _forge(fed, forged, {completed.seq: {"details": details}}, keep_cosignatures=True)
    receipts = [fed.receipts(s) for s in SITES]
    # What the issue found: pinned key and the sites' receipts from before the close: exit 0.
    before_close = [n.read_text() for d in receipts for n in sorted(d.glob("checkpoint-*.note"))[:-1]]
    assert verify_store(forged, public_key=fed.signer.vkey, held_checkpoints=before_close, workers=1).ok
    result = verify_store(forged, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert not result.ok
    assert "does not verify" in (result.problem or "")


def test_a_rewrite_that_drops_the_stale_cosignatures_lacks_the_quorum(fed: Federation, tmp_path: Path) -> None:
    with AuditLog.open(fed.store) as log:
        (completed,) = log.entries(type="run.completed")
    forged = tmp_path / "forged.sqlite"
    _forge(fed, forged, {completed.seq: {"details": {"final_accuracy": 0.99}}}, keep_cosignatures=False)
    result = verify_store(forged, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert not result.ok
    assert "cosigned by 0 of the 3" in (result.problem or "")


def test_deleting_the_newest_checkpoint_and_its_announcement_is_caught_by_the_witnesses(fed: Federation) -> None:
    con = sqlite3.connect(fed.store)
    for table in ("audit_entries", "audit_checkpoints", "audit_cosignatures"):
        con.execute(f"DROP TRIGGER {table}_no_delete")
    (top,) = con.execute("SELECT max(tree_size) FROM audit_checkpoints").fetchone()
    con.execute("DELETE FROM audit_cosignatures WHERE tree_size = ?", (top,))
    con.execute("DELETE FROM audit_checkpoints WHERE tree_size = ?", (top,))
    con.execute("DELETE FROM audit_entries WHERE seq = ?", (top - 1,))
    con.commit()
    con.close()
    assert verify_store(fed.store, public_key=fed.signer.vkey, workers=1).ok  # the old check passes
    result = verify_store(fed.store, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert not result.ok
    assert "not witnessed" in (result.problem or "")


def test_cutting_the_whole_tail_is_caught_by_gossip_with_any_sites_receipts(fed: Federation) -> None:
    con = sqlite3.connect(fed.store)
    for table in ("audit_entries", "audit_checkpoints", "audit_cosignatures"):
        con.execute(f"DROP TRIGGER {table}_no_delete")
    (top,) = con.execute("SELECT max(tree_size) FROM audit_checkpoints").fetchone()
    (prev,) = con.execute("SELECT max(tree_size) FROM audit_checkpoints WHERE tree_size < ?", (top,)).fetchone()
    con.execute("DELETE FROM audit_cosignatures WHERE tree_size > ?", (prev,))
    con.execute("DELETE FROM audit_checkpoints WHERE tree_size > ?", (prev,))
    con.execute("DELETE FROM audit_entries WHERE seq >= ?", (prev,))
    con.commit()
    con.close()
    result = gossip(fed.store, [fed.receipts("hospital-b")], public_key=fed.signer.verifier)
    assert not result.ok
    assert "tail truncated" in (result.problem or "")


def test_a_site_shown_a_fork_refuses_and_says_so_in_its_own_log(fed: Federation, tmp_path: Path) -> None:
    # The coordinator shows hospital-c a different history of the same size as the others'.
    other = AuditLog.open(tmp_path / "fork.sqlite", origin=ORIGIN, signer=fed.signer)
    with AuditLog.open(fed.store) as log:
        size = log.size
    for _ in range(size - 1):
        other.append(run_id="run-1", round=9, type="round.started", actor=COORD, outcome="success")
    other.publish_checkpoint(run_id="run-1", round=9)
    request = Witnessing(other).request(0)
    other.close()
    with pytest.raises(VerificationError, match="split view"):
        cosign_checkpoint(
            request,
            directory=fed.receipts("hospital-c"),
            verifier_key=fed.signer.vkey,
            home=fed.home("hospital-c"),
            site="hospital-c",
        )
    assert "split view" in (fed.receipts("hospital-c") / ALERTS_FILE).read_text()


def test_gossip_between_two_sites_finds_a_split_view(fed: Federation, tmp_path: Path) -> None:
    # hospital-c was shown (and kept) a forked checkpoint of the same size as the others' newest.
    with AuditLog.open(fed.store) as log:
        size = log.size
    fork = AuditLog.open(tmp_path / "fork.sqlite", origin=ORIGIN, signer=fed.signer)
    for _ in range(size - 1):
        fork.append(run_id="run-1", round=9, type="round.started", actor=COORD, outcome="success")
    forked = fork.publish_checkpoint(run_id="run-1", round=9)
    fork.close()
    shown = tmp_path / "c-was-shown"
    shown.mkdir()
    (shown / f"checkpoint-{forked.size:012d}.note").write_text(forked.note)
    result = gossip(fed.store, [fed.receipts("hospital-a"), shown])
    assert not result.ok
    assert (result.problem or "").startswith("fork:")


def test_gossip_of_honest_sites_and_an_export_finds_no_fork(fed: Federation, tmp_path: Path) -> None:
    runner = CliRunner()
    export = tmp_path / "export"
    assert runner.invoke(build_app(), ["audit", "export", str(fed.store), "--out", str(export)]).exit_code == 0
    held = [arg for s in SITES for arg in ("--held", str(fed.receipts(s)))]
    out = runner.invoke(build_app(), ["audit", "gossip", str(fed.store), *held, "--held", str(export)])
    assert out.exit_code == 0, out.output
    assert "no fork" in out.output


def test_verify_witnesses_on_the_command_line_names_the_cosigners(fed: Federation, tmp_path: Path) -> None:
    copy = tmp_path / "copy.sqlite"
    shutil.copy(fed.store, copy)
    args = ["audit", "verify", str(copy), "--witnesses", str(fed.witness_file()), "--format", "json"]
    out = CliRunner().invoke(build_app(), args)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["quorum"] == 3
    assert len(doc["head_cosigners"]) == 3
    out = CliRunner().invoke(build_app(), [*args[:-2], "--quorum", "4"])
    assert out.exit_code == 2


def test_an_exported_bundle_keeps_the_cosignatures(fed: Federation, tmp_path: Path) -> None:
    export = tmp_path / "export"
    assert CliRunner().invoke(build_app(), ["audit", "export", str(fed.store), "--out", str(export)]).exit_code == 0
    assert verify_store(export, public_key=fed.signer.vkey, witnesses=_witnesses(fed)).ok


def _append_after_head(fed: Federation, kind: str) -> None:
    with AuditLog.open(fed.store) as log:
        log.append(
            run_id="run-1", round=None, type="report.generated", actor=Actor(kind=kind, id="x"), outcome="success"  # type: ignore[arg-type]
        )


def test_an_auditors_report_regeneration_after_the_cosigned_head_is_reported_not_failed(fed: Federation) -> None:
    _append_after_head(fed, "operator")
    result = verify_store(fed.store, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert result.ok, result.problem
    assert result.unwitnessed_reports == 1


def test_a_coordinator_entry_after_the_cosigned_head_fails_the_witness_check(fed: Federation) -> None:
    _append_after_head(fed, "coordinator")
    result = verify_store(fed.store, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert not result.ok
    assert "not witnessed" in (result.problem or "")


def test_a_site_whose_close_cosignature_came_late_is_asked_again_and_counted(fed: Federation) -> None:
    """Issue 15: a site that missed the close wave (reply after the timeout) is collected by the next wave."""
    from types import SimpleNamespace

    with AuditLog.open(fed.store, origin=ORIGIN, signer=fed.signer) as log:
        log.append(run_id="run-1", round=3, type="report.generated", actor=COORD, outcome="success")
        final = log.publish_checkpoint(run_id="run-1", round=3)
        witnessing = Witnessing(log)
        witnessing.keys = dict(fed.witnessing.keys)
        sites = [SimpleNamespace(node_id=n, hello=SimpleNamespace(site=s)) for n, s in enumerate(SITES, start=1)]
        waves: list[list[str]] = []

        def send(batch: list[tuple[SimpleNamespace, str]]) -> list[SimpleNamespace]:
            waves.append([site.hello.site for site, _ in batch])
            replies = []
            for site, request in batch:
                name = site.hello.site
                doc = cosign_checkpoint(  # the site checks, keeps the checkpoint and cosigns either way
                    request, directory=fed.receipts(name), verifier_key=fed.signer.vkey, home=fed.home(name), site=name
                )
                if name == "hospital-b" and len(waves) == 1:
                    continue  # its reply arrives after the wave's timeout: lost
                replies.append(SimpleNamespace(metadata=SimpleNamespace(src_node_id=site.node_id), doc=doc))
            return replies

        def message_for(site: SimpleNamespace) -> tuple[SimpleNamespace, str]:
            return site, witnessing.request(fed.held[site.hello.site])

        names = witnessing.close(final, sites, send, message_for, lambda reply: reply.doc)

    assert waves == [list(SITES), ["hospital-b"]]
    assert names == sorted(SITES)
    assert verify_store(fed.store, witnesses=_witnesses(fed)).ok


# -- truncation to an earlier checkpoint the sites did cosign -------------------------------


def _cut_back(store: Path, size: int) -> None:
    """The dishonest coordinator deletes every entry, checkpoint and cosignature after tree ``size``."""
    con = sqlite3.connect(store)
    for table in ("audit_entries", "audit_checkpoints", "audit_cosignatures"):
        con.execute(f"DROP TRIGGER {table}_no_delete")
    con.execute("DELETE FROM audit_cosignatures WHERE tree_size > ?", (size,))
    con.execute("DELETE FROM audit_checkpoints WHERE tree_size > ?", (size,))
    con.execute("DELETE FROM audit_entries WHERE seq >= ?", (size,))
    con.commit()
    con.close()


def _created(fed: Federation, run_id: str) -> None:
    fed.log.append(run_id=run_id, round=None, type="run.created", actor=COORD, outcome="success")


@pytest.mark.parametrize("where", ["mid-run", "between-runs"])
def test_a_log_cut_back_to_an_earlier_cosigned_checkpoint_is_caught_with_any_sites_receipts(
    tmp_path: Path, where: str
) -> None:
    """Issue 15: truncation to a cosigned prefix. Store + keys alone cannot see it; a site's newer checkpoint can."""
    fed = Federation(tmp_path, Signer.generate(ORIGIN))
    _created(fed, "run-1")
    fed.round(1)
    if where == "mid-run":  # cut inside run-1: its close is gone
        cut = fed.round(2)
        fed.round(3, final_accuracy=0.92)
        hint: tuple[str, ...] = ("run-1",)
    else:  # cut after run-1 closed, before run-2: nothing in the store hints at it
        cut = fed.round(2, final_accuracy=0.92)
        _created(fed, "run-2")
        fed.round(1, run_id="run-2")
        fed.round(2, final_accuracy=0.95, run_id="run-2")
        hint = ()
    fed.log.close()
    full = verify_store(fed.store, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert full.ok
    assert full.open_runs == ()
    _cut_back(fed.store, cut.size)

    # What a verifier holding only the store and the keys sees: a consistent log whose newest
    # checkpoint a quorum cosigned. That is the documented limit, not a pass to be proud of.
    alone = verify_store(fed.store, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert alone.ok, alone.problem
    assert alone.witnessed_size == cut.size
    assert alone.held == 0
    assert alone.open_runs == hint
    out = CliRunner().invoke(build_app(), ["audit", "verify", str(fed.store), "--witnesses", str(fed.witness_file())])
    assert out.exit_code == 0
    assert "cut back to an earlier cosigned checkpoint verifies as well" in " ".join(out.output.split())

    # Any one site's receipts hold a newer cosigned checkpoint: the cut is proven.
    for site in SITES:
        notes = [note for _, note in load_held(fed.receipts(site))]
        result = verify_store(
            fed.store, public_key=fed.signer.vkey, held_checkpoints=notes, witnesses=_witnesses(fed), workers=1
        )
        assert not result.ok
        assert "tail truncated" in (result.problem or "")
    args = ["audit", "verify", str(fed.store), "--witnesses", str(fed.witness_file()),
            "--checkpoint", str(fed.receipts("hospital-b"))]
    out = CliRunner().invoke(build_app(), args)
    assert out.exit_code == 1
    assert "tail truncated" in out.output
    gossip_args = ["audit", "gossip", str(fed.store), "--held", str(fed.receipts("hospital-c"))]
    out = CliRunner().invoke(build_app(), gossip_args)
    assert out.exit_code == 1
    assert "tail truncated" in out.output


def test_the_witnessed_checkpoint_time_is_the_newest_cosignature(fed: Federation) -> None:
    result = verify_store(fed.store, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert result.ok
    assert result.witnessed_size == result.head_size
    assert result.witnessed_at is not None
    assert result.witnessed_at.endswith("Z")


def test_reads_sealed_after_the_cosigned_checkpoint_are_readers_records_not_a_failure(
    fed: Federation, tmp_path: Path
) -> None:
    """Reads sealed by ``prove --sign-with`` after the close are signed by the coordinator only: counted, not failed."""
    key = tmp_path / "audit.key"
    key.write_text(fed.signer.skey + "\n")
    runner = CliRunner()
    assert runner.invoke(build_app(), ["audit", "show", str(fed.store)]).exit_code == 0
    out = runner.invoke(build_app(), ["audit", "prove", str(fed.store), "--seq", "0", "--sign-with", str(key)])
    assert out.exit_code == 0, out.output
    result = verify_store(fed.store, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert result.ok, result.problem
    assert result.unwitnessed_reports == 2  # the two sealed reads (their checkpoint's announcement is the log's own)
    assert result.witnessed_size is not None
    assert result.witnessed_size < result.head_size
    with AuditLog.open(fed.store, origin=ORIGIN, signer=fed.signer) as log:  # a coordinator entry sealed the same way
        log.append(run_id="run-1", round=3, type="run.completed", actor=COORD, outcome="success")
        log.publish_checkpoint()
    result = verify_store(fed.store, public_key=fed.signer.vkey, witnesses=_witnesses(fed), workers=1)
    assert not result.ok
    assert "not witnessed" in (result.problem or "")
