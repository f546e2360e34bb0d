"""Reading one site's reply: every value is bounded before the coordinator uses it.

A reply is untrusted bytes from a party the coordinator does not control (a broken,
outdated or hostile site). Each reader here either returns values that are within the
job's bounds - slugs for names, finite float32-range numbers, an example count no larger
than the site declared at admission, the run and round asked for - or raises
:class:`Rejected` naming the *check* that failed. The check is a code
(``train_report.num_examples:less_than_equal``), never the offending value: rejections
are audited, and the audit log holds no raw input (GDPR Art. 5(1)(c)).

The update itself is checked by the round's aggregator
(:mod:`fedinfra.aggregation.rounds`: layout, float32 dtype, finiteness, norm bound).

The failure of one site's reply is contained by the caller: :func:`check_of` turns any
exception into a check code so that the round continues with the other sites
(Blanchard et al. 2017: a federation must tolerate faulty participants, not abort on them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

from flwr.app import Message
from pydantic import BaseModel, ValidationError

from fedinfra.config.wire import CONFIG, DOC, EvalReport, TrainReport
from fedinfra.errors import FedinfraError

if TYPE_CHECKING:
    from fedinfra.config.secagg import SecureAggSpec
    from fedinfra.crypto.params import HEParams

M = TypeVar("M", bound=BaseModel)

#: Largest JSON document accepted from a site (reports are a few kB).
MAX_DOC_BYTES = 1 << 20


class Rejected(FedinfraError, ValueError):
    """A site's reply failed ``check``; the message is the check code, never an input value."""

    def __init__(self, check: str) -> None:
        super().__init__(check)
        self.check = check


def check_of(exc: BaseException) -> str:
    """The failing check of ``exc`` as a code fit for the audit log (no input values)."""
    check = getattr(exc, "check", None)
    if isinstance(exc, FedinfraError) and isinstance(check, str):
        return check  # Rejected, or the aggregators' UpdateRejected
    if isinstance(exc, ValidationError):
        return schema_check(exc, exc.title)
    return f"internal.{type(exc).__name__}"


def schema_check(exc: ValidationError, model: str) -> str:
    """``<model>.<field path>:<error type>`` of the first error of ``exc``."""
    first = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"]) or "root"
    return f"{_snake(model)}.{loc}:{first['type']}"[:200]


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def config_value(reply: Message, key: str) -> object:
    """The value ``key`` of the reply's config record, or :class:`Rejected`."""
    try:
        return reply.content.config_records[CONFIG][key]
    except KeyError:
        raise Rejected(f"reply.{key}:missing") from None


def parse_doc(model: type[M], reply: Message) -> M:
    """Validate the reply's JSON document as ``model`` (bounded size, strict schema)."""
    raw = config_value(reply, DOC)
    if not isinstance(raw, str):
        raise Rejected("reply.doc:type")
    if len(raw) > MAX_DOC_BYTES:
        raise Rejected("reply.doc:too_long")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise Rejected(schema_check(exc, model.__name__)) from None


def _same_run(report: TrainReport | EvalReport, *, site: str, rnd: int, run_id: str, view: str) -> None:
    """The report answers this run, this round, as this site, on the model it was sent."""
    if report.site != site:
        raise Rejected("report.site:mismatch")
    if report.run_id != run_id:
        raise Rejected("report.run_id:mismatch")
    if report.round != rnd:
        raise Rejected("report.round:mismatch")
    if report.status == "ok" and report.model_digest != view:
        raise Rejected("report.model_digest:mismatch")


def train_report(
    reply: Message, *, site: str, rnd: int, declared_examples: int | None, run_id: str, view: str
) -> TrainReport:
    """The reply's :class:`TrainReport`, for ``site``, run ``run_id``, round ``rnd``, model ``view``.

    ``num_examples`` weighs the site in FedAvg: it may not exceed the dataset size the site
    declared at admission (``declared_examples``; ``None`` when counts are withheld under
    HE, where the report must carry 0). A reply built on another model than the digest
    ``view`` this round's instruction named (a stale or replayed reply) is rejected.
    """
    if reply.has_error():
        raise Rejected("reply.error")
    report = parse_doc(TrainReport, reply)
    _same_run(report, site=site, rnd=rnd, run_id=run_id, view=view)
    bound = 0 if declared_examples is None else declared_examples
    if report.num_examples > bound:
        raise Rejected("report.num_examples:above_declared")
    return report


def he_update_bound(params: HEParams, layout: tuple[tuple[str, tuple[int, ...]], ...]) -> int:
    """The largest encrypted update (``HE_UPDATE``) an honest site of this kit can send.

    Derived from the job's model and the kit's HE parameters, never from the reply: the
    envelope's framing (:mod:`fedinfra.crypto.envelope`, one site id), one length prefix
    and at most ``MAX_CT_BYTES`` (a full, unseeded SEAL ciphertext) for each of the
    ``ciphertext_count(n_values)`` ciphertexts the model's values fill, and the Ed25519
    signature. A larger reply is refused before it is copied, parsed or verified, so a
    site cannot make the coordinator hold gigabytes (only gRPC's 2 GB limit applied).
    """
    from fedinfra.crypto import envelope
    from fedinfra.crypto._seal import MAX_CT_BYTES

    n_values = sum(math.prod(shape) for _, shape in layout)
    framing = (
        len(envelope.MAGIC)
        + 3  # version, kind, scheme
        + 32  # param_id
        + 2 * (2 + envelope.MAX_ID_BYTES)  # run id and the one site id
        + 2 * 8  # round, n_values
        + 32  # layout digest
        + envelope.NONCE_BYTES
        + 2 * 4  # site count, ciphertext count
    )
    per_ciphertext = 4 + MAX_CT_BYTES
    return framing + params.ciphertext_count(n_values) * per_ciphertext + envelope.TRAILER_BYTES[envelope.KIND_UPDATE]


def secagg_update_bound(
    spec: SecureAggSpec, layout: tuple[tuple[str, tuple[int, ...]], ...], n_eval: int = 0
) -> int:
    """The exact length of a masked update (``SECAGG_UPDATE``) for this job's model.

    A masked input is ``ceil(L / 8)`` bytes per value of the model plus the 64-bit trailer
    (:mod:`fedinfra.crypto.secagg.codec`), and 8 bytes per evaluation sum when the round
    carries ``n_eval`` of them (issue 14), so the bound is exact and comes from the job's
    model and secure-aggregation table, never from the reply. A longer reply is refused
    before it is copied or parsed, as ``HE_UPDATE`` is (:func:`he_update_bound`).
    """
    from fedinfra.crypto.secagg import codec

    n_values = sum(math.prod(shape) for _, shape in layout)
    return codec.wire_size(codec.sizes(n_values, n_eval), codec.widths(spec, n_eval))


def bounded_blob(reply: Message, key: str, limit: int) -> None:
    """Refuse a binary payload ``key`` longer than ``limit`` bytes before anything reads it."""
    value = reply.content.config_records[CONFIG].get(key) if CONFIG in reply.content.config_records else None
    if isinstance(value, bytes | bytearray) and len(value) > limit:
        raise Rejected(f"reply.{key}:too_long")


def compressed_update_bound(layout: tuple[tuple[str, tuple[int, ...]], ...]) -> int:
    """The longest compressed update (``COMPRESSED_UPDATE``) of this job's model.

    :func:`fedinfra.aggregation.compression.encode`: the header, positions costing at most
    the bitmap (a sparse update's index list is sent only when it is shorter), and at most
    two bytes per value (int16 above 8 bits).
    """
    from fedinfra.aggregation.compression import HEADER_BYTES

    n_values = sum(math.prod(shape) for _, shape in layout)
    return HEADER_BYTES + (n_values + 7) // 8 + 2 * n_values


def reply_config(reply: Message, bounds: Mapping[str, int]) -> dict[str, object]:
    """The reply's config values, with each binary payload of ``bounds`` joined in from its segments.

    A payload travels as segments (:mod:`fedinfra.aggregation.blobs`); each named in ``bounds``
    is checked (shape, then length against its bound) before it is joined, and a breach is
    :class:`Rejected` by name (``reply.he.update:too_long``). A payload key found among the
    plain config values is dropped, never read: payloads have one way in.
    """
    from fedinfra.aggregation import blobs

    content = reply.content
    config: dict[str, object] = dict(content.config_records[CONFIG]) if CONFIG in content.config_records else {}
    records = content.array_records
    for key, limit in bounds.items():
        config.pop(key, None)
        try:
            data = blobs.take(records, key, limit=limit)
        except blobs.BlobError as exc:
            raise Rejected(exc.check) from None
        if data is not None:
            config[key] = data
    return config


def eval_report(reply: Message, *, site: str, rnd: int, run_id: str, view: str) -> EvalReport:
    """The reply's :class:`EvalReport` for ``site`` and the model ``view`` after round ``rnd``."""
    if reply.has_error():
        raise Rejected("reply.error")
    report = parse_doc(EvalReport, reply)
    _same_run(report, site=site, rnd=rnd, run_id=run_id, view=view)
    return report


__all__ = [
    "MAX_DOC_BYTES",
    "Rejected",
    "bounded_blob",
    "check_of",
    "compressed_update_bound",
    "config_value",
    "eval_report",
    "he_update_bound",
    "parse_doc",
    "reply_config",
    "schema_check",
    "secagg_update_bound",
    "train_report",
]
