"""Idempotent rounds: a site answers a repeated round with the reply it already released.

When the coordinator crashes after a site has replied, the resumed run asks for the same
round again, from the same global model. Training afresh would publish a *second* noisy
release of that round and cost a second round's epsilon (sequential composition, Dwork &
Roth 2014, Thm. 3.16) - a resumed run would then overspend a budget planned for exactly
``rounds`` rounds. Re-sending the identical release costs nothing more: it is
post-processing of an output already published (Dwork & Roth 2014, Prop. 2.1).

So a site stores each reply, keyed by run, round and a digest of the global model it
trained from, *before* the reply leaves. A request for the same (run, round, model) gets
the stored reply; any other model for that round is a new release and is trained (and
accounted) afresh. The stored reply is exactly what the site sends - already clipped,
noised or encrypted - so it holds nothing the coordinator would not see anyway; the file
is still private to the site (0600).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from fedinfra.config.wire import TrainReport
from fedinfra.site.home import SiteHome
from fedinfra.types import NDArrays

_FORMAT = 1


def model_digest(weights: NDArrays) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        arr = np.ascontiguousarray(weights[name])
        header = json.dumps([name, arr.dtype.str, list(arr.shape)]).encode()
        h.update(len(header).to_bytes(4, "big") + header)
        h.update(arr.tobytes())
    return h.hexdigest()


def _path(home: SiteHome, run_id: str, round_id: int) -> Path:
    directory = home.run_dir(run_id) / "replies"
    directory.mkdir(exist_ok=True)
    return directory / f"round-{round_id:06d}.npz"


def store(
    home: SiteHome,
    run_id: str,
    digest: str,
    report: TrainReport,
    *,
    update: NDArrays | None,
    blob: bytes | None,
    blob_kind: str,
) -> None:
    """Persist one round's reply atomically (write to a temp file, fsync, rename)."""
    meta = {"format": _FORMAT, "digest": digest, "report": report.model_dump(mode="json"), "blob_kind": blob_kind}
    arrays: dict[str, np.ndarray] = {"__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    if blob is not None:
        arrays["__blob__"] = np.frombuffer(blob, dtype=np.uint8)
    for name, arr in (update or {}).items():
        arrays[f"u:{name}"] = arr
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    target = _path(home, run_id, report.round)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def load(
    home: SiteHome, run_id: str, round_id: int, digest: str
) -> tuple[TrainReport, NDArrays | None, bytes | None, str] | None:
    """The stored reply for (run, round) if it was computed from the model ``digest``.

    Returns ``None`` when there is none, when it came from another model, or when the
    file is unreadable (a torn write is treated as absent: the round is trained again
    and accounted again - over-counting, never under-counting).
    """
    target = _path(home, run_id, round_id)
    if not target.exists():
        return None
    try:
        with np.load(io.BytesIO(target.read_bytes()), allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            if meta.get("format") != _FORMAT or meta.get("digest") != digest:
                return None
            report = TrainReport.model_validate(meta["report"])
            blob = bytes(data["__blob__"]) if "__blob__" in data.files else None
            update = {k[2:]: np.asarray(data[k]) for k in data.files if k.startswith("u:")} or None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return report, update, blob, str(meta.get("blob_kind", ""))
