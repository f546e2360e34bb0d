"""The audit log: a thin stateful shell joining the store, the Merkle tree and the signer.

One process writes a log (the coordinator); appends are transactions, so a crash leaves
either the whole batch or none of it, and a checkpoint is committed in the same transaction
as the ``checkpoint.published`` entry that announces it. Every checkpoint therefore covers
its own announcement, and a checkpoint dropped from the store is detected by the verifier
from the announcement left behind.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa
from pydantic import JsonValue

from fedinfra.audit import access
from fedinfra.audit.canonical import parse_canonical
from fedinfra.audit.checkpoint import Checkpoint, check_origin
from fedinfra.audit.cosign import Witness, parse_line
from fedinfra.audit.entry import Actor, Entry, Event, EventType, Outcome, Subject, format_ts
from fedinfra.audit.merkle import leaf_hash
from fedinfra.audit.note import Signer, Verifier
from fedinfra.audit.receipt import ConsistencyProof, Receipt
from fedinfra.audit.store import FORMAT, EntryRow, Store
from fedinfra.audit.tree import MerkleTree
from fedinfra.errors import ConfigError, StoreError, VerificationError

_MAX_RETRIES = 20
_log = logging.getLogger("fedinfra.audit")


class _Behind(Exception):
    """Another writer appended first; catch up and retry."""


LOG_ACTOR_ID = "audit-log"
"""Actor id of the entries the log writes about itself (``checkpoint.published``)."""


def _b64(items: list[bytes]) -> list[str]:
    return [base64.b64encode(x).decode() for x in items]


class AuditLog:
    """An append-only, signed, RFC 9162 Merkle log of audit events.

    Open it with :meth:`open`; use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        store: Store,
        *,
        origin: str,
        verifier: Verifier,
        signer: Signer | None,
        tree: MerkleTree,
        checkpoints: list[tuple[int, bytes, str, str]],
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self.origin = origin
        self.verifier = verifier
        self._signer = signer
        self._tree = tree
        self._checkpoint_sizes = [row[0] for row in checkpoints]
        self._clock = clock
        self._last_ts = ""
        self._head: Checkpoint | None = None
        #: The access log this writer seals into each checkpoint (None: none).
        self.access_log: Path | None = None

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        target: str | Path,
        *,
        origin: str | None = None,
        signer: Signer | None = None,
        clock: Callable[[], datetime] | None = None,
        readonly: bool = False,
        access_log: Path | None = None,
    ) -> AuditLog:
        """Open the log at ``target`` (SQLite path or ``postgresql+psycopg://`` URL).

        A writer with a ``signer`` seals the readers' access log into every checkpoint it
        signs (:mod:`fedinfra.audit.access`): ``access_log``, else the default one (beside
        a SQLite store, or ``FEDINFRA_ACCESS_LOG``).

        With ``readonly`` (readers: ``audit show``, ``prove``, ``export``) the store is opened
        so that nothing can be written (SQLite ``mode=ro``, PostgreSQL READ ONLY).

        A store that does not exist yet is created when ``signer`` is given; its key name
        must equal ``origin``, and the store records the origin and the verifier key so
        that ``fedinfra audit verify STORE`` needs nothing else. Without a signer the log
        can append (e.g. ``log.read``) but not publish checkpoints.

        Raises
        ------
        ConfigError
            If ``origin`` or ``signer`` do not match the store.
        StoreError
            If the store is missing (and cannot be created) or is not an audit store.
        VerificationError
            If the entries no longer match the store's last signed checkpoint.
        """
        if origin is not None:
            check_origin(origin)
        if signer is not None and origin is not None and signer.name != origin:
            raise ConfigError(f"signing key is named {signer.name!r} but the log origin is {origin!r}")
        if readonly and signer is not None:
            raise ConfigError("a log opened read-only cannot sign")
        store = Store.open(target, create=signer is not None, readonly=readonly)
        try:
            log = cls._load(store, origin=origin, signer=signer, clock=clock or (lambda: datetime.now(UTC)))
        except BaseException:
            store.close()
            raise
        if signer is not None:
            log.access_log = access_log or access.default_access_log(target)
        return log

    @classmethod
    def init_store(
        cls,
        target: str | Path,
        verifier: Verifier,
        *,
        writer: str | None = None,
        reader: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> str:
        """Create the store for the log signed by ``verifier``'s key (the owner's step); return its name.

        Records the origin (the key's name) and the public key; with ``writer``/``reader``
        grants PostgreSQL roles least privilege (:meth:`Store.init`). Running it again is
        harmless; a store of another log or key is refused.

        Raises
        ------
        ConfigError
            If the store already belongs to another log or key.
        StoreError
            If the database refuses.
        """
        check_origin(verifier.name)
        store = Store.init(target, writer=writer, reader=reader)
        try:
            meta = store.meta()
            if not meta:
                with store.engine.begin() as conn:
                    Store.insert_meta(
                        conn,
                        {
                            "format": FORMAT,
                            "origin": verifier.name,
                            "vkey": verifier.vkey,
                            "created_at": format_ts((clock or (lambda: datetime.now(UTC)))()),
                        },
                    )
            elif meta.get("vkey") != verifier.vkey:
                raise ConfigError(f"{store.display}: already the store of {meta.get('origin')!r} under another key")
        except sa.exc.SQLAlchemyError as exc:
            raise store.guard(exc) from exc
        finally:
            store.close()
        return store.display

    @classmethod
    def _load(
        cls, store: Store, *, origin: str | None, signer: Signer | None, clock: Callable[[], datetime]
    ) -> AuditLog:
        meta = store.meta()
        if not meta:
            if signer is None:
                raise StoreError(f"{store.display}: empty audit store; create it with a signer")
            try:
                with store.engine.begin() as conn:
                    Store.insert_meta(
                        conn,
                        {
                            "format": FORMAT,
                            "origin": signer.name,
                            "vkey": signer.vkey,
                            "created_at": format_ts(clock()),
                        },
                    )
            except sa.exc.SQLAlchemyError as exc:
                raise store.guard(exc) from exc
            meta = store.meta()
        if meta.get("format") != FORMAT:
            raise StoreError(f"{store.display}: unsupported audit store format {meta.get('format')!r}")
        if origin is not None and meta.get("origin") != origin:
            raise ConfigError(f"{store.display}: store belongs to log {meta.get('origin')!r}, not {origin!r}")
        try:
            verifier = Verifier.from_vkey(meta.get("vkey", ""))
        except ConfigError as exc:
            raise StoreError(f"{store.display}: store holds a malformed public key") from exc
        if signer is not None and signer.vkey != verifier.vkey:
            raise ConfigError(f"{store.display}: signing key does not match the store's public key")
        try:
            tree = MerkleTree(store.leaf_hashes())
        except StoreError as exc:
            problem = f"{store.display}: entries are not contiguous; run `fedinfra audit verify`"
            raise VerificationError(problem) from exc
        checkpoints = store.checkpoints()
        log = cls(
            store,
            origin=meta["origin"],
            verifier=verifier,
            signer=signer,
            tree=tree,
            checkpoints=checkpoints,
            clock=clock,
        )
        if checkpoints:
            size, _, note, _ = checkpoints[-1]
            try:
                head = Checkpoint.from_note(note, verifier)
            except VerificationError as exc:
                raise VerificationError(f"{store.display}: last checkpoint does not verify") from exc
            if size > tree.size:  # another writer appended since the leaves were read
                log._catch_up()
            if head.size != size or size > log._tree.size or log._tree.root(size) != head.root_hash:
                raise VerificationError(
                    f"{store.display}: entries do not match the last signed checkpoint; run `fedinfra audit verify`"
                )
            log._head = head
        if log._tree.size:
            last = store.entry_data(log._tree.size - 1)
            log._last_ts = max(log._last_ts, str(parse_canonical(last or b"")["ts"]))
        return log

    # -- properties ----------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of entries."""
        return self._tree.size

    @property
    def display(self) -> str:
        """The store's printable name."""
        return self._store.display

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest signed checkpoint, or ``None``."""
        return self._head

    def checkpoint(self, size: int) -> Checkpoint:
        """Return the signed checkpoint of tree size ``size``."""
        if self._head is not None and self._head.size == size:
            return self._head
        for tree_size, _, note, _ in self._store.checkpoints():
            if tree_size == size:
                return Checkpoint.from_note(note, self.verifier)
        raise ConfigError(f"no checkpoint of tree size {size} in {self.display}")

    def cosignatures(self, size: int) -> list[str]:
        """The stored cosignature lines of the checkpoint of tree size ``size``."""
        return [line for _, line in self._store.cosignatures(size)]

    def add_cosignature(self, size: int, line: str, witness: Witness, *, now: datetime | None = None) -> bool:
        """Verify a site's cosignature on the checkpoint of ``size`` and store it beside it.

        Returns ``False`` if this cosigner's line for that checkpoint is already stored.

        Raises
        ------
        VerificationError
            If the line is not ``witness``'s valid cosignature on that checkpoint.
        ConfigError
            If there is no checkpoint of that size.
        """
        checkpoint = self.checkpoint(size)
        witness.verify_line(checkpoint, line)
        if any(parse_line(stored)[0] == witness.name and parse_line(stored)[1][:4] == witness.key_hash
               for stored in self.cosignatures(size)):
            return False
        try:
            with self._store.engine.begin() as conn:
                Store.insert_cosignature(
                    conn,
                    size=size,
                    cosigner=witness.name,
                    key_id=witness.key_id,
                    line=line.rstrip("\n"),
                    received_at=format_ts(now if now is not None else self._clock()),
                )
        except sa.exc.SQLAlchemyError as exc:
            raise self._store.guard(exc) from exc
        return True

    # -- appending -----------------------------------------------------------------------
    def append(
        self,
        *,
        run_id: str | None,
        round: int | None,
        type: EventType,
        actor: Actor,
        outcome: Outcome,
        subject: Subject | None = None,
        details: dict[str, JsonValue] | None = None,
        now: datetime | None = None,
    ) -> Entry:
        """Append one event atomically and return its entry."""
        event = Event(
            run_id=run_id,
            round=round,
            type=type,
            actor=actor,
            outcome=outcome,
            subject=subject,
            details=details or {},
        )
        return self.append_many([event], now=now)[0]

    def append_many(
        self, events: Sequence[Event], *, now: datetime | None = None, publish: bool = False
    ) -> list[Entry]:
        """Append ``events`` in one transaction; with ``publish``, sign a checkpoint in it too.

        Returns the entries of ``events`` only (with ``publish``, the ``checkpoint.published``
        entry that follows them is in the log but not in the list).

        Timestamps never go backwards: an entry's time is the later of ``now`` (default:
        the clock) and the previous entry's time, so a clock step cannot reorder history.
        """
        batch = list(events)
        entries, _ = self._commit(batch, now=now, publish=publish)
        return entries[: len(batch)]

    def publish_checkpoint(
        self,
        *,
        run_id: str | None = None,
        round: int | None = None,
        now: datetime | None = None,
        model_sha256: str | None = None,
    ) -> Checkpoint:
        """Append ``checkpoint.published`` and sign a checkpoint covering it, atomically.

        ``model_sha256`` (the digest of the global model, or HE aggregate, the run's next
        instructions name) goes into the announcement - the checkpoint's own last leaf - so
        every site that cosigns the checkpoint can check it against what it was sent (issue 16).
        """
        _, checkpoint = self._commit([], now=now, publish=True, run_id=run_id, round_=round, model_sha256=model_sha256)
        assert checkpoint is not None
        return checkpoint

    def _announcement(self, size: int, run_id: str | None, round_: int | None, model_sha256: str | None) -> Event:
        assert self._signer is not None
        details: dict[str, JsonValue] = {"tree_size": size}
        if model_sha256 is not None:
            details["model_sha256"] = model_sha256
        return Event(
            run_id=run_id,
            round=round_,
            type="checkpoint.published",
            actor=Actor(kind="system", id=LOG_ACTOR_ID, key_id=self._signer.key_id),
            outcome="success",
            details=details,
        )

    def _commit(
        self,
        events: list[Event],
        *,
        now: datetime | None,
        publish: bool,
        run_id: str | None = None,
        round_: int | None = None,
        model_sha256: str | None = None,
    ) -> tuple[list[Entry], Checkpoint | None]:
        """Append ``events`` (and with ``publish`` a signed checkpoint) in one transaction.

        One consortium log may have several writers (runs of one coordinator in parallel):
        if another appended first, the database refuses the duplicate seq; this writer then
        loads what was appended, renumbers its batch after it and tries again.
        """
        if publish and self._signer is None:
            raise ConfigError(f"{self.display}: publishing a checkpoint needs the log's signing key")
        for _ in range(_MAX_RETRIES):
            try:
                return self._try_commit(
                    events, now=now, publish=publish, run_id=run_id, round_=round_, model_sha256=model_sha256
                )
            except _Behind:
                self._catch_up()
        raise StoreError(f"{self.display}: too many concurrent writers; retry")

    def _catch_up(self) -> None:
        """Load entries and checkpoints another writer appended (the tree must still match)."""
        for _ in range(_MAX_RETRIES):
            self._load_leaves()
            rows = self._store.checkpoints()
            if not rows:
                return
            head = Checkpoint.from_note(rows[-1][2], self.verifier)
            if head.size > self._tree.size:  # it published after our read of the leaves: read on
                continue
            if self._tree.root(head.size) != head.root_hash:
                raise VerificationError(f"{self.display}: entries do not match the last signed checkpoint")
            self._head = head
            self._checkpoint_sizes = [row[0] for row in rows]
            return
        raise StoreError(f"{self.display}: too many concurrent writers; retry")

    def _load_leaves(self) -> None:
        start = self._tree.size
        try:
            for leaf in self._store.leaf_hashes(start):
                self._tree.append(leaf)
        except StoreError as exc:
            self._tree.truncate(start)
            raise VerificationError(f"{self.display}: entries are not contiguous; run `fedinfra audit verify`") from exc
        if self._tree.size:
            last = parse_canonical(self._store.entry_data(self._tree.size - 1) or b"")
            self._last_ts = max(self._last_ts, str(last["ts"]))

    def _seal_reads(self) -> list[Event]:
        """``log.read`` entries sealing the access records made since the last seal (see :mod:`.access`)."""
        path = self.access_log
        if path is None or not path.exists():
            return []
        state = access.seal_state(self._store.latest_of_types(("log.read",)))
        try:
            return access.fold_events(path, state)
        except StoreError as exc:  # a reader's file this writer may not read must not stop the run
            _log.warning("reads not sealed into %s: %s", self.display, exc)
            return []

    def _try_commit(
        self,
        events: list[Event],
        *,
        now: datetime | None,
        publish: bool,
        run_id: str | None,
        round_: int | None,
        model_sha256: str | None = None,
    ) -> tuple[list[Entry], Checkpoint | None]:
        if publish:
            last = events[-1] if events else None
            events = [*events, *self._seal_reads()]
            events = [
                *events,
                self._announcement(
                    self.size + len(events) + 1,
                    run_id if run_id is not None else (last.run_id if last else None),
                    round_ if round_ is not None else (last.round if last else None),
                    model_sha256,
                ),
            ]
        ts_text = format_ts(now if now is not None else self._clock())
        ts_text = max(ts_text, self._last_ts)
        ts = datetime.strptime(ts_text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        start = self.size
        entries = [Entry.from_event(ev, seq=start + i, ts=ts) for i, ev in enumerate(events)]
        rows: list[EntryRow] = []
        for entry in entries:
            data = entry.canonical(ts_text=ts_text)
            leaf = leaf_hash(data)
            rows.append((entry.seq, ts_text, entry.run_id, entry.round, entry.type, leaf, data))
            self._tree.append(leaf)
        checkpoint = None
        try:
            if publish:
                assert self._signer is not None
                checkpoint = Checkpoint.sign(self._signer, self._tree.size, self._tree.root())
            with self._store.engine.begin() as conn:
                if self._store.size(conn) != start:
                    raise _Behind
                self._store.insert_entries(conn, rows)
                if checkpoint is not None:
                    Store.insert_checkpoint(
                        conn,
                        size=checkpoint.size,
                        root=checkpoint.root_hash,
                        note=checkpoint.note,
                        published_at=ts_text,
                    )
        except sa.exc.IntegrityError as exc:  # another writer took this seq between our check and insert
            self._tree.truncate(start)
            raise _Behind from exc
        except sa.exc.SQLAlchemyError as exc:
            self._tree.truncate(start)
            raise self._store.guard(exc) from exc
        except BaseException:
            self._tree.truncate(start)
            raise
        if entries:
            self._last_ts = ts_text
        if checkpoint is not None:
            self._checkpoint_sizes.append(checkpoint.size)
            self._head = checkpoint
        return entries, checkpoint

    # -- reading and proving -------------------------------------------------------------
    def entry(self, seq: int) -> Entry:
        """Return entry ``seq``."""
        data = self._store.entry_data(seq)
        if data is None:
            raise ConfigError(f"no entry {seq} in {self.display} (size {self.size})")
        return Entry.model_validate(parse_canonical(data))

    def entries(self, *, run_id: str | None = None, type: str | None = None, limit: int | None = None) -> list[Entry]:
        """Return the entries matching the filters, in order."""
        rows = self._store.select_entries(run_id=run_id, type_=type, limit=limit)
        return [Entry.model_validate(parse_canonical(data)) for data in rows]

    def inclusion_proof(self, seq: int, tree_size: int) -> list[bytes]:
        """Return the RFC 9162 inclusion proof of entry ``seq`` in the tree of ``tree_size``."""
        if not 0 <= seq < tree_size <= self.size:
            raise ConfigError(f"no inclusion proof of entry {seq} in a tree of size {tree_size} (log size {self.size})")
        return self._tree.inclusion_proof(seq, tree_size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Return the RFC 9162 consistency proof from ``old_size`` to ``new_size``."""
        if not 0 <= old_size <= new_size <= self.size:
            raise ConfigError(f"no consistency proof from size {old_size} to {new_size} (log size {self.size})")
        return self._tree.consistency_proof(old_size, new_size)

    def receipt(self, seq: int, *, since: int | None = None) -> Receipt:
        """Return a receipt for entry ``seq`` against the newest checkpoint.

        With ``since`` (the tree size of the checkpoint the holder already has), the
        receipt also carries the consistency proof from that size.
        """
        head = self.latest_checkpoint
        if head is None or seq >= head.size or seq < 0:
            raise ConfigError(f"entry {seq} is not covered by a signed checkpoint yet; publish one first")
        consistency = None
        if since is not None and since != head.size:
            consistency = ConsistencyProof(
                old_size=since, new_size=head.size, hashes=_b64(self.consistency_proof(since, head.size))
            )
        return Receipt(
            entry=self.entry(seq),
            tree_size=head.size,
            inclusion=_b64(self.inclusion_proof(seq, head.size)),
            checkpoint=head.note,
            consistency=consistency,
        )

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the store's connections."""
        self._store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
