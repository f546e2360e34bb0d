"""A federation in one process: the real coordinator, real ClientApps, and malicious sites.

:class:`LocalGrid` is a Flower ``Grid`` that delivers each pushed message to its node's
handler in this process: the real fedinfra ``ClientApp`` (an honest site) or a
:class:`Malicious` site, which runs the real ClientApp and then corrupts its reply the way
a broken or hostile site would (issue 16). The coordinator is the real
:class:`~fedinfra.coordinator.server.Coordinator` with its real audit store.

A reply may be held back (``delay_s``) to play a slow-loris site: it becomes visible only
after the coordinator's deadline, like a reply that trickles in too late.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedinfra.config import JobSpec
from fedinfra.coordinator.persist import RunState
from fedinfra.coordinator.server import Coordinator, CoordinatorSettings

Handler = Callable[[Message, Context], Message | None]


@dataclass
class Node:
    """One node of the grid: its handler, its Flower context and how late it answers TRAIN messages."""

    handler: Handler
    context: Context
    delay_s: float = 0.0


@dataclass
class LocalGrid(Grid):
    """A Flower ``Grid`` whose nodes are handlers in this process (see module docstring)."""

    nodes: dict[int, Node]
    _replies: dict[str, tuple[float, Message]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        TaskIdentity.run_id = 1
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:  # pragma: no cover - not used by the coordinator
        raise NotImplementedError

    @property
    def run(self) -> Run:  # pragma: no cover - not used by the coordinator
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = str(uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            msg.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            msg.metadata.__dict__["_run_id"] = 1
            node = self.nodes[msg.metadata.dst_node_id]
            reply = node.handler(msg, node.context)
            if reply is not None:
                late = node.delay_s if msg.metadata.message_type == "train" else 0.0
                self._replies[mid] = (time.monotonic() + late, reply)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        now = time.monotonic()
        out = []
        wanted = set(message_ids)
        for mid in [m for m in self._replies if m in wanted]:  # in push order: sums are order-sensitive
            got = self._replies.get(mid)
            if got is not None and got[0] <= now:
                # The coordinator gets its own copy, as over any transport: it empties each train
                # reply once folded (coordinator.inbox.release), and a hostile site may keep and
                # replay the object it sent.
                out.append(copy.deepcopy(self._replies.pop(mid)[1]))
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return self.pull_messages(ids)


def adversarial_job(**changes: Any) -> JobSpec:
    """Four edge sites, two rounds, plaintext FedAvg, no DP, 2-s replies; ``changes`` override fields."""
    return JobSpec.model_validate(
        {
            "name": "adversarial",
            "scenario": "edge",
            "purpose": "on-device-model-improvement",
            "rounds": 2,
            "sites": {"count": 4, "min_sites": 2},
            "training": {"local_epochs": 1},
            "timeout_s": 2.0,
            **changes,
        }
    )


def honest(msg: Message, context: Context) -> Message | None:
    """The real fedinfra ClientApp."""
    from fedinfra.site.app import app

    return app(msg, context)


def silent(msg: Message, context: Context) -> Message | None:
    """A site that never answers (the "run without the bad site")."""
    return None


def doc_of(reply: Message) -> dict[str, Any]:
    """The JSON document of a reply."""
    return dict(json.loads(str(reply.content.config_records["config"]["doc"])))


def with_doc(reply: Message, doc: dict[str, Any] | str, **extra: Any) -> Message:
    """``reply`` with its JSON document replaced (and extra config values set)."""
    cfg = dict(reply.content.config_records["config"])
    cfg["doc"] = doc if isinstance(doc, str) else json.dumps(doc)
    cfg.update(extra)
    content = RecordDict({**dict(reply.content.array_records), "config": ConfigRecord(cfg)})
    out = Message(content, reply_to=_request_of(reply))
    return out


def payload_of(reply: Message, key: str) -> bytes:
    """The binary payload ``key`` of a reply, joined from its segments (:mod:`fedinfra.aggregation.blobs`)."""
    from fedinfra.aggregation import blobs

    data = blobs.take(reply.content.array_records, key, limit=2**31)
    assert data is not None, f"reply carries no {key}"
    return data


def with_payload(reply: Message, key: str, value: bytes | Any | None) -> Message:
    """``reply`` with payload ``key`` replaced: bytes are cut into segments as a site does; any
    other value becomes the record itself (a malformed one); ``None`` removes it."""
    from flwr.app import ArrayRecord

    from fedinfra.aggregation import blobs

    records: dict[str, Any] = {**dict(reply.content.array_records), **dict(reply.content.config_records)}
    name = blobs.record_name(key)
    records.pop(name, None)
    if isinstance(value, bytes | bytearray):
        blobs.put(records, key, value)
    elif isinstance(value, ArrayRecord):
        records[name] = value
    out = Message(RecordDict(records), reply_to=_request_of(reply))
    return out


def _request_of(reply: Message) -> Message:
    """A stand-in for the request ``reply`` answers (Flower needs it to build a reply)."""
    req = Message(RecordDict({}), dst_node_id=reply.metadata.src_node_id, message_type=reply.metadata.message_type)
    req.metadata.__dict__["_message_id"] = reply.metadata.reply_to_message_id
    req.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    req.metadata.__dict__["_run_id"] = reply.metadata.run_id
    return req


@dataclass
class Malicious:
    """A site that answers admission honestly, then corrupts its train replies with ``attack``."""

    attack: Callable[[Message, Message], Message | None]
    phases: tuple[str, ...] = ("train",)
    seen: list[Message] = field(default_factory=list)

    def __call__(self, msg: Message, context: Context) -> Message | None:
        reply = honest(msg, context)
        if reply is None or msg.metadata.message_type not in self.phases:
            return reply
        bad = self.attack(msg, reply)
        self.seen.append(reply)
        return bad


def federation(
    tmp: Path, job: JobSpec, handlers: list[Handler], *, delays: dict[int, float] | None = None
) -> LocalGrid:
    """A grid of ``len(handlers)`` sites; node ``i`` holds simulated partition ``i``."""
    n = len(handlers)
    nodes = {}
    for i, handler in enumerate(handlers):
        cfg: dict[str, bool | float | int | str] = {"partition-id": i, "num-partitions": n}
        ctx = Context(run_id=1, node_id=100 + i, node_config=cfg, state=RecordDict(), run_config={})
        nodes[100 + i] = Node(handler, ctx, (delays or {}).get(i, 0.0))
    return LocalGrid(nodes)


@dataclass
class Outcome:
    """What a run left: the coordinator's final state, or the error, and the audit entries."""

    state: RunState | None
    error: BaseException | None
    entries: list[Any]
    run_dir: Path


def run_job(
    tmp: Path,
    job: JobSpec,
    handlers: list[Handler],
    *,
    run_id: str = "run-1",
    delays: dict[int, float] | None = None,
    resume: bool = False,
    monkeypatch: Any,
) -> Outcome:
    """Provision a simulated consortium under ``tmp`` and run ``job`` over a :class:`LocalGrid`."""
    from fedinfra.audit import AuditLog
    from fedinfra.runtime.coordinator_kit import settings_from_kit
    from fedinfra.runtime.simulation import AUDIT_STORE, provision_simulation
    from fedinfra.site.home import HOME_ENV, KIT_ROOT_ENV

    run_dir = tmp / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    kits = run_dir / "kits"
    if not kits.exists():
        provision_simulation(job, run_id, run_dir)
    monkeypatch.setenv(HOME_ENV, str(run_dir / "site-homes"))
    monkeypatch.setenv(KIT_ROOT_ENV, str(kits / "sites"))
    store = str(run_dir / AUDIT_STORE)
    settings: CoordinatorSettings = settings_from_kit(
        kits / "coordinator", store=store, tls=False, in_process=True, he=job.secure_aggregation.encrypted
    )
    if resume:
        from dataclasses import replace

        settings = replace(settings, resume=True)
    settings = _fast(settings)
    grid = federation(tmp, job, handlers, delays=delays)
    state: RunState | None = None
    error: BaseException | None = None
    try:
        state = Coordinator(job, run_id=run_id, run_dir=run_dir, settings=settings).run(grid)
    except Exception as exc:
        error = exc
    log = AuditLog.open(store)
    try:
        entries = list(log.entries(run_id=run_id))
    finally:
        log.close()
    return Outcome(state, error, entries, run_dir)


def _fast(settings: CoordinatorSettings) -> CoordinatorSettings:
    from dataclasses import replace

    return replace(settings, node_wait_s=1.0)


def rejections(outcome: Outcome) -> list[tuple[str | None, dict[str, Any]]]:
    """(site, details) of every ``update.rejected`` entry."""
    return [(e.actor.id, dict(e.details)) for e in outcome.entries if e.type == "update.rejected"]
