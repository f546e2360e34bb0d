"""Replaying a whole log: every entry, every leaf, every checkpoint.

:func:`verify_store` reads every entry once and checks, in order, that

* each entry is canonical RFC 8785 JSON whose ``seq`` is its position (no gap, no swap),
  whose event type is known and whose time does not go backwards;
* each stored leaf hash is ``SHA-256(0x00 || entry)`` (RFC 9162 §2.1.1);
* each checkpoint is signed by the log's key (C2SP signed-note), names the log's origin,
  and its root equals the root recomputed from the entries before it, which also proves
  every checkpoint consistent with the next (both are prefixes of one replayed tree);
* each ``checkpoint.published`` entry is followed by the checkpoint it announces, so a
  dropped checkpoint is found, and no checkpoint reaches past the last entry (truncation).

The per-entry checks run in :mod:`fedinfra.audit.scan`, on several processes for a large
store (each scans a seq range and returns 32 bytes per entry); the Merkle roots are then
recomputed in order through a :class:`CompactRange`. The first failure in log order stops
the replay and is reported with its position, whatever the number of processes. Without a pinned
key the store's own key is used: that proves the log is intact under *its* key, but a
wholesale fork re-signed with another key is only caught when the key is pinned.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from fedinfra.audit.access import SEAL_ACTOR_ID as LOG_ACTOR_ID
from fedinfra.audit.checkpoint import Checkpoint
from fedinfra.audit.cosign import Witness, parse_line
from fedinfra.audit.merkle import HASH_SIZE
from fedinfra.audit.note import Verifier
from fedinfra.audit.scan import Chunk, Failure, scan_entries, scan_store_range
from fedinfra.audit.sources import LogSource, StoredCheckpoint, StoreSource, open_source
from fedinfra.audit.store import FORMAT
from fedinfra.audit.tree import CompactRange
from fedinfra.errors import ConfigError, VerificationError

PARALLEL_MIN_ENTRIES = 100_000
"""Below this many entries one process verifies faster than starting workers."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of replaying a log; ``ok`` only if every check held."""

    ok: bool
    target: str
    origin: str | None
    key: str | None
    key_pinned: bool
    entries: int
    checkpoints: int
    head_size: int
    head_root: str | None
    unsigned_tail: int
    position: str | None = None
    problem: str | None = None
    quorum: int | None = None
    head_cosigners: tuple[str, ...] = ()
    unwitnessed_reports: int = 0
    #: Tree size of the newest checkpoint a quorum cosigned (with witnesses), and when its
    #: newest cosignature was made (UTC): how recent the history the sites vouch for is.
    witnessed_size: int | None = None
    witnessed_at: str | None = None
    #: Runs whose ``run.created`` is in the log but neither ``run.completed`` nor ``run.failed``:
    #: still running - or the log was cut back to an earlier checkpoint (compare with a site's).
    open_runs: tuple[str, ...] = ()
    #: Checkpoints held outside the store that were compared (a site's receipts, metrics.json).
    held: int = 0
    #: The access log checked against the reads sealed in the signed log, and what was found.
    access_log: str | None = None
    access_records: int = 0
    sealed_reads: int = 0

    def to_dict(self) -> dict[str, object]:
        """Return the result as a JSON-ready dict."""
        return asdict(self)

    def raise_for_problem(self) -> None:
        """Raise :class:`VerificationError` naming the first problem, if any."""
        if not self.ok:
            raise VerificationError(f"{self.target}: {self.position}: {self.problem}")


def load_held_checkpoint(path: Path) -> str:
    """Read a checkpoint held outside the store.

    Accepted: a signed note; a receipt or any JSON with a ``checkpoint`` note; a run's
    ``metrics.json`` (its ``final_checkpoint.note``).

    Raises
    ------
    ConfigError
        If the file cannot be read or holds none of these forms.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read checkpoint file") from exc
    if not text.lstrip().startswith("{"):
        return text
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON; give a signed note, a receipt or metrics.json") from exc
    note = doc.get("checkpoint") if isinstance(doc, dict) else None
    final = doc.get("final_checkpoint") if isinstance(doc, dict) else None
    if note is None and isinstance(final, dict):
        note = final.get("note")
    if not isinstance(note, str):
        raise ConfigError(f"{path}: JSON holds no 'checkpoint' or 'final_checkpoint.note'; give a note or receipt")
    return note


def load_public_key(path: Path, *, origin: str | None = None) -> Verifier:
    """Read a pinned public key: a C2SP verifier key text, a kit's ``kit.toml``, or a PEM key named ``origin``.

    Raises
    ------
    ConfigError
        If the file is missing or holds no Ed25519 public key.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read public key ({exc.strerror})") from exc
    if path.suffix == ".toml":  # a kit's kit.toml: its [audit] vkey
        import tomllib

        try:
            vkey = tomllib.loads(data.decode("utf-8")).get("audit", {}).get("vkey")
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable kit.toml") from exc
        if not isinstance(vkey, str):
            raise ConfigError(f"{path}: kit.toml has no [audit] vkey")
        return Verifier.from_vkey(vkey)
    if data.lstrip().startswith(b"-----BEGIN"):
        if origin is None:
            raise ConfigError(f"{path}: a PEM public key needs the log origin as its key name")
        return Verifier.from_public_pem(origin, data)
    try:
        return Verifier.from_vkey(data.decode("utf-8"))
    except (UnicodeDecodeError, ConfigError) as exc:
        raise ConfigError(f"{path}: not a verifier key (name+hash+base64) or PEM public key") from exc


def verify_store(
    target: str | Path,
    *,
    public_key: Verifier | str | Path | None = None,
    held_checkpoints: Sequence[str] = (),
    workers: int | None = None,
    witnesses: Sequence[Witness] = (),
    quorum: int | None = None,
    access_log: Path | None = None,
) -> VerifyResult:
    """Replay the log at ``target`` (store path, PostgreSQL URL or export directory).

    ``public_key`` pins the key checkpoints must be signed with (a :class:`Verifier`, a
    verifier key text or a key file); by default the key recorded in the store is used.
    ``held_checkpoints`` are signed checkpoint notes kept outside the store (a site's last
    receipt, the run's ``metrics.json``): the log must contain each of their trees, which
    also catches a tail cut off together with its checkpoints (RFC 9162 §8.1.4 gossip).

    ``witnesses`` are the sites' cosigner keys (C2SP tlog-cosignature): every stored
    cosignature by one of them must verify on its checkpoint, and the newest checkpoint
    needs cosignatures by ``quorum`` of them (default: all); after the newest checkpoint so
    cosigned only readers' records may follow (reads sealed from the access log, report
    regenerations), signed by the coordinator alone - so a tail rewritten and re-signed by
    the coordinator, or cut back to an uncosigned checkpoint, fails even though the
    coordinator's own signatures verify.

    What the store and keys alone cannot show: a log cut back to an *earlier* checkpoint
    that a quorum did cosign, with everything after it removed, is a consistent, witnessed
    log - only a newer checkpoint held by someone else proves it was longer. Pass the
    sites' receipts directories as ``held_checkpoints`` (or run ``audit gossip``): a held
    checkpoint beyond the log's end fails as "tail truncated". ``open_runs`` (runs started
    but never closed) and ``witnessed_at`` (when the sites last vouched) are reported as
    hints; neither is proof on its own (a run may still be going; a cut between two runs
    leaves none open).

    ``access_log`` is checked against the reads sealed in the log
    (:func:`fedinfra.audit.access.check_sealed`): a sealed read record removed or edited fails.

    Raises
    ------
    StoreError
        If ``target`` is missing or not an audit store (bad input, not a failed check).
    ConfigError
        If the pinned public key cannot be read.
    """
    from concurrent.futures.process import BrokenProcessPool

    count = _workers(workers)
    if witnesses and quorum is not None and not 1 <= quorum <= len(witnesses):
        raise ConfigError(f"quorum {quorum} must be between 1 and the {len(witnesses)} witness keys given")
    need = (quorum or len(witnesses)) if witnesses else None
    source = open_source(target)
    try:
        try:
            result = _verify(source, public_key, held_checkpoints, count, witnesses, need)
        except BrokenProcessPool:  # workers could not start (e.g. no importable __main__): one process
            result = _verify(source, public_key, held_checkpoints, 1, witnesses, need)
        if result.ok and access_log is not None:
            result = _check_access(source, result, access_log)
        return result
    finally:
        source.close()


def _check_access(source: LogSource, result: VerifyResult, path: Path) -> VerifyResult:
    from dataclasses import replace

    from fedinfra.audit.access import check_sealed

    check = check_sealed(path, source.of_types(("log.read",), below=result.entries))
    done = replace(result, access_log=check.path, access_records=check.records, sealed_reads=check.sealed)
    if check.problem is None:
        return done
    return replace(done, ok=False, position=f"access log {check.path}", problem=check.problem)


def _workers(requested: int | None) -> int:
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"workers must be >= 1, got {requested}")
        return requested
    return max(1, min(os.cpu_count() or 1, 8))


def _verify(
    source: LogSource,
    public_key: Verifier | str | Path | None,
    held_checkpoints: Sequence[str],
    workers: int,
    witnesses: Sequence[Witness],
    quorum: int | None,
) -> VerifyResult:
    meta = source.meta()
    origin = meta.get("origin")
    partial: dict[str, object] = {
        "target": source.display,
        "origin": origin,
        "key": meta.get("vkey"),
        "key_pinned": public_key is not None,
        "quorum": quorum,
    }
    progress: dict[str, object] = {
        "entries": 0,
        "checkpoints": 0,
        "head_size": 0,
        "head_root": None,
        "unsigned_tail": 0,
    }
    try:
        verifier = _key(meta, public_key)
        checkpoints = _checkpoints(source.checkpoints(), verifier)
        held = _held(held_checkpoints, verifier)
        progress["held"] = len(held_checkpoints)
        _replay(_chunks(source, workers), checkpoints, held, progress)
        cosigned = _cosignatures(source.cosignatures(), checkpoints, witnesses)
        if checkpoints:
            progress["head_cosigners"] = tuple(sorted(cosigned.get(checkpoints[-1].size, set())))
        progress["open_runs"] = _open_runs(source, int(str(progress["entries"])))
        if quorum is not None:
            witnessed = _witnessed(checkpoints, cosigned, quorum)
            progress["head_cosigners"] = tuple(sorted(cosigned[witnessed.size]))
            progress["witnessed_size"] = witnessed.size
            progress["witnessed_at"] = _latest_time(source, witnessed, witnesses)
            progress["unwitnessed_reports"] = _reader_tail(source, witnessed.size)
    except Failure as failure:
        return VerifyResult(ok=False, **partial, **progress, position=failure.position, problem=failure.problem)  # type: ignore[arg-type]
    return VerifyResult(ok=True, **partial, **progress)  # type: ignore[arg-type]


def _key(meta: dict[str, str], public_key: Verifier | str | Path | None) -> Verifier:
    if meta.get("format") != FORMAT:
        raise Failure("metadata", f"unsupported store format {meta.get('format')!r}")
    try:
        stored = Verifier.from_vkey(meta.get("vkey", ""))
    except ConfigError as exc:
        raise Failure("metadata", "the store's public key is malformed") from exc
    if stored.name != meta.get("origin"):
        raise Failure("metadata", "the store's public key is not named after its origin")
    if public_key is None:
        return stored
    if isinstance(public_key, Path):
        pinned = load_public_key(public_key, origin=stored.name)
    elif isinstance(public_key, str):
        pinned = Verifier.from_vkey(public_key)
    else:
        pinned = public_key
    if pinned != stored:
        raise Failure(
            "metadata",
            f"the store is signed by key {stored.name}+{stored.key_id}, not by the pinned key "
            f"{pinned.name}+{pinned.key_id} (a re-signed fork or the wrong key file)",
        )
    return pinned


def _checkpoints(rows: list[StoredCheckpoint], verifier: Verifier) -> list[Checkpoint]:
    parsed: list[Checkpoint] = []
    for number, row in enumerate(rows, start=1):
        where = f"checkpoint {number} (tree size {row.size})"
        try:
            checkpoint = Checkpoint.from_note(row.note, verifier)
        except VerificationError as exc:
            raise Failure(where, "signature or format does not verify with the log's public key") from exc
        if checkpoint.size != row.size:
            raise Failure(where, f"signed tree size {checkpoint.size} differs from the stored size")
        parsed.append(checkpoint)
    return parsed


def _cosignatures(
    rows: list[tuple[int, str]], checkpoints: list[Checkpoint], witnesses: Sequence[Witness]
) -> dict[int, set[str]]:
    """Check every stored cosignature by a known witness; return who cosigned each size.

    Lines by unknown keys are ignored (C2SP signed-note); a line naming a known witness
    must verify, and every line must sit beside a checkpoint that is in the log.
    """
    by_size = {cp.size: (number, cp) for number, cp in enumerate(checkpoints, start=1)}
    cosigned: dict[int, set[str]] = {}
    for size, line in rows:
        if size not in by_size:
            raise Failure(f"cosignature (tree size {size})", "cosigns a checkpoint that is not in the log (dropped)")
        number, checkpoint = by_size[size]
        try:
            name, blob = parse_line(line)
        except VerificationError as exc:
            raise Failure(f"checkpoint {number} (tree size {size})", "a stored cosignature line is malformed") from exc
        for witness in witnesses:
            if not witness.matches(name, blob):
                continue
            try:
                witness.verify_line(checkpoint, line)
            except VerificationError as exc:
                raise Failure(
                    f"checkpoint {number} (tree size {size})",
                    f"cosignature by {witness.name} does not verify: the checkpoint was re-signed or the log "
                    "rewritten after the site cosigned it",
                ) from exc
            cosigned.setdefault(size, set()).add(witness.name)
    return cosigned


def _witnessed(checkpoints: list[Checkpoint], cosigned: dict[int, set[str]], quorum: int) -> Checkpoint:
    """The newest checkpoint with ``quorum`` cosigners (what :func:`_reader_tail` checks after)."""
    if not checkpoints:
        raise Failure("checkpoints", "the log has no checkpoint for witnesses to cosign")
    for checkpoint in reversed(checkpoints):
        if len(cosigned.get(checkpoint.size, set())) >= quorum:
            return checkpoint
    head = checkpoints[-1]
    raise Failure(
        f"checkpoint {len(checkpoints)} (tree size {head.size})",
        f"newest checkpoint is cosigned by {len(cosigned.get(head.size, set()))} of the {quorum} witnesses "
        "required, and no earlier one has the quorum (rewritten, truncated to an uncosigned checkpoint, "
        "or not yet cosigned)",
    )


def _latest_time(source: LogSource, checkpoint: Checkpoint, witnesses: Sequence[Witness]) -> str | None:
    """UTC time of the newest valid cosignature on ``checkpoint`` (the sites' own clocks)."""
    from datetime import UTC, datetime

    times = [
        witness.verify_line(checkpoint, line)
        for size, line in source.cosignatures()
        if size == checkpoint.size
        for witness in witnesses
        if witness.matches(*parse_line(line))
    ]
    if not times:
        return None
    return datetime.fromtimestamp(max(times), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_READER_TYPES = frozenset({"report.generated", "log.read"})
_LIFECYCLE = ("run.created", "run.completed", "run.failed")


def _open_runs(source: LogSource, entries: int) -> tuple[str, ...]:
    """Runs the log shows created and not (yet) completed or failed, in order of creation."""
    state: dict[str, str] = {}
    for data in source.of_types(_LIFECYCLE, below=entries):
        obj = orjson.loads(data)
        run = obj.get("run_id") if isinstance(obj, dict) else None
        if isinstance(run, str):
            state[run] = str(obj.get("type"))
    return tuple(run for run, last in state.items() if last == "run.created")


def _reader_tail(source: LogSource, witnessed: int) -> int:
    """Entries after the newest cosigned checkpoint: only readers' records may be there.

    Readers' reads are sealed from the access log as ``log.read`` entries (actor
    ``operator``, or the log itself recording a broken access log), an auditor who
    regenerates a report appends ``report.generated`` (actor ``operator``), and the
    checkpoints that sealed them are announced by the log (``checkpoint.published``);
    those are counted as unwitnessed. Anything else after the witnessed checkpoint - a
    coordinator's or site's entry - fails: nobody witnessed it.
    """
    count = 0
    for offset, data in enumerate(source.tail(witnessed)):
        obj = orjson.loads(data)
        actor = obj.get("actor") if isinstance(obj, dict) else None
        kind = actor.get("kind") if isinstance(actor, dict) else None
        who = actor.get("id") if isinstance(actor, dict) else None
        type_ = obj.get("type")
        if kind == "system" and who == LOG_ACTOR_ID and type_ == "checkpoint.published":
            continue
        reader = kind == "operator" and type_ in _READER_TYPES
        if not reader and not (kind == "system" and who == LOG_ACTOR_ID and type_ == "log.read"):
            raise Failure(
                f"entry {witnessed + offset}",
                "an entry after the newest cosigned checkpoint is not witnessed by the sites",
            )
        count += 1
    return count


def _held(notes: Sequence[str], verifier: Verifier) -> dict[int, bytes]:
    held: dict[int, bytes] = {}
    for number, note in enumerate(notes, start=1):
        try:
            checkpoint = Checkpoint.from_note(note, verifier)
        except VerificationError as exc:
            raise Failure(f"held checkpoint {number}", "does not verify with the log's public key") from exc
        if held.setdefault(checkpoint.size, checkpoint.root_hash) != checkpoint.root_hash:
            raise Failure(f"held checkpoint {number}", "two signed checkpoints of one size differ (split view)")
    return held


def _chunks(source: LogSource, workers: int) -> Iterator[Chunk]:
    """Scan the entries, over ``workers`` processes for a large store, in seq order."""
    if not isinstance(source, StoreSource) or workers < 2:
        yield scan_entries(source.rows(), 0)
        return
    total = source.count()
    if total < PARALLEL_MIN_ENTRIES:
        yield scan_entries(source.rows(), 0)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    step = -(-total // (workers * 4))  # a few ranges per worker, so merging overlaps scanning
    bounds = [(lo, min(lo + step, total)) for lo in range(0, total, step)]
    bounds[-1] = (bounds[-1][0], total + 1)  # the last range also sees any row past the count
    context = multiprocessing.get_context("spawn")  # no fork of a possibly threaded parent
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(scan_store_range, source.target, lo, hi) for lo, hi in bounds]
        try:
            for future in futures:
                yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _replay(
    chunks: Iterator[Chunk], checkpoints: list[Checkpoint], held: dict[int, bytes], progress: dict[str, object]
) -> None:
    """The ordered half: Merkle roots, checkpoints, announcements, timestamps across chunks."""
    tree = CompactRange()
    expected = 0
    last_ts = ""
    announced = 0
    next_cp = 0
    n_cp = len(checkpoints)
    next_size = checkpoints[0].size if n_cp else -1
    for chunk in chunks:
        if chunk.lo != expected:
            break  # an earlier chunk stopped short: its failure was raised below
        if chunk.first_ts is not None and chunk.first_ts < last_ts:
            raise Failure(f"entry {chunk.lo}", "timestamp is malformed or earlier than the previous entry's")
        marks = set(chunk.announcements)
        leaves = chunk.leaves
        for offset in range(0, chunk.count * HASH_SIZE, HASH_SIZE):
            if expected in marks:
                announced = expected + 1
            tree.append(leaves[offset : offset + HASH_SIZE])
            expected += 1
            if expected in held and tree.root() != held[expected]:
                raise Failure(
                    f"held checkpoint (tree size {expected})", "the log's tree of this size differs (history rewritten)"
                )
            if announced == expected and next_size != expected:
                raise Failure(
                    f"entry {expected - 1}", f"announces a checkpoint of tree size {expected} that is missing (dropped)"
                )
            if next_size == expected:
                cp_where = f"checkpoint {next_cp + 1} (tree size {expected})"
                if announced != expected:
                    raise Failure(cp_where, "no checkpoint.published entry announces it")
                root = tree.root()
                if root != checkpoints[next_cp].root_hash:
                    first = checkpoints[next_cp - 1].size if next_cp else 0
                    raise Failure(
                        cp_where,
                        f"root hash does not match entries 0..{expected - 1} "
                        f"(an entry in {first}..{expected - 1} was altered)",
                    )
                next_cp += 1
                next_size = checkpoints[next_cp].size if next_cp < n_cp else -1
                progress.update(checkpoints=next_cp, head_size=expected, head_root=base64.b64encode(root).decode())
        progress["entries"] = expected
        if chunk.failure is not None:
            raise Failure(*chunk.failure)
        if chunk.count:
            last_ts = chunk.last_ts
    beyond = sorted(size for size in held if size > expected)
    if beyond:
        raise Failure(
            f"held checkpoint (tree size {beyond[0]})",
            f"the log holds only {expected} entries (tail truncated together with its checkpoints)",
        )
    if next_cp < n_cp:
        checkpoint = checkpoints[next_cp]
        raise Failure(
            f"checkpoint {next_cp + 1} (tree size {checkpoint.size})",
            f"covers {checkpoint.size} entries but the log holds only {expected} (tail truncated)",
        )
    progress["unsigned_tail"] = expected - int(str(progress["head_size"]))
