"""Every decoder a coordinator or a site runs on bytes from the other side, with valid seeds.

Each :class:`Decoder` names the function, the exceptions that count as a *clear
rejection* (fedinfra's own errors, pydantic's validation errors), valid encodings to
mutate, and a ``faithful`` check that an accepted input decoded to what it says (a
canonical re-encoding, or - for signed data - the same content as the signed original):
accepting tampered bytes as something else would be a silent acceptance.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from fedinfra.errors import FedinfraError

REJECTIONS: tuple[type[BaseException], ...] = (FedinfraError, ValidationError)


@dataclass
class Decoder:
    """One decoder under fuzz."""

    name: str
    decode: Callable[[bytes], Any]
    seeds: list[bytes]
    faithful: Callable[[bytes, Any], bool] = lambda data, value: True
    cases: int = field(default=0)


# -- records (Flower ArrayRecord tensors as .npy bytes) -------------------------------------
@dataclass
class _Array:
    dtype: str
    shape: tuple[int, ...]
    stype: str
    data: bytes


def _npy(arr: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _decode_record(data: bytes) -> Any:
    from fedinfra.aggregation.records import array_view

    return array_view("w", _Array("float32", (3, 4), "numpy.ndarray", data))


def _record_faithful(data: bytes, value: Any) -> bool:
    ref = np.load(io.BytesIO(data), allow_pickle=False)
    return bool(value.shape == (3, 4) and value.dtype == np.float32 and np.array_equal(value, ref, equal_nan=True))


# -- compressed updates ----------------------------------------------------------------------
def _compressed_seeds() -> list[bytes]:
    from fedinfra.aggregation.compression import UpdateCompressor, encode

    rng = np.random.default_rng(0)
    update = {"a": rng.normal(size=(5, 4)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    dense = UpdateCompressor(clip=1.0, bits=8, rng=np.random.default_rng(1))
    sparse = UpdateCompressor(clip=1.0, bits=4, topk_fraction=0.3, rng=np.random.default_rng(2))
    return [encode(dense.compress(update)), encode(sparse.compress(update))]


def _decode_compressed(data: bytes) -> Any:
    from fedinfra.aggregation.compression import decode

    return decode(data, max_dim=23)


def _compressed_faithful(data: bytes, value: Any) -> bool:
    from fedinfra.aggregation.compression import encode

    return encode(value) == data


# -- HE envelopes (ciphertext wrappers) -----------------------------------------------------
def _envelope_seeds() -> list[bytes]:
    from fedinfra.crypto import envelope as env

    header = env.Header(
        env.KIND_UPDATE, "bfv", b"p" * 32, "run-1", 3, 10, b"l" * 32, b"n" * 16, ("hospital-0",)
    )
    update = env.encode(header, [b"ct-one", b"ct-two-longer"]) + b"s" * 64
    agg_header = env.Header(env.KIND_AGGREGATE, "ckks", b"q" * 32, "run-2", 1, 7, b"m" * 32, b"o" * 16, ("a", "b"))
    prefix = env.encode(agg_header, [b"sum"])
    return [update, prefix + env.digest(env.KIND_AGGREGATE, prefix)]


def _decode_envelope(data: bytes) -> Any:
    from fedinfra.crypto import envelope as env

    kind = env.KIND_AGGREGATE if len(data) > 5 and data[5] == env.KIND_AGGREGATE else env.KIND_UPDATE
    return env.decode(data, kind=kind)


def _envelope_faithful(data: bytes, value: Any) -> bool:
    from fedinfra.crypto import envelope as env

    header, blobs, prefix, trailer = value
    return env.encode(header, blobs) == bytes(prefix) and bytes(prefix) + trailer == data


# -- JSON documents: reports (coordinator side), instructions (site side) ---------------------
def _json_decoder(model: type[BaseModel], seed: dict[str, Any]) -> tuple[Callable[[bytes], Any], list[bytes]]:
    def decode(data: bytes) -> Any:
        return model.model_validate_json(data)

    return decode, [json.dumps(seed).encode()]


def bounded(value: Any) -> bool:
    """Every number finite and within float32 / 2**53 range, every string bounded (issue 16)."""
    from fedinfra.config.wire import F32_MAX, MAX_SAFE_INTEGER, MAX_TEXT

    if isinstance(value, dict):
        return all(bounded(k) and bounded(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(bounded(v) for v in value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_SAFE_INTEGER
    if isinstance(value, float):
        return value == value and abs(value) <= F32_MAX
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    return False


def _json_faithful(model: type[BaseModel]) -> Callable[[bytes, Any], bool]:
    def check(data: bytes, value: Any) -> bool:
        again = model.model_validate_json(value.model_dump_json())
        return bool(again == value) and bounded(value.model_dump(mode="json"))

    return check


def _instruction(data: bytes) -> Any:
    """What a site does with an instruction: the document, then the job inside it."""
    from fedinfra.config import JobSpec
    from fedinfra.config.wire import TrainInstruction

    instruction = TrainInstruction.model_validate_json(data)
    return instruction, JobSpec.model_validate(instruction.job)


# -- audit: receipts, checkpoints, signed notes, canonical entries ---------------------------
def _audit_material() -> dict[str, Any]:
    from fedinfra.audit import AuditLog, Signer

    signer = Signer.from_private_bytes("fuzz-log", b"k" * 32)
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-audit-"))
    log = AuditLog.open(str(tmp / "audit.sqlite"), origin=signer.name, signer=signer)
    try:
        from fedinfra.audit import Actor

        for i in range(5):
            log.append(
                run_id="run-1", round=i, type="round.started", actor=Actor(kind="coordinator", id="c"),
                outcome="success", details={"i": i}, subject=None,
            )
        log.publish_checkpoint(run_id="run-1", round=4)
        receipt = log.receipt(3, since=None)
        checkpoint = log.latest_checkpoint
        entry = log.entries(run_id="run-1")[2]
    finally:
        log.close()
    assert checkpoint is not None
    return {"signer": signer, "receipt": receipt, "checkpoint": checkpoint, "entry": entry}


def _text(data: bytes) -> str:
    """Notes travel as JSON strings; bytes that are no UTF-8 never reach the parser."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        from fedinfra.errors import VerificationError

        raise VerificationError("note is not UTF-8") from exc


def build() -> list[Decoder]:
    """All decoders, with their seeds."""
    from fedinfra.audit import Checkpoint, Receipt, verify_receipt
    from fedinfra.audit.canonical import parse_canonical
    from fedinfra.audit.note import split_note
    from fedinfra.config.wire import EvalReport, SiteHello, TrainReport

    audit = _audit_material()
    verifier = audit["signer"].verifier
    receipt: Any = audit["receipt"]
    checkpoint: Any = audit["checkpoint"]

    def decode_receipt(data: bytes) -> Any:
        parsed = Receipt.from_json(data)
        verify_receipt(parsed, verifier_key=verifier)
        return parsed

    def decode_checkpoint(data: bytes) -> Any:
        return Checkpoint.from_note(_text(data), verifier)

    def decode_note(data: bytes) -> Any:
        return verifier.verify(_text(data))

    def decode_entry(data: bytes) -> Any:
        return parse_canonical(data)

    decoders = [
        Decoder("record (.npy tensor)", _decode_record, [_npy(np.arange(12, dtype=np.float32).reshape(3, 4))],
                _record_faithful),
        Decoder("compressed update", _decode_compressed, _compressed_seeds(), _compressed_faithful),
        Decoder("HE envelope", _decode_envelope, _envelope_seeds(), _envelope_faithful),
    ]
    reports: list[tuple[str, type[BaseModel], dict[str, Any]]] = [
        ("train report", TrainReport, {
            "site": "hospital-0", "round": 2, "num_examples": 10, "train_loss": 0.5, "run_id": "run-1",
            "model_digest": "a" * 64, "details": {"epsilon_total": 1.5, "caveats": ["x"], "steps": 3},
            "evaluation": {"round": 1, "loss_sum": 2.0, "correct": 3, "count": 4},
        }),
        ("evaluation report", EvalReport, {
            "site": "hospital-0", "round": 2, "loss_sum": 1.0, "correct": 1, "count": 2, "run_id": "run-1",
        }),
        ("site hello", SiteHello, {
            "site": "hospital-0", "num_examples": 50, "num_features": 30,
            "dataset_fingerprint": "hmac-sha256:" + "0" * 64, "epsilon_spent_lifetime": 0.5,
        }),
    ]
    for name, model, seed in reports:
        decode, seeds = _json_decoder(model, seed)
        decoders.append(Decoder(name, decode, seeds, _json_faithful(model)))
    decoders.append(Decoder("train instruction + job", _instruction, [json.dumps({
        "run_id": "run-1", "round": 2, "job": {"rounds": 3, "sites": {"count": 2}}, "model_digest": "b" * 64,
    }).encode()]))

    signed_note: str = checkpoint.note
    decoders += [
        Decoder("receipt", decode_receipt, [receipt.to_json().encode()],
                lambda d, v: v.entry == receipt.entry and v.checkpoint == receipt.checkpoint),
        Decoder("checkpoint", decode_checkpoint, [signed_note.encode()],
                lambda d, v: (v.size, v.root_hash) == (checkpoint.size, checkpoint.root_hash)),
        Decoder("signed note", decode_note, [signed_note.encode()],
                lambda d, v: v == split_note(signed_note)[0]),
        Decoder("audit entry (canonical JSON)", decode_entry, [audit["entry"].canonical()]),
    ]
    decoders += _config_decoders()
    return decoders


def _config_decoders() -> list[Decoder]:
    """Configuration files a party reads from elsewhere: job.toml, site.toml, server.toml."""
    from fedinfra.config import JobSpec, SiteManifest, load_model
    from fedinfra.config.server import ServerConfig

    repo = Path(__file__).resolve().parents[2]
    out = []
    for name, model, path in [
        ("job.toml", JobSpec, repo / "server" / "job.toml"),
        ("site.toml", SiteManifest, repo / "clients" / "hospital" / "site.toml"),
        ("server.toml", ServerConfig, repo / "server" / "server.toml"),
    ]:
        if not path.exists():
            continue

        def decode(data: bytes, model: Any = model) -> Any:
            with tempfile.NamedTemporaryFile(suffix=".toml") as fh:
                fh.write(data)
                fh.flush()
                return load_model(model, fh.name)

        out.append(Decoder(name, decode, [path.read_bytes()]))
    return out
