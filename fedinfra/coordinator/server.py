"""The coordinator's run loop: admission, rounds, aggregation, receipts, close.

It drives sites through a Flower ``Grid`` with the Message API. It never sees site data,
only updates - and with HE secure aggregation not even those, nor their sum: it adds
ciphertexts and forwards the encrypted aggregate, and the sites evaluate (federated
evaluation) and report counts.

Under HE, round ``r``'s federated evaluation rides in round ``r + 1``'s wave: the sampled
sites evaluate the model they are about to train on (``evaluate_round``) and the others
get an EVALUATE message pushed and pulled with the train messages. Every wave costs a
SuperNode poll (Flower 1.41: up to 3 s), so one wave per round instead of two. The last
round is evaluated by the close wave. Round ``r``'s test figures are then recorded as
``evaluation.completed`` (audit) and filled into round ``r``'s result.

Under ``secagg`` and ``secagg+he`` the evaluation sums never reach the coordinator one site
at a time (issue 14): the sampled sites mask them with their round ``r + 1`` input and the
coordinator unmasks only the survivors' total with the update; sites outside the sample are
not asked; the close wave runs an evaluation-only secure sum (:meth:`_secure_close_eval`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedinfra.aggregation import blobs
from fedinfra.aggregation.digest import blob_digest, model_digest
from fedinfra.aggregation.rounds import (
    Aggregator,
    Layout,
    Reply,
    RoundSpec,
    UpdateRejected,
    aggregator_class,
    model_layout,
    start_round,
)
from fedinfra.aggregation.server_opt import ServerOptimizer
from fedinfra.config import JobSpec
from fedinfra.config.wire import (
    ARRAYS,
    COMPRESSED_UPDATE,
    CONFIG,
    DOC,
    EVAL_MASKED,
    HE_AGGREGATES,
    HE_UPDATE,
    SECAGG_EVAL,
    SECAGG_UPDATE,
    SiteHello,
    TrainInstruction,
    TrainReport,
    close_sum_round,
)
from fedinfra.coordinator import intake
from fedinfra.coordinator.admission import GateContext, evaluate_job, evaluate_site, record_evaluation, site_details
from fedinfra.coordinator.artifacts import RunArtifacts
from fedinfra.coordinator.events import NullReporter, Reporter, RoundResult
from fedinfra.coordinator.identity import identity_refusal, node_identities
from fedinfra.coordinator.inbox import pin_mmap_threshold, receive
from fedinfra.coordinator.persist import RunState, SiteBook, load_aggregate, load_state, save_state
from fedinfra.coordinator.stages import run_stage
from fedinfra.coordinator.trail import AuditTrail, RoundAbandoned, codes, failed, sha256_hex
from fedinfra.coordinator.witnesses import Witnessing, cosign_close
from fedinfra.crypto.secagg import codec as sa_codec
from fedinfra.crypto.secagg.group import GroupSum
from fedinfra.errors import ConfigError, CryptoError, PolicyViolation, RuntimeLaunchError
from fedinfra.models import get_weights, set_weights
from fedinfra.site.data import load_split
from fedinfra.site.tasks import eval_layout, job_model, job_task
from fedinfra.site.weights import weights_to_arrays
from fedinfra.task.metrics import unflatten_sums
from fedinfra.types import NDArrays

if TYPE_CHECKING:
    from fedinfra.audit import Checkpoint, Signer
    from fedinfra.audit.cosign import ViewProof
    from fedinfra.crypto import PublicParams


#: The round loop's log (issue 18): ids, counts, codes and durations, never data, model or
#: metric values, nor a site's own error text (GDPR Art. 5(1)(c) data minimisation).
_log = logging.getLogger("fedinfra.coordinator")


class _Outgoing:
    """What every instruction of a round carries, serialized once and shared (issue 17).

    Each site's message used to get its own ``weights_to_arrays(state.weights)`` (a 40 MB
    ``.npy`` copy of a 10M-parameter model per site) and, under HE, its own read of every
    aggregate file it must sync (80 MB each): a wave's instructions held ``sites`` copies.
    Here the tensors are serialized once per round and every message gets its own
    ``ArrayRecord`` and ``Array`` objects over the same immutable ``bytes``, so a site (or an
    in-process simulation) changing its record changes no other site's. Keyed by round, like
    the instruction's model digest (:meth:`Coordinator._view_digest`): the model does not
    change within a round.
    """

    def __init__(self) -> None:
        self._round = -1
        self._arrays: ArrayRecord | None = None
        self._aggregates: dict[int, bytes] = {}

    def _at(self, rnd: int) -> None:
        if rnd != self._round:
            self.clear()
            self._round = rnd

    def model(self, state: RunState) -> ArrayRecord:
        """The model's tensors for one message (fresh record, shared serialized bytes)."""
        self._at(state.round)
        if self._arrays is None:
            self._arrays = weights_to_arrays(state.weights)
        return ArrayRecord(
            {k: Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=a.data) for k, a in self._arrays.items()}
        )

    def aggregate(self, state_dir: Path, rnd: int, of_round: int) -> bytes:
        """The encrypted aggregate of ``of_round``, read from disk once per round."""
        self._at(rnd)
        blob = self._aggregates.get(of_round)
        if blob is None:
            blob = self._aggregates[of_round] = load_aggregate(state_dir, of_round)
        return blob

    def clear(self) -> None:
        """Forget the serialized copies (once a wave is pushed, its messages hold them)."""
        self._arrays = None
        self._aggregates = {}


@dataclass(frozen=True)
class CoordinatorSettings:
    """How the coordinator runs: its audit store and key, transport facts, HE parameters."""

    store: str
    signer: Signer
    tls: bool = False
    in_process: bool = False
    audit_retention_days: int = 2192  # HIPAA 164.316(b)(2): six years
    he_public: PublicParams | None = None
    report_formats: tuple[str, ...] = ("html", "pdf", "json")
    resume: bool = False
    node_wait_s: float = 120.0
    #: Site name -> DER public key the coordinator kit pins (deployed); None in simulation.
    site_node_keys: Mapping[str, bytes] | None = None
    #: Site name -> cosigner key text pinned by the key ceremony (``[audit.cosigners]``); None: not pinned.
    site_cosigner_keys: Mapping[str, str] | None = None


@dataclass
class Site:
    """An admitted site."""

    node_id: int
    hello: SiteHello


@dataclass
class _EvalTally:
    """Federated evaluation of one round's model: sums of the sites' counts, nothing else."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    sites: list[str] = field(default_factory=list)
    sums: list[Mapping[str, list[float]]] = field(default_factory=list)

    def add(
        self, site: str, loss_sum: float, correct: int, count: int, sums: Mapping[str, list[float]] | None = None
    ) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.count += count
        self.sites.append(site)
        if sums:
            self.sums.append(sums)

    def add_total(self, sites: Iterable[str], sums: Mapping[str, Any]) -> None:
        """The survivors' total sums from a secure aggregate: no site's own figures."""
        flat = {k: [float(v) for v in np.asarray(a).reshape(-1)] for k, a in sums.items()}
        count = flat.get("count", [0.0])[0]
        if count <= 0:
            return  # no site contributed figures (none had a test shard, or all had sent this model's)
        self.loss_sum += flat.get("loss", [0.0])[0]
        self.correct += round(flat.get("correct", [0.0])[0])
        self.count += round(count)
        self.sites.extend(sites)
        self.sums.append(flat)

    def metrics(self, kind: Any) -> dict[str, float]:
        """The task's metrics from the sites' sums (fedinfra.task.metrics); {} when none agree."""
        from fedinfra.task.metrics import add_sums, finalize

        try:
            return finalize(kind, add_sums(self.sums)) if self.sums else {}
        except (ValueError, KeyError, IndexError):
            return {}

    def result(self) -> tuple[float, float]:
        """(test loss, test accuracy); NaN when no site reported."""
        if self.count == 0:
            return float("nan"), float("nan")
        return self.loss_sum / self.count, self.correct / self.count


class Coordinator:
    """Runs one job over a Flower grid."""

    witnessing: Witnessing

    def __init__(
        self,
        job: JobSpec,
        *,
        run_id: str,
        run_dir: Path,
        settings: CoordinatorSettings,
        reporter: Reporter | None = None,
    ) -> None:
        self.job = job
        self.run_id = run_id
        self.settings = settings
        self.artifacts = RunArtifacts(run_dir)
        self.state_dir = run_dir / "state"
        self.reporter: Reporter = reporter or NullReporter()
        # The coordinator cannot read the aggregate (HE): sites decrypt and evaluate it.
        self.he = aggregator_class(job).hides_aggregate
        if self.he and settings.he_public is None:
            raise ConfigError("secure_aggregation is on but the coordinator kit has no HE parameters")
        self._layout: Layout | None = None
        # The coordinator holds no site data; a built-in task's bundled test set (simulation)
        # is its reference for per-round figures, a user task is evaluated by the sites.
        self.task = job_task(job)
        self.reference = load_split(job) if job.task is None else None
        self.num_features = self.task.expected_features()
        # Without a reference set the sites evaluate each round's model, as under HE.
        self.sites_evaluate = self.he or self.reference is None
        # SecAgg modes: evaluation sums travel masked, only their total is unmasked (issue 14).
        self.masked = job.secure_aggregation.masked
        # bfv/ckks: they travel under zero-sum masks of the shared HE key (crypto.secagg.group).
        self.group = self.he and not self.masked
        self._metrics: dict[str, float | None] = {}
        self.gate = GateContext(
            tls=settings.tls, in_process=settings.in_process, audit_retention_days=settings.audit_retention_days
        )
        # Which sites a round samples. Under user-level DP the accounting credits
        # amplification by sampling (McMahan et al. 2018), which assumes the sample is not
        # known in advance: it must not follow from the job's public seed, so it is drawn
        # from the OS CSPRNG (kept in the crash-safe state so a resumed run continues it).
        seed = secrets.randbits(128) if job.privacy.mechanism == "user-dp" else job.seed
        self._rng = np.random.default_rng(seed)
        self.trail: AuditTrail | None = None
        self._digests: dict[int, str] = {}
        self._outgoing = _Outgoing()
        self._packs: list[Any] = []

    # -- plumbing ----------------------------------------------------------------------
    def _doc(self, rnd: int, phase: str, **extra: Any) -> TrainInstruction:
        return TrainInstruction(
            run_id=self.run_id,
            round=rnd,
            job=self.job.model_dump(mode="json"),
            phase=phase,
            **extra,
        )

    def _send(self, grid: Grid, messages: list[Message], *, collect: bool = False) -> Iterable[Message]:
        """Push ``messages``; yield each reply as it lands until all are in or ``job.timeout_s`` has passed.

        What ``Grid.send_and_receive`` does, polling every :data:`~fedinfra.coordinator.inbox.PULL_INTERVAL_S` instead
        of its fixed 3 s (Flower 1.41): a wave ends when its last reply lands, not up to 3 s
        later. Replies are handed over one at a time (:func:`~fedinfra.coordinator.inbox.receive`),
        so a wave of big updates is folded reply by reply, never held all at once (issue 17);
        ``collect`` (the train wave) frees each folded reply before the next is pulled.
        """
        return receive(grid, grid.push_messages(messages), timeout_s=self.job.timeout_s, collect=collect)

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.settings.node_wait_s
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.job.sites.count:
                return nodes
            if time.monotonic() > deadline:
                raise RuntimeLaunchError(
                    f"only {len(nodes)} of {self.job.sites.count} sites connected within "
                    f"{self.settings.node_wait_s:.0f} s; start the missing sites or lower sites.count"
                )
            time.sleep(0.5)

    # -- admission ---------------------------------------------------------------------
    def admit(self, grid: Grid, trail: AuditTrail, packs: list[Any]) -> list[Site]:
        """Ask every node for its hello; admit those that pass their own and our site gate."""
        nodes = self._wait_for_nodes(grid)
        doc = self._doc(0, "admit").model_dump_json()
        messages = [
            Message(RecordDict({CONFIG: ConfigRecord({DOC: doc})}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in nodes
        ]
        admitted: list[Site] = []
        identities = node_identities(grid.get_nodes())
        for reply in self._send(grid, messages):
            node = reply.metadata.src_node_id
            if reply.has_error():
                # Flower's error reason is the site's exception text, which may carry paths or
                # values: the log keeps a check code and Flower's numeric error code only.
                details = {"node": str(node), "reason": "site error", "check": "site-error"}
                if reply.error:
                    details["error_code"] = str(int(reply.error.code))
                trail.event("site.rejected", outcome="denied", details=details)
                self._log_rejected(None, node, "site-error")
                continue
            try:
                hello = intake.parse_doc(SiteHello, reply)
                evaluation, manifest = evaluate_site(self.job, packs, self.gate, hello)
            except Exception as exc:  # one site's hello never ends the run (issue 16)
                check = intake.check_of(exc)
                trail.event(
                    "site.rejected", outcome="denied", details={"node": str(node), "reason": check, "check": check}
                )
                self._log_rejected(None, node, check)
                continue
            refusal = identity_refusal(
                hello.site,
                identities.get(node),
                pinned=self.settings.site_node_keys,
                admitted=[s.hello.site for s in admitted],
            )
            if refusal:  # a site is its node key, not the name it declares (coordinator/identity.py)
                trail.event(
                    "site.rejected",
                    outcome="denied",
                    details={"node": str(node), "reason": refusal, "code": "identity"},
                )
                self._log_rejected(None, node, "identity")
                continue
            record_evaluation(trail, evaluation, gate="site", round=0, site=hello.site)
            details = site_details(hello, manifest)
            reason, code = "", ""
            if not hello.preflight_passed:
                # Its ``preflight_reason`` is the site's free text: never copied to the log.
                reason, code = "site's own preflight refused", "preflight"
                details["check"] = "site.preflight"
            elif evaluation.blocking:
                reason, code = evaluation.reason(), "policy"
            elif self.num_features is not None and hello.num_features != self.num_features:
                reason, code = f"site has {hello.num_features} features, the model {self.num_features}", "features"
            else:
                reason, code = self.witnessing.refusal(hello.site, hello.cosigner), "cosigner"
            if reason:
                trail.event("site.rejected", outcome="denied", site=hello.site, details={**details, "reason": reason})
                self._log_rejected(hello.site, node, code)
                continue
            details.update(self.witnessing.enrol(hello.site, hello.cosigner))
            trail.event("site.admitted", site=hello.site, details=details)
            _log.info("run %s: site %s admitted", self.run_id, hello.site,
                      extra={"event": "site.admitted", "run_id": self.run_id, "site": hello.site})
            admitted.append(Site(node, hello))
        if len(admitted) < self.job.sites.min_sites:
            raise PolicyViolation(
                f"only {len(admitted)} sites passed admission; the job needs sites.min_sites={self.job.sites.min_sites}"
            )
        return sorted(admitted, key=lambda s: s.hello.site)

    def _log_rejected(self, site: str | None, node: int, check: str) -> None:
        """A refused site in the log: its id (or Flower's node id) and the check code, no reason text."""
        who = site or f"node {node}"
        _log.warning("run %s: %s rejected at admission (%s)", self.run_id, who, check,
                     extra={"event": "site.rejected", "run_id": self.run_id, "site": site, "node": str(node),
                            "check": check})

    def _log_update_rejected(self, rnd: int, site: str, code: str) -> None:
        _log.warning("run %s round %d: update of %s rejected (%s)", self.run_id, rnd, site, code,
                     extra={"event": "update.rejected", "run_id": self.run_id, "round": rnd, "site": site,
                            "code": code})

    # -- one round ---------------------------------------------------------------------
    def _sample(self, sites: list[Site]) -> list[Site]:
        """Poisson sampling from the OS CSPRNG (:mod:`fedinfra.privacy.sampling`)."""
        from fedinfra.privacy.sampling import poisson_sample

        return poisson_sample(sites, rate=self.job.sites.fraction, min_size=self.job.sites.min_sites)

    def _payload(
        self,
        state: RunState,
        site: Site,
        rnd: int,
        phase: str,
        sampled: int,
        evaluate_round: int | None = None,
        extra: dict[str, Any] | None = None,
        admitted: int = 0,
        eval_roster: list[str] | None = None,
    ) -> RecordDict:
        """The message to one site: receipts owed to it, and the model (or HE aggregates)."""
        assert self.trail is not None
        view = self._view_proof(state)  # first: it may publish the checkpoint the site cosigns
        book = state.books.setdefault(site.hello.site, SiteBook())
        head = self.trail.log.latest_checkpoint
        # Only entries a signed checkpoint already covers can get a receipt now.
        book.sent = [seq for seq in book.pending if head is not None and seq < head.size]
        receipts = [self.trail.receipt(seq, since=book.seen_size) for seq in book.sent]
        config: dict[str, Any] = dict(extra or {})
        records: dict[str, Any] = {}
        sync_from = None
        if not self.he:
            records[ARRAYS] = self._outgoing.model(state)
        else:
            sync_from = book.synced + 1
            if book.synced == 0:
                records[ARRAYS] = self._outgoing.model(state)
            # One payload per round to sync, each in segments (fedinfra.aggregation.blobs).
            blobs.put_list(
                records,
                HE_AGGREGATES,
                [self._outgoing.aggregate(self.state_dir, state.round, r) for r in range(sync_from, state.round + 1)],
            )
        cosign = self.witnessing.request(book.seen_size, view)  # the site checks and cosigns the head
        doc = self._doc(
            rnd,
            phase,
            receipts=receipts,
            sync_from=sync_from,
            sampled=sampled,
            evaluate_round=evaluate_round,
            admitted=admitted,
            eval_roster=eval_roster or [],
            cosign=cosign,
            model_digest=self._view_digest(state),
        )
        config[DOC] = doc.model_dump_json()
        records[CONFIG] = ConfigRecord(config)
        if (receipts or cosign) and head is not None:
            book.seen_size = head.size
        return RecordDict(records)

    def _view_digest(self, state: RunState) -> str:
        """The digest every site's instruction names: the model, or (HE) the newest aggregate.

        The same digest the audit log holds as the subject of the last ``aggregation.completed``
        (see :mod:`fedinfra.aggregation.digest`); cached per round.
        """
        cached = self._digests.get(state.round)
        if cached is None:
            if self.he and state.round > 0:
                cached = blob_digest(load_aggregate(self.state_dir, state.round))
            else:
                cached = model_digest(state.weights)
            self._digests = {state.round: cached}
        return cached

    def _view_proof(self, state: RunState) -> ViewProof | None:
        """The proof that the head checkpoint announces the model every instruction now names.

        Checkpoints published at the end of each round (and before the first) announce the
        next model's digest (:meth:`_checkpoint`), so the head normally does; if another run
        writing the same log published after it, this run publishes one that does. The site
        checks the proof before cosigning (:func:`fedinfra.site.receipts.check_logged_view`).
        """
        assert self.trail is not None
        digest = self._view_digest(state)
        proof = self.witnessing.view_proof(self.run_id, digest)
        if proof is None:
            self._checkpoint(state)
            proof = self.witnessing.view_proof(self.run_id, digest)
        return proof

    def _checkpoint(self, state: RunState) -> Checkpoint:
        """Publish a checkpoint announcing the digest of the model the next instructions name."""
        assert self.trail is not None
        return self.trail.checkpoint(state.round, model_sha256=self._view_digest(state))

    def _delivered(self, state: RunState, site: str) -> None:
        """A site answered: receipts reached it and (HE) it holds the current model."""
        book = state.books[site]
        book.pending = [seq for seq in book.pending if seq not in book.sent]
        book.sent = []
        book.synced = state.round

    def run_round(self, grid: Grid, rnd: int, sites: list[Site], state: RunState) -> RoundResult:
        """Send the model to a sample of sites, aggregate valid replies, evaluate."""
        assert self.trail is not None
        trail = self.trail
        start = time.monotonic()
        sample = self._sample(sites)
        view = self._view_digest(state)
        trail.event("round.started", round=rnd, details={"sites": [s.hello.site for s in sample], "model_sha256": view})
        _log.info("run %s round %d started: %d of %d sites sampled", self.run_id, rnd, len(sample), len(sites),
                  extra={"event": "round.started", "run_id": self.run_id, "round": rnd, "sampled": len(sample),
                         "admitted": len(sites)})
        by_node = {s.node_id: s for s in sample}
        # HE: the previous round's federated evaluation joins this wave (module docstring).
        evaluate_round = rnd - 1 if self.sites_evaluate and rnd > 1 else None
        # Masked modes: the sampled sites' evaluation sums ride in their masked input (issue 14).
        secure_eval = self.masked and evaluate_round is not None
        agg = start_round(
            RoundSpec(
                run_id=self.run_id,
                round=rnd,
                layout=self.model_layout(),
                job=self.job,
                he_public=self.settings.he_public,
                sites=tuple(s.hello.site for s in sample),
                eval_size=self.eval_size() if secure_eval else 0,
            )
        )
        stage_doc = self._doc(rnd, "secagg").model_dump_json()
        nodes = {s.hello.site: s.node_id for s in sample}
        with _abandon_on_failure(rnd):
            for stage in agg.stages_before():  # multi-stage protocols (SecAgg): key waves
                run_stage(lambda m: self._send(grid, m), trail, rnd=rnd, doc=stage_doc, nodes=nodes, stage=stage)
        extras = {s.node_id: agg.train_extra(s.hello.site) for s in sample}
        evaluators: dict[int, Site] = {}
        if evaluate_round is not None and not self.masked:
            # Masked modes: a site outside the sample has no masked input to carry its sums in.
            evaluators = {s.node_id: s for s in sites if s.node_id not in by_node}
        # bfv/ckks: every site evaluating in this wave is on one roster of zero-sum masks.
        roster = [s.hello.site for s in sample if extras[s.node_id] is not None]
        roster = sorted(roster + [s.hello.site for s in evaluators.values()])
        group_sum = self._group_sum(roster) if self.group and evaluate_round is not None else None
        eval_roster = roster if group_sum is not None else []
        messages = [
            Message(
                self._payload(
                    state,
                    s,
                    rnd,
                    "train",
                    len(sample),
                    evaluate_round,
                    extra=extras[s.node_id],
                    admitted=len(sites),
                    eval_roster=eval_roster,
                ),
                dst_node_id=s.node_id,
                message_type=MessageType.TRAIN,
            )
            for s in sample
            if extras[s.node_id] is not None
        ]
        if evaluators:
            assert evaluate_round is not None
            messages += self._eval_messages(state, evaluate_round, list(evaluators.values()), "evaluate", eval_roster)
        tally = _EvalTally()
        received: dict[str, int] = {}
        refused: dict[str, str] = {}
        loss_sum, loss_n = 0.0, 0
        max_eps = 0.0
        wave = self._send(grid, messages, collect=True)  # pushed: the instructions are not needed any more
        del messages
        self._outgoing.clear()
        for reply in wave:  # big replies: freed one by one
            if reply.metadata.src_node_id in evaluators:
                assert evaluate_round is not None
                evaluator = evaluators[reply.metadata.src_node_id]
                if self._eval_reply(reply, evaluator, evaluate_round, state, tally, view) and group_sum is not None:
                    self._group_add(group_sum, reply, evaluator.hello.site, rnd)
                continue
            site = by_node.get(reply.metadata.src_node_id)
            if site is None:
                continue
            name = site.hello.site
            try:
                report = intake.train_report(
                    reply, site=name, rnd=rnd, declared_examples=site.hello.num_examples, run_id=self.run_id, view=view
                )
                self._delivered(state, name)
                self.witnessing.accept(name, report.cosignature)
                ev = report.evaluation
                clear = not (self.masked or self.group)  # else the figures never come in a report
                if evaluate_round is not None and ev is not None and ev.round == evaluate_round and clear:
                    tally.add(name, ev.loss_sum, ev.correct, ev.count, ev.sums)
                if group_sum is not None and report.status == "ok":
                    self._group_add(group_sum, reply, name, rnd)
                if report.status != "ok":
                    # The site's ``reason`` is its free text (paths, values): the log keeps the
                    # bounded ``code`` only, as for any other rejection (GDPR Art. 5(1)(c)).
                    code = report.code or "error"
                    refused[name] = code
                    check = f"site.refused:{code}"
                    trail.event(
                        "update.rejected",
                        round=rnd,
                        site=name,
                        outcome="denied",
                        details={"site": name, "reason": check, "code": code, "check": check},
                    )
                    self._log_update_rejected(rnd, name, code)
                    continue
                # Binary payloads are bounded by the job's model before they are joined or parsed.
                n_eval = agg.spec.eval_size
                if self.job.secure_aggregation.mode == "secagg+he":
                    intake.bounded_blob(reply, SECAGG_EVAL, 8 * n_eval)  # 64-bit lanes, exact
                config = intake.reply_config(reply, self._payload_bounds(agg.spec))
                folded = agg.accept(
                    Reply(
                        site=name,
                        weight=self._weight(report),
                        config=config,
                        arrays=reply.content.array_records.get(ARRAYS),
                    )
                )
                del config  # the joined payload: nothing keeps it past the fold (inbox.release)
                subject = folded.subject
            except Exception as exc:  # one site's reply never ends the run (issue 16)
                check = intake.check_of(exc)
                refused[name] = "invalid"
                trail.event(
                    "update.rejected",
                    round=rnd,
                    site=name,
                    outcome="denied",
                    details={"site": name, "reason": check, "code": "invalid", "check": check},
                )
                self._log_update_rejected(rnd, name, "invalid")
                continue
            entry = trail.event(
                "update.received",
                round=rnd,
                site=name,
                subject=subject,
                details={
                    "site": name,
                    "receipt_verified": bool(report.details.get("receipts_verified")),
                    "bytes_sent": subject[2],
                },
            )
            received[name] = entry.seq
            book = state.books[name]
            book.pending.append(entry.seq)
            book.rounds_joined += 1
            if not report.details.get("train_loss_withheld"):
                loss_sum += report.train_loss
                loss_n += 1
            if report.details.get("epsilon_total") is not None:
                total = float(report.details["epsilon_total"])
                trail.event(
                    "budget.spent",
                    round=rnd,
                    site=name,
                    details={
                        **{k: v for k, v in report.details.items() if k != "receipts_verified"},
                        "site": name,
                        "epsilon": max(0.0, total - book.epsilon_total),
                        "epsilon_total": total,
                    },
                )
                book.epsilon_total = total
                max_eps = max(max_eps, total)
        for silent in sorted({s.hello.site for s in sample} - set(received) - set(refused)):
            # No reply within job.timeout_s (a dead or slow-loris site): named, not waited for.
            check = "reply.timeout"
            trail.event(
                "update.rejected",
                round=rnd,
                site=silent,
                outcome="denied",
                details={"site": silent, "reason": check, "code": "timeout", "check": check},
            )
            self._log_update_rejected(rnd, silent, "timeout")
        if evaluate_round is not None and not secure_eval:
            if group_sum is not None:
                tally = self._group_tally(group_sum)
            self._record_evaluation(state, rnd, evaluate_round, tally)
        with _abandon_on_failure(rnd):
            for stage in agg.stages_after():  # SecAgg: the unmasking wave
                run_stage(lambda m: self._send(grid, m), trail, rnd=rnd, doc=stage_doc, nodes=nodes, stage=stage)
        train_loss = loss_sum / loss_n if loss_n else float("nan")  # NaN: withheld under DP
        return self._finish_round(
            rnd, state, agg, received, refused, train_loss, max_eps, start, evaluate_round if secure_eval else None
        )

    def _payload_bounds(self, spec: RoundSpec) -> dict[str, int]:
        """The binary payloads a reply to ``spec``'s round may carry, each with its bound (:mod:`.intake`)."""
        secure = self.job.secure_aggregation
        bounds: dict[str, int] = {}
        if self.settings.he_public is not None:
            bounds[HE_UPDATE] = intake.he_update_bound(self.settings.he_public.params, spec.layout)
        if secure.masked:  # secagg; secagg+he's close wave (the evaluation-only secure sum)
            bounds[SECAGG_UPDATE] = intake.secagg_update_bound(secure, spec.layout, spec.eval_size)
        if self.job.compression is not None:
            bounds[COMPRESSED_UPDATE] = intake.compressed_update_bound(spec.layout)
        return bounds

    def eval_size(self) -> int:
        """Length of the job's evaluation sums (:func:`fedinfra.site.tasks.eval_layout`), as the sites derive it."""
        return sum(n for _, n in eval_layout(self.job))

    def model_layout(self) -> Layout:
        """The update layout every reply must have: the job's model's, never a reply's."""
        if self._layout is None:
            model, _ = job_model(self.job, self.task)
            self._layout = model_layout(get_weights(model))
        return self._layout

    def _finish_round(
        self,
        rnd: int,
        state: RunState,
        agg: Aggregator,
        received: dict[str, int],
        refused: dict[str, str],
        train_loss: float,
        max_eps: float,
        start: float,
        secure_eval: int | None = None,
    ) -> RoundResult:
        assert self.trail is not None
        trail = self.trail
        count = len(received)
        self.witnessing.last_round = sorted(received)
        if count < self.job.sites.min_sites:
            if refused and all(code == "budget" for code in refused.values()):
                raise _BudgetExhausted(rnd)
            raise PolicyViolation(
                f"round {rnd}: {count} valid replies, fewer than sites.min_sites={self.job.sites.min_sites}"
            )
        from fedinfra.coordinator.admission import job_facts
        from fedinfra.policy import Facts, evaluate
        from fedinfra.policy._facts import RoundFacts

        round_eval = evaluate(
            self._packs,
            "round",
            Facts(
                job=job_facts(self.job, self.gate),
                round=RoundFacts(
                    round=rnd,
                    participants=count,
                    epsilon_spent=max_eps if self.job.privacy.mechanism != "none" else 0.0,
                    audit_verified=True,
                ),
            ),
        )
        record_evaluation(trail, round_eval, gate="round", round=rnd)
        if round_eval.blocking:
            raise PolicyViolation(f"round {rnd} denied: {round_eval.reason()}")
        aggregate: bytes | None = None
        with _abandon_on_failure(rnd):
            outcome = agg.finish()
        if secure_eval is not None:
            # Round ``secure_eval``'s evaluation: the survivors' total, unmasked with the update.
            tally = _EvalTally()
            if outcome.evaluation is not None:
                tally.add_total(outcome.sites, unflatten_sums(outcome.evaluation, eval_layout(self.job)))
            self._record_evaluation(state, rnd, secure_eval, tally)
        if outcome.ciphertext is not None:
            aggregate = outcome.ciphertext
            state.round = rnd
            # Evaluated by the sites in the next wave (or the close wave); NaN until then.
            test_loss, test_acc = float("nan"), float("nan")
            subject: tuple[str, bytes] = ("aggregate.ciphertext", aggregate)
        else:
            opt = ServerOptimizer(lr=self.job.training.server_lr, momentum=self.job.training.server_momentum)
            opt.load_state(state.optimizer)
            assert outcome.mean is not None
            state.weights = opt.step(state.weights, outcome.mean)
            state.optimizer = opt.state()
            state.round = rnd
            test_loss, test_acc = self._evaluate(state.weights)
            subject = ("model", b"".join(state.weights[k].tobytes() for k in sorted(state.weights)))
        result = RoundResult(
            round=rnd,
            test_loss=test_loss,
            test_accuracy=test_acc,
            train_loss=train_loss,
            replies=count,
            refused=len(refused),
            seconds=time.monotonic() - start,
            details={"epsilon_max": max_eps, **({"metrics": self._metrics} if aggregate is None else {})},
        )
        state.results.append(result)
        state.rng = dict(self._rng.bit_generator.state)
        save_state(self.state_dir, state, aggregate)
        details: dict[str, object] = {
            "replies": count,
            "train_loss": train_loss,
            "mode": self.job.secure_aggregation.mode,
            **outcome.details,
        }
        if aggregate is None:
            details.update(test_loss=test_loss, test_accuracy=test_acc, metrics=self._metrics)
        trail.event("aggregation.completed", round=rnd, subject=subject, details=details)
        self._checkpoint(state)
        _log.info(
            "run %s round %d finished: %d updates aggregated (%s), %d refused, %.1f s",
            self.run_id, rnd, count, self.job.secure_aggregation.mode, len(refused), result.seconds,
            extra={"event": "aggregation.completed", "run_id": self.run_id, "round": rnd, "updates": count,
                   "refused": len(refused), "mode": self.job.secure_aggregation.mode,
                   "seconds": round(result.seconds, 3)},
        )
        return result

    def _eval_messages(
        self, state: RunState, rnd: int, sites: list[Site], phase: str, eval_roster: list[str] | None = None
    ) -> list[Message]:
        """EVALUATE messages bringing ``sites`` to the model after ``rnd`` (HE: encrypted)."""
        return [
            Message(
                self._payload(state, s, rnd, phase, 1, eval_roster=eval_roster or []),
                dst_node_id=s.node_id,
                message_type=MessageType.EVALUATE,
            )
            for s in sites
        ]

    def _group_sum(self, roster: list[str]) -> GroupSum:
        """bfv/ckks: the sum of the roster's masked evaluation sums (and one count lane)."""
        return GroupSum(roster, self.eval_size() + 1)

    def _group_add(self, group_sum: GroupSum, reply: Message, site: str, rnd: int) -> None:
        """Fold ``site``'s masked sums in; a missing or malformed one is audited (the sum then stays masked)."""
        assert self.trail is not None
        try:
            raw = reply.content.config_records[CONFIG].get(EVAL_MASKED)
            if not isinstance(raw, bytes | bytearray):
                raise CryptoError("reply carries no masked evaluation sums")
            group_sum.add(site, bytes(raw[: 8 * group_sum.size + 1]))
        except CryptoError:
            check = "reply.eval.masked"
            self.trail.event(
                "update.rejected",
                round=rnd,
                site=site,
                outcome="denied",
                details={"site": site, "reason": check, "code": "evaluation", "check": check},
            )

    def _group_tally(self, group_sum: GroupSum) -> _EvalTally:
        """The roster's total, if every member's masked sums came in (else nothing is released)."""
        tally = _EvalTally()
        total = group_sum.total()
        n = len(group_sum.roster)
        if total is None or int(total[-1]) != n:
            return tally
        try:
            values = sa_codec.decode_eval(total[:-1], n, self.job.secure_aggregation)
        except CryptoError:
            return tally
        tally.add_total(group_sum.roster, unflatten_sums(values, eval_layout(self.job)))
        return tally

    def _eval_reply(
        self, reply: Message, site: Site, rnd: int, state: RunState, tally: _EvalTally, view: str
    ) -> bool:
        """Add one site's evaluation counts of round ``rnd``'s model to ``tally``."""
        name = site.hello.site
        assert self.trail is not None
        try:
            report = intake.eval_report(reply, site=name, rnd=rnd, run_id=self.run_id, view=view)
            if report.status != "ok":
                raise intake.Rejected("evaluation.refused")
        except Exception as exc:  # one site's report never ends the run (issue 16)
            check = intake.check_of(exc)
            self.trail.event(
                "update.rejected",
                round=rnd,
                site=name,
                outcome="denied",
                details={"site": name, "reason": check, "code": "evaluation", "check": check},
            )
            return False
        self._delivered(state, name)
        self.witnessing.accept(name, report.cosignature)
        if not (self.masked or self.group):  # else figures only inside a secure sum, never a report's
            tally.add(name, report.loss_sum, report.correct, report.count, report.sums)
        return True

    def _federated_eval(
        self, grid: Grid, rnd: int, sites: list[Site], state: RunState, phase: str = "evaluate"
    ) -> _EvalTally:
        """A wave of its own: every site opens the aggregate and evaluates on its test shard."""
        by_node = {s.node_id: s for s in sites}
        tally = _EvalTally()
        view = self._view_digest(state)
        roster = sorted(s.hello.site for s in sites)
        group_sum = self._group_sum(roster) if self.group and self.sites_evaluate else None
        messages = self._eval_messages(state, rnd, sites, phase, roster if group_sum is not None else [])
        for reply in self._send(grid, messages):
            site = by_node.get(reply.metadata.src_node_id)
            if site is not None and self._eval_reply(reply, site, rnd, state, tally, view) and group_sum is not None:
                self._group_add(group_sum, reply, site.hello.site, rnd)
        return self._group_tally(group_sum) if group_sum is not None else tally

    def _secure_close_eval(self, grid: Grid, sites: list[Site], state: RunState) -> _EvalTally:
        """The close wave with the final model's evaluation inside an evaluation-only secure sum.

        SecAgg+ over an empty model layout (round id :func:`close_sum_round`): the key waves,
        the close messages carrying each site's mask stage, the consistency and unmask waves.
        The coordinator unmasks only the survivors' total sums (issue 14). If the secure sum
        cannot complete (too few survivors) the final model's figures are not released; the
        close wave itself (cosignatures, receipts, the sites' final model) still happens.
        """
        from fedinfra.aggregation.secagg import SecAggAggregator
        from fedinfra.crypto.secagg import SecAggAbandoned

        assert self.trail is not None
        trail = self.trail
        rnd, sum_id = state.round, close_sum_round(state.round)
        names = tuple(s.hello.site for s in sites)
        nodes = {s.hello.site: s.node_id for s in sites}
        tally = _EvalTally()
        view = self._view_digest(state)
        doc = self._doc(sum_id, "secagg").model_dump_json()
        agg: SecAggAggregator | None = None
        try:
            agg = SecAggAggregator(
                RoundSpec(
                    run_id=self.run_id, round=sum_id, layout=(), job=self.job, sites=names, eval_size=self.eval_size()
                )
            )
            for stage in agg.stages_before():
                run_stage(lambda m: self._send(grid, m), trail, rnd=rnd, doc=doc, nodes=nodes, stage=stage)
        except (SecAggAbandoned, ValueError, ConfigError):
            agg = None  # no secure sum: the close wave goes out without mask stages
        messages = []
        for s in sites:
            extra = agg.train_extra(s.hello.site) if agg is not None else None
            payload = self._payload(state, s, rnd, "close", 1, extra=extra)
            messages.append(Message(payload, dst_node_id=s.node_id, message_type=MessageType.EVALUATE))
        by_node = {s.node_id: s for s in sites}
        for reply in self._send(grid, messages):
            site = by_node.get(reply.metadata.src_node_id)
            if site is None:
                continue
            ok = self._eval_reply(reply, site, rnd, state, tally, view)  # masked: no figures in the clear
            if ok and agg is not None:
                try:
                    config = intake.reply_config(reply, self._payload_bounds(agg.spec))
                    agg.accept(Reply(site=site.hello.site, weight=1.0, config=config))
                except (UpdateRejected, intake.Rejected) as exc:  # one site's reply never ends the run
                    trail.event(
                        "update.rejected",
                        round=rnd,
                        site=site.hello.site,
                        outcome="denied",
                        details={
                            "site": site.hello.site,
                            "reason": exc.check,
                            "code": "evaluation",
                            "check": exc.check,
                        },
                    )
        if agg is None:
            return tally
        try:
            for stage in agg.stages_after():
                run_stage(lambda m: self._send(grid, m), trail, rnd=rnd, doc=doc, nodes=nodes, stage=stage)
            outcome = agg.finish()
        except (SecAggAbandoned, ConfigError) as exc:
            _log.warning(
                "run %s: the close wave's secure evaluation sum did not complete (%s); "
                "the final model's figures are not released",
                self.run_id,
                type(exc).__name__,
            )
            return tally
        if outcome.evaluation is not None:
            tally.add_total(outcome.sites, unflatten_sums(outcome.evaluation, eval_layout(self.job)))
        return tally

    def _record_evaluation(self, state: RunState, wave: int, rnd: int, tally: _EvalTally) -> None:
        """HE: round ``rnd``'s federated evaluation is in; fill its result and audit it.

        Logged in the wave that carried it (audit round ``wave``) with ``evaluated_round``.
        Only sums reach the coordinator: test loss, correct and example counts.
        """
        assert self.trail is not None
        loss, acc = tally.result()
        metrics = _finite(tally.metrics(self.task.kind))
        state.results = [
            dataclasses.replace(r, test_loss=loss, test_accuracy=acc, details={**r.details, "metrics": metrics})
            if r.round == rnd
            else r
            for r in state.results
        ]
        self.trail.event(
            "evaluation.completed",
            round=wave,
            details={
                "evaluated_round": rnd,
                "test_loss": None if math.isnan(loss) else loss,
                "test_accuracy": None if math.isnan(acc) else acc,
                "examples": tally.count,
                "metrics": metrics,
                "sites": sorted(tally.sites),
                "mode": self.job.secure_aggregation.mode,
            },
        )

    @staticmethod
    def _result_of(state: RunState, rnd: int) -> RoundResult | None:
        return next((r for r in state.results if r.round == rnd), None)

    def _weight(self, report: TrainReport) -> float:
        """Weigh a reply: by examples, except under user-level DP.

        There every site weighs the same, so one site's influence on the mean is bounded by
        the clip (McMahan et al. 2018).
        """
        if self.job.privacy.mechanism == "user-dp":
            return 1.0
        return float(report.num_examples)

    def _evaluate(self, weights: NDArrays) -> tuple[float, float]:
        """(loss, accuracy) on the reference test set; NaN without one (sites evaluate)."""
        if self.reference is None:
            return float("nan"), float("nan")
        from fedinfra.task.metrics import evaluate_sums, finalize

        model, _ = job_model(self.job, self.task)
        set_weights(model, weights)
        sums = evaluate_sums(self.task, model, self.reference.x_test, self.reference.y_test)
        self._metrics = _finite(finalize(self.task.kind, sums))
        n = float(sums["count"][0])
        correct = float(sums["correct"][0]) if "correct" in sums else float("nan")
        return float(sums["loss"][0]) / n, correct / n

    # -- the whole run -----------------------------------------------------------------
    def _open(self) -> AuditTrail:
        from fedinfra.audit import AuditLog

        log = AuditLog.open(self.settings.store, origin=self.settings.signer.name, signer=self.settings.signer)
        self.witnessing = Witnessing(log, self.settings.site_cosigner_keys)
        return AuditTrail(log, run_id=self.run_id, key_id=self.settings.signer.key_id)

    def _start(self, trail: AuditTrail) -> RunState:
        """Admit the job (fresh run) or find where to continue (resume)."""
        from fedinfra import __version__

        if self.settings.resume:
            done = [e.round or 0 for e in trail.log.entries(run_id=self.run_id, type="aggregation.completed")]
            if not trail.log.entries(run_id=self.run_id, type="run.created"):
                raise ConfigError(f"run {self.run_id} is not in the audit store; cannot resume")
            if not done:
                return self._fresh_state()
            state = load_state(self.state_dir, max(done))
            if state.rng:
                self._rng.bit_generator.state = state.rng
            trail.event(
                "run.created",
                round=state.round,
                details={"resumed_after_round": state.round, "fedinfra_version": __version__},
            )
            return state
        self.artifacts.write_job(self.job, self.run_id)
        job_eval = evaluate_job(self.job, self._packs, self.gate)
        job_bytes = self.job.model_dump_json().encode()
        trail.event(
            "run.created",
            round=0,
            subject=("job", job_bytes),
            details={
                "fedinfra_version": __version__,
                "job_name": self.job.name,
                "scenario": self.job.scenario,
                "purpose": self.job.purpose,
                "job_sha256": sha256_hex(job_bytes),
                "tls": self.settings.tls,
                "transport": "in-process" if self.settings.in_process else ("tls" if self.settings.tls else "insecure"),
                "audit_retention_days": self.settings.audit_retention_days,
                "rounds": self.job.rounds,
                "sites": self.job.sites.count,
                "policy_packs": [{"name": p.name, "sha256": p.sha256} for p in self._packs],
                "privacy": self.job.privacy.model_dump(mode="json"),
                "secure_aggregation": self.job.secure_aggregation.model_dump(mode="json"),
            },
        )
        record_evaluation(trail, job_eval, gate="job", round=0)
        if job_eval.blocking:
            raise PolicyViolation(f"job refused by policy: {job_eval.reason()}")
        trail.checkpoint(0)
        return self._fresh_state()

    def _fresh_state(self) -> RunState:
        model, _ = job_model(self.job, self.task)
        return RunState(round=0, weights=get_weights(model))

    def run(self, grid: Grid, after: Callable[[Path, str], None] | None = None) -> RunState:
        """Admit, run every round, close, call ``after`` (the report); sites cosign the end."""
        from fedinfra.policy import load_packs

        t0 = time.monotonic()
        pin_mmap_threshold()  # a folded reply's pages go back to the OS (issue 17)
        self._packs = load_packs(self.job.policy_packs)
        trail = self.trail = self._open()
        try:
            state = self._start(trail)
            sites = self.admit(grid, trail, self._packs)
            for site in sites:
                # After a resume a site may hold a newer checkpoint than the saved state
                # knows of: consistency proofs must start from what the site really holds.
                book = state.books.setdefault(site.hello.site, SiteBook())
                if book.seen_size <= site.hello.checkpoint_size <= trail.log.size:
                    book.seen_size = site.hello.checkpoint_size
            self._checkpoint(state)
            _log.info("run %s: %d sites admitted, rounds %d to %d", self.run_id, len(sites), state.round + 1,
                      self.job.rounds, extra={"event": "run.started", "run_id": self.run_id, "admitted": len(sites),
                                              "first_round": state.round + 1, "rounds": self.job.rounds})
            self.reporter.run_started(self.run_id, self.job.rounds, len(sites))
            stop_reason = "completed"
            for rnd in range(state.round + 1, self.job.rounds + 1):
                try:
                    result = self.run_round(grid, rnd, sites, state)
                except _BudgetExhausted:
                    stop_reason = "budget-exhausted"
                    break
                # HE: a round's figures are known one wave later; show them then.
                shown = result if not self.sites_evaluate else self._result_of(state, rnd - 1)
                if shown is not None:
                    self.reporter.round_done(shown)
                self.artifacts.write_metrics(
                    self.run_id, state.results, [s.hello.site for s in sites], time.monotonic() - t0
                )
            self._close(grid, trail, sites, state, stop_reason, time.monotonic() - t0)
            _log.info("run %s completed after round %d (%s)", self.run_id, state.round, stop_reason,
                      extra={"event": "run.completed", "run_id": self.run_id, "round": state.round,
                             "stop_reason": stop_reason})
            cosign_close(self, grid, sites, state, after)
            return state
        except BaseException as exc:
            failed(trail, exc, stopped=self.artifacts.stop_requested())
            _log.error("run %s failed (%s); its reason is in the audit log", self.run_id, type(exc).__name__,
                       extra={"event": "run.failed", "run_id": self.run_id, "error": type(exc).__name__})
            raise
        finally:
            self.trail.log.close()

    def _close(
        self, grid: Grid, trail: AuditTrail, sites: list[Site], state: RunState, stop: str, seconds: float
    ) -> None:
        from fedinfra.coordinator.admission import job_facts
        from fedinfra.policy import Facts, evaluate
        from fedinfra.policy._facts import CloseFacts
        from fedinfra.privacy.release import privacy_summary

        if self.masked and self.sites_evaluate:
            tally = self._secure_close_eval(grid, sites, state)
        else:
            tally = self._federated_eval(grid, state.round, sites, state, phase="close")
        loss, acc = tally.result()
        if not self.sites_evaluate and state.results:
            loss, acc = state.results[-1].test_loss, state.results[-1].test_accuracy
        last = self._result_of(state, state.round) if self.sites_evaluate else None
        if last is not None:
            # The close wave evaluates the final aggregate: the last round's figures.
            self._record_evaluation(state, state.round, state.round, tally)
            shown = self._result_of(state, state.round)
            assert shown is not None
            self.reporter.round_done(shown)
        max_eps = max((b.epsilon_total for b in state.books.values()), default=0.0)
        close_eval = evaluate(
            self._packs,
            "close",
            Facts(
                job=job_facts(self.job, self.gate),
                close=CloseFacts(rounds_completed=state.round, epsilon_spent=max_eps, audit_verified=True),
            ),
        )
        record_evaluation(trail, close_eval, gate="close", round=state.round)
        if self.he:
            model_bytes = load_aggregate(self.state_dir, state.round) if state.round else b""
            self.artifacts.write_bytes("model.enc", model_bytes)
            artifact = ("model.ciphertext", model_bytes)
        else:
            self.artifacts.write_model(state.weights)
            artifact = ("model", self.artifacts.model_path.read_bytes())
        from fedinfra.task.metrics import HEADLINE

        final_metrics = _finite(tally.metrics(self.task.kind)) if self.sites_evaluate else self._metrics
        task_block = {
            "ref": self.job.task.ref if self.job.task is not None else "fedinfra.task.builtin:TabularTask",
            "kind": self.task.kind,
            "headline": HEADLINE[self.task.kind],
            "metrics": final_metrics,
        }
        trail.event(
            "run.completed",
            round=state.round,
            subject=artifact,
            details={
                "stop_reason": stop,
                "rounds": state.round,
                "final_accuracy": acc,
                "final_loss": loss,
                "epsilon_max": max_eps,
                "task": task_block,  # the report's model-quality section reads it from the signed log
            },
        )
        final = self._checkpoint(state)
        extra: dict[str, object] = {
            "task": task_block,
            "final_checkpoint": {"tree_size": final.size, "note": final.note},
            "stop_reason": stop,
            "privacy": privacy_summary(
                mechanism=self.job.privacy.mechanism,
                accountant=self.job.privacy.accountant,
                delta=self.job.privacy.delta,
                trust_sampling=self.job.privacy.trust_sampling,
                epsilon_per_site={k: b.epsilon_total for k, b in sorted(state.books.items())},
                spends=[dict(e.details) for e in trail.log.entries(run_id=self.run_id, type="budget.spent")],
                rounds=state.round,
                secure_aggregation=self.job.secure_aggregation.mode,
            ),
            "secure_aggregation": self.job.secure_aggregation.mode,
            "audit_store": str(self.settings.store),
        }
        names = [s.hello.site for s in sites]
        # Under HE the final figures come from the federated close evaluation, not round results.
        extra.update(final_accuracy=acc, final_loss=loss)
        self.artifacts.write_metrics(self.run_id, state.results, names, seconds, extra=extra)
        self.artifacts.write_sites({s.hello.site: s.hello.manifest for s in sites})


@contextlib.contextmanager
def _abandon_on_failure(rnd: int) -> Iterator[None]:
    """A secure-aggregation round that cannot complete is abandoned: nothing is released.

    The run ends with ``run.failed`` naming the reason (too few survivors for the threshold
    or for ``min_contributors``) and the round (:class:`RoundAbandoned`); the model is not
    updated and no aggregate leaves.
    """
    from fedinfra.crypto.secagg import SecAggAbandoned

    try:
        yield
    except SecAggAbandoned as exc:
        raise RoundAbandoned(rnd, str(exc)) from exc


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Metrics for JSON and the audit log: NaN (undefined, e.g. AUC of one class) as null."""
    return {k: None if math.isnan(v) else v for k, v in metrics.items()}


class _BudgetExhausted(Exception):
    """No admitted site can spend more: the run ends cleanly."""

    def __init__(self, rnd: int) -> None:
        super().__init__(f"round {rnd}: every site refused for budget")


__all__ = ["Coordinator", "CoordinatorSettings", "codes"]
