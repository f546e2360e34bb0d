"""Replies reach the round loop one at a time, as they land (issue 17: big models).

Flower's ``Grid.pull_messages(ids)`` (and ``send_and_receive``, built on it) downloads and
inflates *every* reply that has landed before it returns, and the coordinator used to
collect a wave's replies into one list before folding the first. The aggregators already
fold each reply into a running sum (:mod:`fedinfra.aggregation.rounds`), so holding all of
them was pure waste: for a 10M-parameter model, ten packed-BFV replies are ~406 MB at once
where one is ~41 MB (``bench/big_model.py``).

:func:`receive` pulls each pending reply on its own and hands it over before it pulls the
next, so the coordinator holds at most two replies (the one its caller is folding, the one
being pulled) whatever the number of sites. The cost is one small request per pending
reply per poll, on the loopback runtime API.

Dropping the last reference is not enough to free a reply: Flower's ``RecordDict`` and its
typed views point at each other (``flwr/app/message/recorddict.py``, ``_SyncedDict.recorddict``),
so a reply's records are reference-cycle garbage that only the cyclic collector frees, when
its allocation thresholds say so. Measured with 1.2M-parameter plaintext replies, the
coordinator's RSS grew by one reply per reply of the wave. With ``collect=True`` (the train
wave) a full collection runs before the next pull once a reply of at least
:data:`COLLECT_BYTES` was handed over, which frees it. A full collection costs 50-250 ms
here (2 busy cores), against seconds for folding such a reply; smaller replies are left to
the collector's own thresholds (ten of them pile up to 160 MiB at most).

Nor is it the caller's to drop: a ``for reply in receive(...)`` loop keeps its variable
bound to the reply it folded while the generator pulls the next one, so that reply (and the
coordinator's loop has several ``continue`` paths) stayed resident through the next pull and
inflation: three replies at the peak, not two (``bench/big_model.py``, 10M parameters: a
40 MB reply). With ``collect=True`` a reply handed over is therefore *emptied* when the
next one is asked for (:func:`release`): its records are cleared in place, so their tensors
and binary values are freed by reference counting whoever still holds the message or one
of its records. Callers must take what they keep from a reply before asking for the next;
the round loop copies its report and folds the update before that.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from flwr.app import Message

#: Payload size of a reply from which ``collect=True`` frees it before the next pull (16 MiB).
COLLECT_BYTES = 16 * 1024 * 1024

#: Allocations from this size up are mmapped on their own and unmapped when freed (:func:`pin_mmap_threshold`).
MMAP_THRESHOLD = 1024 * 1024
#: glibc's ``mallopt`` parameter number for the mmap threshold (``<malloc.h>``).
_M_MMAP_THRESHOLD = -3

#: How often the coordinator asks the SuperLink for replies (one cheap loopback request each).
PULL_INTERVAL_S = 0.2


class Puller(Protocol):
    """The part of ``flwr.serverapp.Grid`` :func:`receive` uses."""

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return the replies to ``message_ids`` that have landed (Flower's ``Grid``)."""
        ...


def receive(
    grid: Puller,
    message_ids: Iterable[str | None],
    *,
    timeout_s: float,
    interval_s: float = PULL_INTERVAL_S,
    collect: bool = False,
) -> Iterator[Message]:
    """Yield the replies to ``message_ids`` one at a time until all are in or ``timeout_s`` has passed.

    The clock starts now (call it right after pushing). Replies are pulled in the order of
    ``message_ids`` among those that have landed, one request each. When the time is up,
    the replies that have already landed are still taken in one last sweep without waiting
    (folding the earlier ones may have taken that long); any later reply is ignored, as
    with ``Grid.send_and_receive``. Ids that are ``None`` (Flower could not push that
    message) are skipped. ``collect``: empty each reply (:func:`release`) and free it before
    the next one is pulled, so a reply is valid only until the next is asked for (module
    docstring).
    """
    pending = [mid for mid in dict.fromkeys(message_ids) if mid]
    return _replies(grid, pending, time.monotonic() + timeout_s, interval_s, collect)


def _replies(
    grid: Puller, pending: list[str], deadline: float, interval_s: float, collect: bool
) -> Iterator[Message]:
    handed_big = False  # a reply of COLLECT_BYTES or more was handed over in this wave
    try:
        big = False  # a reply of COLLECT_BYTES or more was handed over since the last collection
        while pending:
            last_sweep = time.monotonic() >= deadline
            landed = False
            for mid in list(pending):
                if big:
                    gc.collect()
                    big = False
                got = list(grid.pull_messages([mid]))
                while got:
                    reply = got.pop(0)
                    answered = reply.metadata.reply_to_message_id
                    if answered in pending:
                        pending.remove(answered)
                    landed = True
                    big = collect and payload_bytes(reply) >= COLLECT_BYTES
                    handed_big = handed_big or big
                    yield reply
                    if collect:
                        release(reply)  # the caller's loop variable still points at it (module docstring)
                    del reply  # keep no reference while the next one is pulled
            if last_sweep:
                return
            if not landed:
                time.sleep(interval_s)
    finally:
        if handed_big:
            gc.collect()
            trim_heap()


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve every allocation of ``threshold`` bytes or more by its own ``mmap`` (glibc; elsewhere nothing).

    glibc's default threshold is dynamic: freeing an mmapped block raises it to that block's
    size, up to 32 MiB (``mallopt(3)``, M_MMAP_THRESHOLD), after which a reply's segments
    (:mod:`fedinfra.aggregation.blobs`, 4 MiB) and its joined payload come from the heap, whose
    freed middle never returns to the OS: 52 MB of a BFV coordinator's resident set between
    replies at a 10M-parameter model (``bench/big_model.py``). Setting the parameter
    explicitly disables that adjustment, so the pages of a folded reply go back to the OS
    when it is released. Returns whether the allocator took the setting.
    """
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def trim_heap() -> None:
    """Hand the allocator's free memory back to the OS (glibc ``malloc_trim(0)``; elsewhere nothing).

    Pulling a reply costs about three times its payload for a moment (Flower's object
    contents, the body sliced out of them, the parsed values: 121 MB traced for a 40 MB
    packed-BFV reply). glibc raises its mmap threshold to the size of the largest block it
    has freed (``mallopt(3)``, M_MMAP_THRESHOLD), so those blocks come from the heap and their
    pages stay resident after the wave: ~90 MB of a secagg coordinator's RSS at a 10M-parameter
    model, under the 80 MB the unmasking then allocates. Trimming once the wave is over
    returns them (``bench/big_model.py``).
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc() -> Any:
    """glibc, if this process runs on it (``malloc_trim`` is a glibc extension)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def release(message: Message) -> None:
    """Empty ``message``'s records in place: its tensors and values are freed whoever holds it.

    Every record is cleared before the record dict itself, so a record the caller kept
    (``reply.content.config_records["config"]``) is emptied too rather than left holding a
    40 MB value. Records are plain Python containers; nothing another object shares is
    mutated (a numpy view of a tensor keeps that tensor's own bytes alive).
    """
    content = message.content
    for record in list(content.values()):
        record.clear()
    content.clear()


def payload_bytes(message: Message) -> int:
    """Bytes of a message's tensors and binary config values (what a big update weighs)."""
    content = message.content
    total = sum(len(array.data) for record in content.array_records.values() for array in record.values())
    for config in content.config_records.values():
        total += sum(len(v) for v in config.values() if isinstance(v, bytes))
    return total


__all__ = [
    "COLLECT_BYTES",
    "MMAP_THRESHOLD",
    "PULL_INTERVAL_S",
    "Puller",
    "payload_bytes",
    "pin_mmap_threshold",
    "receive",
    "release",
    "trim_heap",
]
