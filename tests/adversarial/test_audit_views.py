"""Issue 15 at integration level: the real coordinator, real ClientApps, real stores, real reports.

* **Split view**: a dishonest coordinator shows one site a forked history (signed with its
  own log key) while the others see the real one. The site keeps the fork (it cannot know
  better yet), refuses to train when later shown the real history, and writes the split
  view in its own ``alerts.log``; ``audit gossip`` over two sites' receipts proves the fork.
  Only the coordinator's choice of what to show that one site is played here (rewriting the
  cosign request of its messages); the sites, the verification and the stores are real.
* **How to verify**: the command the report prints runs, in the run directory, on exactly
  the files the run leaves - and fails once the store is cut back to an earlier checkpoint
  the sites did cosign.
"""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message
from typer.testing import CliRunner

from fedinfra.audit import Actor, AuditLog, Signer
from fedinfra.audit.cosign import CosignRequest
from fedinfra.cli import build_app
from fedinfra.config import JobSpec
from fedinfra.coordinator.witnesses import Witnessing
from fedinfra.runtime.simulation import AUDIT_STORE
from fedinfra.site.receipts import ALERTS_FILE
from tests.adversarial.harness import Outcome, honest, run_job

pytestmark = pytest.mark.timeout(600)

COORD = Actor(kind="coordinator", id="coordinator")


def _doc(msg: Message) -> dict[str, Any]:
    return dict(json.loads(str(msg.content.config_records["config"]["doc"])))


def _set_doc(msg: Message, doc: dict[str, Any]) -> None:
    msg.content.config_records["config"]["doc"] = json.dumps(doc)


def _signer(run_dir: Path) -> Signer:
    kit = run_dir / "kits" / "coordinator"
    return Signer.from_skey((kit / "audit_signing.key").read_text().strip())


def _fork(store: Path, at: int, size: int, signer: Signer, where: Path, model: str) -> tuple[AuditLog, str]:
    """The coordinator's second history: the real log's first ``at`` entries, then others, signed at ``size``.

    A consistent liar: its checkpoint announces the ``model`` digest the instruction names.
    """
    src = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    dst = sqlite3.connect(where)
    src.backup(dst)
    src.close()
    for table in ("audit_entries", "audit_checkpoints", "audit_cosignatures"):
        dst.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    dst.execute("DELETE FROM audit_cosignatures")
    dst.execute("DELETE FROM audit_checkpoints WHERE tree_size > ?", (at,))
    dst.execute("DELETE FROM audit_entries WHERE seq >= ?", (at,))
    dst.commit()
    dst.close()
    fork = AuditLog.open(where, origin=signer.name, signer=signer)
    while fork.size < size - 1:
        fork.append(run_id="run-1", round=1, type="round.started", actor=COORD, outcome="success")
    fork.publish_checkpoint(run_id="run-1", round=1, model_sha256=model)
    witnessing = Witnessing(fork)
    return fork, witnessing.request(at, witnessing.view_proof("run-1", model))


class ShownAFork:
    """Site ``index``'s real ClientApp; the coordinator shows it a forked checkpoint in round 1.

    In round 2 the coordinator shows it the real history again, with the consistency proof
    from the fork's size a consistent liar would send (the real log's proof).
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.run_dir = tmp / "run-1"
        self.fork_size = 0

    def __call__(self, msg: Message, context: Context) -> Message | None:
        if msg.metadata.message_type == "train":
            doc = _doc(msg)
            if doc.get("cosign"):
                self._rewrite(doc)
                _set_doc(msg, doc)
        return honest(msg, context)

    def _rewrite(self, doc: dict[str, Any]) -> None:
        real = CosignRequest.model_validate_json(doc["cosign"])
        store = self.run_dir / AUDIT_STORE
        head = int(real.checkpoint.split("\n")[1])
        if not self.fork_size:  # round 1: a fork of the same size as the real checkpoint
            fork, doc["cosign"] = _fork(
                store, real.old_size, head, _signer(self.run_dir), self.tmp / "fork.sqlite", doc["model_digest"]
            )
            self.fork_size = fork.size
            fork.close()
            return
        with AuditLog.open(store, readonly=True) as log:  # later: the real head, proven from the fork's size
            proof = log.consistency_proof(self.fork_size, head)
        doc["cosign"] = CosignRequest(
            checkpoint=real.checkpoint,
            old_size=self.fork_size,
            consistency=[base64.b64encode(h).decode() for h in proof],
            view=real.view,
        ).model_dump_json()


def _receipts(outcome: Outcome, site: str) -> Path:
    return outcome.run_dir / "site-homes" / site / "receipts"


def test_a_site_shown_a_split_view_refuses_to_train_and_gossip_proves_the_fork(
    tmp_path: Path, plain_job: JobSpec, monkeypatch: Any
) -> None:
    liar = ShownAFork(tmp_path)
    handlers: list[Callable[[Message, Context], Message | None]] = [honest, honest, honest, liar]
    outcome = run_job(tmp_path, plain_job, handlers, monkeypatch=monkeypatch)
    assert outcome.error is None, outcome.error
    assert liar.fork_size > 0
    sites = sorted(p.name for p in (outcome.run_dir / "site-homes").iterdir())
    fooled, honest_site = sites[3], sites[0]

    # The site: it kept the fork it was shown, then refused the real history, in its own log.
    alerts = (_receipts(outcome, fooled) / "fedinfra-audit.sim-run-1" / ALERTS_FILE).read_text()
    assert "split view" in alerts
    assert "does not extend the held one" in alerts
    trained = {(e.actor.id, e.round) for e in outcome.entries if e.type == "update.received"}
    assert (fooled, 1) in trained
    assert (fooled, 2) not in trained  # refused to train on the real history
    assert (honest_site, 2) in trained
    for site in sites[:3]:
        assert not (_receipts(outcome, site) / "fedinfra-audit.sim-run-1" / ALERTS_FILE).exists()

    # Gossip: two sites' receipts hold two signed checkpoints of one size with different roots.
    store = str(outcome.run_dir / AUDIT_STORE)
    args = ["audit", "gossip", store, "--held", str(_receipts(outcome, honest_site)),
            "--held", str(_receipts(outcome, fooled))]
    out = CliRunner().invoke(build_app(), args)
    assert out.exit_code == 1, out.output
    assert "fork:" in out.output
    # The fooled site's receipts alone against the store: its checkpoint is not the store's history.
    out = CliRunner().invoke(build_app(), ["audit", "gossip", store, "--held", str(_receipts(outcome, fooled))])
    assert out.exit_code == 1, out.output
    assert "history rewritten" in out.output
    # The honest sites' receipts agree with the store.
    held = [a for s in sites[:3] for a in ("--held", str(_receipts(outcome, s)))]
    out = CliRunner().invoke(build_app(), ["audit", "gossip", store, *held])
    assert out.exit_code == 0, out.output


def _run_with_report(tmp: Path, job: JobSpec, monkeypatch: Any) -> Path:
    """A run whose ServerApp writes the report before the sites cosign the close (as the demo does)."""
    from fedinfra.coordinator.server import Coordinator
    from fedinfra.runtime.coordinator_kit import settings_from_kit, write_report
    from fedinfra.runtime.simulation import provision_simulation
    from fedinfra.site.home import HOME_ENV, KIT_ROOT_ENV
    from tests.adversarial.harness import _fast, federation

    run_id = "run-1"
    run_dir = tmp / run_id
    run_dir.mkdir()
    kits = provision_simulation(job, run_id, run_dir)
    monkeypatch.setenv(HOME_ENV, str(run_dir / "site-homes"))
    monkeypatch.setenv(KIT_ROOT_ENV, str(kits / "sites"))
    store = str(run_dir / AUDIT_STORE)
    settings = _fast(settings_from_kit(kits / "coordinator", store=store, tls=False, in_process=True, he=False))

    def report(directory: Path, rid: str) -> None:
        write_report(store, directory, rid, signer=settings.signer, formats=("json",))

    grid = federation(tmp, job, [honest] * job.sites.count)
    Coordinator(job, run_id=run_id, run_dir=run_dir, settings=settings).run(grid, after=report)
    return run_dir


def test_the_reports_verify_command_runs_on_what_the_run_leaves_and_catches_a_cut_back(
    tmp_path: Path, plain_job: JobSpec, monkeypatch: Any
) -> None:
    run_dir = _run_with_report(tmp_path, plain_job, monkeypatch)
    report = json.loads((run_dir / "report-run-1.json").read_text())
    printed = shlex.split(report["verify"]["command"])
    assert printed[:3] == ["fedinfra", "audit", "verify"]
    assert printed.count("--checkpoint") == plain_job.sites.count  # every site's receipts
    sites = sorted(p.name for p in (run_dir / "site-homes").iterdir())
    assert report["verify"]["cosigners"] == [f"fedinfra-site.{s}+{_key_id(run_dir, s)}" for s in sites]
    monkeypatch.chdir(run_dir)  # the report says: run it in the run directory
    out = CliRunner().invoke(build_app(), printed[1:])
    assert out.exit_code == 0, out.output
    assert f"({plain_job.sites.count} of {plain_job.sites.count} required" in out.output
    assert "none beyond its end" in out.output

    # The coordinator cuts its store back to the last round's checkpoint, which every site cosigned.
    with AuditLog.open(run_dir / AUDIT_STORE, readonly=True) as log:
        sizes = [size for size, *_ in log._store.checkpoints()]
        cosigned = [s for s in sizes[:-1] if len(log.cosignatures(s)) == plain_job.sites.count]
    backup = tmp_path / "before-cut.sqlite"
    shutil.copy(run_dir / AUDIT_STORE, backup)
    con = sqlite3.connect(run_dir / AUDIT_STORE)
    for table in ("audit_entries", "audit_checkpoints", "audit_cosignatures"):
        con.execute(f"DROP TRIGGER {table}_no_delete")
    con.execute("DELETE FROM audit_cosignatures WHERE tree_size > ?", (cosigned[-1],))
    con.execute("DELETE FROM audit_checkpoints WHERE tree_size > ?", (cosigned[-1],))
    con.execute("DELETE FROM audit_entries WHERE seq >= ?", (cosigned[-1],))
    con.commit()
    con.close()
    witnesses_only = printed[1: printed.index("--checkpoint")]
    assert CliRunner().invoke(build_app(), witnesses_only).exit_code == 0  # store + keys alone: the limit
    out = CliRunner().invoke(build_app(), printed[1:])
    assert out.exit_code == 1, out.output
    assert "tail truncated" in out.output


def _key_id(run_dir: Path, site: str) -> str:
    vkey = (run_dir / "kits" / "sites" / site / "cosigner.vkey").read_text().strip()
    return vkey.split("+")[1]
