"""A wave's replies reach the round loop one at a time: never all held at once (issue 17).

The grid replaces only the transport; the coordinator's own ``_send`` (what every wave,
the train wave included, iterates) is under test. On the old code ``_send`` pulled every
pending id in one ``pull_messages`` call and returned the list, so all ten replies of a
wave were alive before the first was folded: the first two tests fail there (one pull
returned ten replies; ten were alive at once).
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedinfra.audit import Signer
from fedinfra.config import JobSpec
from fedinfra.coordinator.inbox import receive
from fedinfra.coordinator.server import Coordinator, CoordinatorSettings

pytestmark = pytest.mark.usefixtures("flower_run")

SITES = 10


class _Link:
    """Holds each site's reply (a real Flower reply with a 1 MB tensor) until it is pulled."""

    def __init__(self, ready_after: dict[int, float] | None = None) -> None:
        self.replies: dict[str, tuple[float, Message]] = {}
        self.pulls: list[int] = []  # replies returned by each pull_messages call
        self.handed: list[weakref.ref[Message]] = []
        self.ready_after = ready_after or {}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        now = time.monotonic()
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_src_node_id"] = 0
            node = msg.metadata.dst_node_id
            update = ArrayRecord({"w": Array(np.full(250_000, node, dtype=np.float32))})
            reply = Message(RecordDict({"arrays": update}), reply_to=msg)
            self.replies[msg.metadata.message_id] = (now + self.ready_after.get(node, 0.0), reply)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        now = time.monotonic()
        out = [self.replies.pop(i)[1] for i in list(message_ids) if i in self.replies and self.replies[i][0] <= now]
        self.handed += [weakref.ref(m) for m in out]
        self.pulls.append(len(out))
        return out

    def alive(self) -> int:
        """Replies handed out that something still references."""
        gc.collect()
        return sum(ref() is not None for ref in self.handed)


def _messages() -> list[Message]:
    return [
        Message(RecordDict({"config": ConfigRecord({"doc": "{}"})}), dst_node_id=n, message_type=MessageType.TRAIN)
        for n in range(1, SITES + 1)
    ]


@pytest.fixture
def coordinator(tmp_path: Path) -> Coordinator:
    job = JobSpec.model_validate({"rounds": 1, "sites": {"count": 3, "min_sites": 2}, "timeout_s": 5})
    signer = Signer.generate("fedinfra.test/coordinator")
    settings = CoordinatorSettings(store=str(tmp_path / "audit.db"), signer=signer, in_process=True, node_wait_s=1)
    return Coordinator(job, run_id="run-1", run_dir=tmp_path / "run", settings=settings)


def test_each_pull_of_a_wave_brings_at_most_one_reply(coordinator: Coordinator) -> None:
    link = _Link()

    got = [int(r.content.array_records["arrays"]["w"].numpy()[0]) for r in coordinator._send(link, _messages())]  # type: ignore[arg-type]

    assert sorted(got) == list(range(1, SITES + 1))
    assert max(link.pulls) == 1


def test_a_folded_reply_is_released_before_the_next_is_pulled(coordinator: Coordinator) -> None:
    """The round loop's pattern (fold, drop, take the next) holds one reply at a time.

    Counted while each reply is folded: the old code held the whole wave (ten) there.
    """
    link = _Link()
    total, alive = 0.0, []

    for reply in coordinator._send(link, _messages()):  # type: ignore[arg-type]
        total += float(reply.content.array_records["arrays"]["w"].numpy()[0])
        alive.append(link.alive())

    assert total == sum(range(1, SITES + 1))
    assert max(alive) == 1


def test_a_reply_that_lands_late_is_still_taken_before_the_timeout() -> None:
    link = _Link(ready_after={3: 0.3})
    ids = link.push_messages(_messages())

    got = [r.metadata.reply_to_message_id for r in receive(link, ids, timeout_s=5.0, interval_s=0.01)]

    assert sorted(got) == sorted(ids)


def test_a_reply_that_never_lands_ends_the_wave_at_the_timeout_without_the_others_lost() -> None:
    link = _Link(ready_after={5: 60.0})
    ids = list(link.push_messages(_messages()))
    start = time.monotonic()

    got = list(receive(link, ids, timeout_s=0.3, interval_s=0.01))

    assert len(got) == SITES - 1
    assert time.monotonic() - start < 5.0


def test_replies_landed_by_the_deadline_are_taken_even_if_folding_the_first_outlasts_it() -> None:
    """Folding a big update may take longer than the wave's timeout: landed replies still count."""
    link = _Link()
    ids = link.push_messages(_messages())
    got = 0

    for _reply in receive(link, ids, timeout_s=0.05, interval_s=0.01):
        got += 1
        if got == 1:
            time.sleep(0.1)  # the first fold outlasts the deadline

    assert got == SITES


def test_the_reply_the_loop_variable_still_names_is_emptied_before_the_next_pull() -> None:
    """``for reply in receive(...)`` keeps ``reply`` bound while the next one is pulled.

    On the old code that reply kept its whole payload through the next pull and inflation
    (a third big reply at the peak, ``bench/big_model.py``): the payload still referenced
    at each pull was one reply's 1 MB. Now a reply is emptied when the next is asked for.
    """
    from fedinfra.coordinator.inbox import payload_bytes

    link = _Link()
    ids = link.push_messages(_messages())
    held_at_pull: list[int] = []
    pull = link.pull_messages

    def pull_and_count(message_ids: Iterable[str]) -> Iterable[Message]:
        held_at_pull.append(sum(payload_bytes(m) for ref in link.handed if (m := ref()) is not None))
        return pull(message_ids)

    link.pull_messages = pull_and_count  # type: ignore[method-assign]
    total = 0.0
    for reply in receive(link, ids, timeout_s=5.0, interval_s=0.01, collect=True):
        total += float(reply.content.array_records["arrays"]["w"].numpy()[0])

    assert total == sum(range(1, SITES + 1))
    assert held_at_pull == [0] * SITES
    assert payload_bytes(reply) == 0  # the last one too, once the wave is over


def test_a_record_kept_from_a_reply_is_emptied_too_and_waves_without_collect_are_untouched() -> None:
    link = _Link()
    kept = []
    for reply in receive(link, link.push_messages(_messages()[:2]), timeout_s=5.0, interval_s=0.01, collect=True):
        kept.append(reply.content.array_records["arrays"])
    plain = list(receive(link, link.push_messages(_messages()[:2]), timeout_s=5.0, interval_s=0.01))

    assert [len(record) for record in kept] == [0, 0]
    assert [m.content.array_records["arrays"]["w"].shape for m in plain] == [(250_000,), (250_000,)]
