"""Checking the coordinator's audit receipts before training again.

After each round a site receives, for its own ``update.received`` entry, an inclusion
proof against a signed checkpoint plus a consistency proof from the last checkpoint it
holds (RFC 9162 §2.1.3-2.1.4; C2SP signed notes). It verifies all three and keeps the
receipt on disk; if any fails it refuses to train (a split view or an edited log is
exactly what a transparency log exists to expose).

It also *witnesses* the log: each message carries the coordinator's newest checkpoint and
a consistency proof from the one the site holds; the site checks both, keeps the new
checkpoint and returns a C2SP tlog-cosignature made with its own key
(:func:`cosign_checkpoint`), so no one - not even the coordinator - can later rewrite or
cut what the sites have cosigned without a verifier noticing.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fedinfra.errors import VerificationError

if TYPE_CHECKING:
    from fedinfra.audit import Checkpoint
    from fedinfra.audit.cosign import Cosigner, ViewProof
    from fedinfra.site.context import SiteContext


def verify_and_store(receipts: list[str], *, directory: Path, verifier_key: str | None) -> int:
    """Verify ``receipts`` (JSON) in order, keep each; return how many were verified.

    Raises
    ------
    VerificationError
        If a receipt does not verify, or receipts arrive but the site has no key to check
        them with (fail closed).
    """
    if not receipts:
        return 0
    from fedinfra.audit import Receipt, latest_checkpoint, receipt_path, verify_receipt

    if verifier_key is None:
        raise VerificationError("received audit receipts but the site kit holds no coordinator log key")
    directory.mkdir(parents=True, exist_ok=True)
    previous = latest_checkpoint(directory, verifier_key)
    for text in receipts:
        receipt = Receipt.from_json(text)
        try:
            checkpoint = verify_receipt(receipt, verifier_key=verifier_key, previous=previous)
        except VerificationError as exc:
            raise VerificationError(f"audit receipt for entry {receipt.entry.seq} did not verify") from exc
        receipt.save(receipt_path(directory, receipt))
        if previous is None or checkpoint.size >= previous.size:
            previous = checkpoint
    return len(receipts)


def current_size(directory: Path, verifier_key: str | None) -> int:
    """Tree size of the newest checkpoint the site holds (0 when none)."""
    if verifier_key is None:
        return 0
    from fedinfra.audit import latest_checkpoint

    cp = latest_checkpoint(directory, verifier_key)
    return 0 if cp is None else cp.size


COSIGNER_KEY = "cosigner.key"
"""The site's cosigning key in its home (mode 0600); ``cosigner.vkey`` beside it is public."""

ALERTS_FILE = "alerts.log"
"""Where a site records, in its own directory, that it saw a split view or a rollback."""

_log = logging.getLogger("fedinfra.site.audit")


def cosigner_name(site: str) -> str:
    """The key name a site cosigns under (C2SP key names: no spaces or '+')."""
    return f"fedinfra-site.{site}"


def cosigner(home: Path, site: str, kit: Path | None = None) -> Cosigner:
    """The site's own cosigning key: the kit's if it holds one, else one made in ``home``.

    The kit's key comes from the key ceremony and is pinned by the coordinator kit; without
    one, a key is created on first use (keys are born where they are used).
    """
    from fedinfra.audit.cosign import Cosigner

    if kit is not None and (kit / COSIGNER_KEY).is_file():
        return Cosigner.load_or_create(kit / COSIGNER_KEY, cosigner_name(site))
    home.mkdir(parents=True, exist_ok=True)
    return Cosigner.load_or_create(home / COSIGNER_KEY, cosigner_name(site))


def record_alert(directory: Path, message: str) -> VerificationError:
    """Append ``message`` to the site's own ``alerts.log`` (and its log); return the refusal to raise.

    The site's record of what the coordinator did wrong: it stays at the site, the
    coordinator gets only the bounded refusal code (issue 16).
    """
    _log.error("%s", message)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with (directory / ALERTS_FILE).open("a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {message}\n")
    return VerificationError(message)


def _alert(directory: Path, problem: str, held: int, shown: int) -> VerificationError:
    """Record a split view in the site's own log, and return the refusal to raise."""
    return record_alert(
        directory, f"split view: {problem} (site holds tree size {held}, coordinator showed {shown}); refusing to train"
    )


def _view_marker(directory: Path, run_id: str) -> Path:
    from fedinfra.config.names import check_slug

    return directory / f"model-view-refused.{check_slug(run_id, 'run_id from the coordinator')}"


def _refuse_view(directory: Path, run_id: str, message: str) -> VerificationError:
    """Record a model-view refusal in ``alerts.log`` and mark the run: nothing more of it is cosigned.

    A coordinator caught sending a model its log does not record has equivocated; the
    mark keeps the site from lending its cosignature to the rest of that run (so the run
    cannot become final without it), as a held fork does for a split view.
    """
    error = record_alert(directory, f"model view: {message}")
    _view_marker(directory, run_id).touch()
    return error


def check_logged_view(
    view: ViewProof | None, checkpoint: Checkpoint, *, run_id: str, model: str, directory: Path
) -> None:
    """Refuse unless ``checkpoint``'s own announcement records ``model`` for ``run_id``.

    ``model`` is the digest of what this site was sent (checked against the bytes it
    received, :func:`fedinfra.site.views.check_view`). The announcement is the
    checkpoint's last leaf (the log commits a checkpoint with the ``checkpoint.published``
    entry announcing it); the site hashes the entry text it was given, checks its RFC 9162
    §2.1.3 inclusion at ``size - 1`` against the checkpoint's root, and only then reads it.
    Every site cosigning this checkpoint checks the same leaf of the same append-only tree
    (split views are refused), so a coordinator that shows two sites two models under one
    checkpoint is refused by every site whose model is not the one it logged (issue 16,
    "consistent views"). One proof per message, ``log2(size)`` hashes.

    Raises
    ------
    VerificationError
        Recorded in ``alerts.log``: no proof, a proof that does not verify, an entry that
        is not this checkpoint's announcement for this run, or another digest.
    """
    import json

    from fedinfra.audit.entry import has_entry_shape
    from fedinfra.audit.merkle import leaf_hash, verify_inclusion

    def refuse(problem: str) -> VerificationError:
        where = f"run {run_id}, tree size {checkpoint.size}"
        return _refuse_view(directory, run_id, f"{problem} ({where}); refusing to cosign")

    if view is None:
        raise refuse("the coordinator did not prove which model its log records for this checkpoint")
    if view.seq != checkpoint.size - 1:
        raise refuse("the proven entry is not the checkpoint's own announcement")
    try:
        hashes = [base64.b64decode(h, validate=True) for h in view.inclusion]
        verify_inclusion(view.seq, checkpoint.size, leaf_hash(view.entry.encode()), hashes, checkpoint.root_hash)
    except (ValueError, binascii.Error, VerificationError) as exc:
        raise refuse("the announcement's inclusion proof does not verify") from exc
    try:  # in the tree, but the coordinator chose the tree's leaves: still hostile, and bounded
        obj = json.loads(view.entry)
    except (ValueError, RecursionError) as exc:
        raise refuse("the proven entry is not JSON") from exc
    details = obj.get("details") if has_entry_shape(obj) else None
    if (
        not isinstance(details, dict)
        or obj["type"] != "checkpoint.published"
        or obj["seq"] != view.seq
        or obj["run_id"] != run_id
        or details.get("tree_size") != checkpoint.size
    ):
        raise refuse("the proven entry is not this run's announcement of this checkpoint")
    logged = details.get("model_sha256")
    if logged != model:
        shown = str(logged)[:16] if isinstance(logged, str) else "none"
        raise refuse(f"the log records model {shown}…, this site was sent {model[:16]}…")


def cosign_checkpoint(
    request: str,
    *,
    directory: Path,
    verifier_key: str | None,
    home: Path,
    site: str,
    kit: Path | None = None,
    clock: Callable[[], float] = time.time,
    model: str | None = None,
    run_id: str = "",
) -> str:
    """Check the coordinator's newest checkpoint and return this site's cosignature (JSON).

    The checkpoint must be signed by the pinned log key and extend the largest checkpoint
    the site holds (RFC 9162 §2.1.4); then the site keeps it and signs a C2SP
    tlog-cosignature with its own key. A checkpoint that forks from, or rolls back, what
    the site holds is a split view (RFC 9162 §8.2): recorded in ``alerts.log`` and refused.
    With ``model`` (the digest of the model this message brought, for run ``run_id``) the
    checkpoint must also record that digest (:func:`check_logged_view`); a site with a log
    key then refuses a message that asks nothing. After such a refusal the site cosigns
    nothing more of ``run_id``. Returns ``""`` when nothing was asked.

    Raises
    ------
    VerificationError
        If the request is malformed, does not verify, shows a split view, or records
        another model than the one this site was sent.
    """
    if run_id and _view_marker(directory, run_id).exists():
        raise VerificationError(
            f"this site caught the coordinator sending a model its log does not record in run {run_id} "
            f"(see {ALERTS_FILE}); it cosigns nothing more of this run"
        )
    if not request:
        if model is not None and verifier_key is not None:
            raise _refuse_view(
                directory, run_id, f"a model came without a checkpoint recording it (run {run_id}); refusing to train"
            )
        return ""
    from pydantic import ValidationError

    from fedinfra.audit import Checkpoint, latest_checkpoint
    from fedinfra.audit.cosign import CosignReply, CosignRequest
    from fedinfra.audit.merkle import verify_consistency
    from fedinfra.audit.note import Verifier
    from fedinfra.audit.receipt import save_held_checkpoint

    if verifier_key is None:
        raise VerificationError("asked to cosign a checkpoint but the site kit holds no coordinator log key")
    try:
        req = CosignRequest.model_validate_json(request)
        new = Checkpoint.from_note(req.checkpoint, Verifier.from_vkey(verifier_key))
        hashes = [base64.b64decode(h, validate=True) for h in req.consistency]
    except (ValidationError, ValueError, binascii.Error) as exc:
        raise VerificationError("the checkpoint to cosign is malformed or not signed by the log key") from exc
    held = latest_checkpoint(directory, verifier_key)
    if held is not None:
        if held.size > new.size:
            raise _alert(directory, "the coordinator shows an older checkpoint than one held", held.size, new.size)
        if held.size == new.size and held.root_hash != new.root_hash:
            raise _alert(directory, "two signed checkpoints of one tree size differ", held.size, new.size)
        if held.size < new.size:
            if req.old_size != held.size:
                raise VerificationError(
                    f"consistency proof starts at tree size {req.old_size}, the site holds {held.size}"
                )
            try:
                verify_consistency(held.size, new.size, held.root_hash, new.root_hash, hashes)
            except VerificationError as exc:
                raise _alert(directory, "the new checkpoint does not extend the held one", held.size, new.size) from exc
    if model is not None:
        check_logged_view(req.view, new, run_id=run_id, model=model, directory=directory)
    save_held_checkpoint(directory, new)
    line = cosigner(home, site, kit).cosign(new, timestamp=int(clock()))
    return CosignReply(tree_size=new.size, line=line).model_dump_json()


def witness(ctx: SiteContext, request: str, run_id: str, model: str | None = None) -> str:
    """:func:`cosign_checkpoint` for one site context (its receipts dir, log key and home).

    ``model``: the digest the message's instruction names for the model it brings.
    """
    return cosign_checkpoint(
        request, directory=ctx.receipts_dir(run_id), verifier_key=ctx.audit_key(), home=ctx.home.root, site=ctx.name,
        kit=ctx.home.kit, model=model, run_id=run_id,
    )


def cosigner_vkey(ctx: SiteContext) -> str:
    """The site's public cosigner key, sent at admission (the coordinator logs it)."""
    return cosigner(ctx.home.root, ctx.name, ctx.home.kit).vkey
