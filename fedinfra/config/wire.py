"""Wire schemas between coordinator and sites (carried in Flower records).

Everything a site or the coordinator receives from the other side is validated against
these models before use; a reply that does not validate is rejected, never guessed at.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from fedinfra.config._load import StrictModel
from fedinfra.config.names import SLUG_PATTERN

#: Record keys inside a Flower ``RecordDict``.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
#: Key of the JSON document inside the ``config`` ConfigRecord.
DOC = "doc"


#: ConfigRecord keys for binary payloads (HE ciphertexts) beside the JSON doc.
HE_UPDATE = "he.update"
COMPRESSED_UPDATE = "update.compressed"
HE_AGGREGATES = "he.aggregates"
#: Secure aggregation (secagg): the stage document (JSON) and the masked update (bytes).
SECAGG = "secagg"
SECAGG_UPDATE = "secagg.update"
#: ``secagg+he``: the site's evaluation sums, masked modulo 2^64 (the coordinator unmasks only their total).
SECAGG_EVAL = "secagg.eval"
#: ``bfv``/``ckks``: the site's evaluation sums under zero-sum masks of the shared HE key
#: (:mod:`fedinfra.crypto.secagg.group`); the coordinator learns only a whole roster's total.
EVAL_MASKED = "eval.masked"

# -- bounds on everything a site sends (issue 16) ----------------------------------------
#: Largest finite float32: every float from a site must fit the model's dtype.
F32_MAX = 3.4028234663852886e38
#: Largest integer the audit log's canonical JSON carries exactly (RFC 8785, 2**53 - 1).
MAX_SAFE_INTEGER = 2**53 - 1
#: Upper bound on any example count a site declares (a billion records per site).
MAX_EXAMPLES = 1_000_000_000
#: Upper bound on a free-text string from a site (reasons, caveats).
MAX_TEXT = 1000
#: Upper bound on the entries of ``TrainReport.details`` and on any list inside it.
MAX_DETAIL_ITEMS = 64
#: The largest cumulative epsilon any site may report (far above every policy cap).
MAX_EPSILON = 1e6

#: Site names: slugs (the audit log's identifier alphabet, no spaces, no control characters).
SiteName = Annotated[str, Field(min_length=1, max_length=64, pattern=SLUG_PATTERN)]
#: A run id: the audit log's identifier alphabet.
RunId = Annotated[str, Field(min_length=1, max_length=128, pattern=SLUG_PATTERN)]
#: A finite float within float32 range, as every float a site sends must be.
F32 = Annotated[float, Field(allow_inf_nan=False, ge=-F32_MAX, le=F32_MAX)]
#: A non-negative finite float within float32 range.
NonNegF32 = Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=F32_MAX)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
#: A hex SHA-256 digest.
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_.]{0,63}")


class ReplyDetails(StrictModel):
    """The typed part of ``TrainReport.details``: what the coordinator reads and audits.

    Keys the coordinator does not read are still bounded (:func:`_bounded_details`).
    """

    epsilon_total: float | None = Field(default=None, allow_inf_nan=False, ge=0.0, le=MAX_EPSILON)
    delta: float | None = Field(default=None, allow_inf_nan=False, ge=0.0, le=1.0)
    receipts_verified: int | None = Field(default=None, ge=0, le=MAX_SAFE_INTEGER)
    replayed: bool | None = None
    bytes_sent: int | None = Field(default=None, ge=0, le=MAX_SAFE_INTEGER)
    mechanism: Literal["none", "dp-sgd", "user-dp"] | None = None


def _bounded_value(value: object, where: str, depth: int = 0) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"details.{where}: integer out of range (|x| <= 2**53 - 1)")
    elif isinstance(value, float):
        if not (math.isfinite(value) and abs(value) <= F32_MAX):
            raise ValueError(f"details.{where}: number not finite or outside float32 range")
    elif isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ValueError(f"details.{where}: string longer than {MAX_TEXT} characters")
    elif isinstance(value, list) and depth == 0:
        if len(value) > MAX_DETAIL_ITEMS:
            raise ValueError(f"details.{where}: list longer than {MAX_DETAIL_ITEMS} items")
        for item in value:
            _bounded_value(item, where, depth + 1)
    else:
        raise ValueError(f"details.{where}: unsupported value type {type(value).__name__}")


def _bounded_details(details: dict[str, Any]) -> dict[str, Any]:
    """Bound every entry of a site's ``details`` map; type the keys the coordinator reads."""
    if len(details) > MAX_DETAIL_ITEMS:
        raise ValueError(f"details: more than {MAX_DETAIL_ITEMS} entries")
    for key, value in details.items():
        if not _DETAIL_KEY.fullmatch(key):
            raise ValueError("details: a key is not a lower-case code ([a-z][a-z0-9_.]*, <= 64 characters)")
        _bounded_value(value, key)
    typed = ReplyDetails.model_validate({k: v for k, v in details.items() if k in ReplyDetails.model_fields})
    return {**details, **typed.model_dump(exclude_unset=True)}


BoundedDetails = Annotated[dict[str, Any], AfterValidator(_bounded_details)]


class SiteHello(StrictModel):
    """A site's answer to the admission QUERY.

    ``num_examples`` is withheld (``None``) under HE secure aggregation, where example
    counts travel only encrypted, and bucketed to a power of two under DP
    (:mod:`fedinfra.privacy.release`). ``dataset_fingerprint`` is an HMAC under a key the
    site never sends: an unkeyed hash of the data would be a membership oracle.
    """

    site: SiteName
    num_examples: int | None = Field(default=None, ge=1, le=MAX_EXAMPLES)
    num_features: int = Field(ge=1, le=1_000_000)
    dataset_fingerprint: str = Field(pattern=r"^hmac-sha256:[0-9a-f]{64}$", description="keyed by the site's secret")
    manifest: dict[str, object] = Field(default_factory=dict)
    scan: dict[str, object] | None = None
    preflight_passed: bool = True
    preflight_reason: Text = ""
    epsilon_spent_lifetime: float | None = Field(default=None, ge=0, le=MAX_EPSILON, allow_inf_nan=False)
    epsilon_remaining_run: float | None = Field(default=None, ge=0, le=MAX_EPSILON, allow_inf_nan=False)
    checkpoint_size: int = Field(
        default=0, ge=0, le=MAX_SAFE_INTEGER, description="tree size of the newest checkpoint the site holds"
    )
    cosigner: str = Field(default="", max_length=512, description="the site's cosigner key (C2SP tlog-cosignature)")


class TrainInstruction(StrictModel):
    """What the coordinator asks of a site for one round (or, round 0, at admission/close).

    ``receipts`` are audit receipts (JSON) for the site's earlier updates, to verify
    before training again. ``sync_from`` is the first round whose encrypted aggregate is
    attached (HE mode); ``phase`` says whether to train or only verify/evaluate.

    ``evaluate_round`` (HE mode) asks the site to also evaluate, on its local test shard,
    the global model after that round - the model it is about to train on, so it must be
    ``round - 1``. That folds round ``r``'s federated evaluation into round ``r + 1``'s
    train wave: one message wave per round instead of two.
    """

    run_id: RunId
    round: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    job: dict[str, object]
    phase: Literal["admit", "train", "evaluate", "close", "secagg", "cosign"] = "train"
    receipts: list[str] = Field(default_factory=list)
    cosign: str = Field(default="", max_length=70_000, description="request to cosign the newest checkpoint (JSON)")
    sync_from: int | None = Field(default=None, ge=1)
    sampled: int = Field(default=1, ge=1, description="sites sampled this round (checked, never trusted)")
    admitted: int = Field(default=0, ge=0, description="size of the admitted set the sample was drawn from")
    evaluate_round: int | None = Field(default=None, ge=1, description="also evaluate the model after this round")
    eval_roster: list[SiteName] = Field(
        default_factory=list,
        max_length=100_000,
        description="(bfv/ckks) the sites whose masked evaluation sums are summed together; empty: no evaluation",
    )
    model_digest: Digest | None = Field(
        default=None, description="SHA-256 of the model (HE: the aggregate ciphertext) this instruction is built on"
    )

    @model_validator(mode="after")
    def _evaluate_previous(self) -> TrainInstruction:
        if self.evaluate_round is not None and (self.phase != "train" or self.evaluate_round != self.round - 1):
            raise ValueError(
                f"evaluate_round={self.evaluate_round} must be round - 1 ({self.round - 1}) of a train instruction"
            )
        return self


def close_sum_round(rnd: int) -> int:
    """The SecAgg round id of the close wave's evaluation-only secure sum after round ``rnd``.

    ``rnd + 1``: every SecAgg session, mask label and signature names its round id, and a
    site masks one input per id (Bonawitz et al., CCS 2017, section 4), so the close sum
    must not reuse the last training round's id. No training round follows the close.
    """
    return rnd + 1


#: Upper bound on a site's reported test-shard size: larger counts are treated as invalid.
MAX_EVAL_COUNT = 100_000_000

#: A task's evaluation sums (fedinfra.task.metrics): at most 16 named vectors of 4,096
#: non-negative finite numbers - counts, confusion cells, score histograms, error sums.
MetricSums = Annotated[
    dict[
        Annotated[str, Field(max_length=32, pattern=r"^[a-z_]+$")],
        Annotated[list[NonNegF32], Field(max_length=4096)],
    ],
    Field(max_length=16),
]


class EvalCounts(StrictModel):
    """A site's evaluation of one round's global model: sums only, no records.

    Bounded and non-negative so one malformed or hostile reply cannot swamp the
    consortium's accuracy (``correct <= count <= MAX_EVAL_COUNT``, a loss sum that is a
    finite sum of non-negative cross-entropies).
    """

    round: int = Field(ge=1, le=MAX_SAFE_INTEGER)
    loss_sum: NonNegF32
    correct: int = Field(ge=0, le=MAX_EVAL_COUNT)
    count: int = Field(ge=0, le=MAX_EVAL_COUNT)
    sums: MetricSums = Field(default_factory=dict, description="the task's metric sums")

    @model_validator(mode="after")
    def _correct_within_count(self) -> EvalCounts:
        if self.correct > self.count:
            raise PydanticCustomError("correct_above_count", "evaluation.correct exceeds evaluation.count")
        return self


class TrainReport(StrictModel):
    """What a site reports with its update (no personal data: counts and losses only).

    ``status`` is ``refused`` when the site's own checks (policy, budget, receipt) deny
    the round; ``reason`` then says why and no update is attached. ``evaluation`` answers
    the instruction's ``evaluate_round`` (HE mode).
    """

    site: SiteName
    round: int = Field(ge=1, le=MAX_SAFE_INTEGER)
    status: Literal["ok", "refused"] = "ok"
    reason: Text = ""
    code: Literal["", "budget", "policy", "receipt", "crypto", "error"] = ""
    num_examples: int = Field(ge=0, le=MAX_EXAMPLES)
    train_loss: NonNegF32 = 0.0
    details: BoundedDetails = Field(default_factory=dict)
    evaluation: EvalCounts | None = None
    cosignature: str = Field(default="", max_length=1024, description="the site's cosignature (JSON)")
    run_id: RunId | None = Field(default=None, description="the run the site answers (the coordinator requires it)")
    model_digest: Digest | None = Field(default=None, description="SHA-256 of the model the site trained from")


class EvalReport(StrictModel):
    """A site's evaluation of the current global model on its local test shard.

    Bounded exactly as :class:`EvalCounts` (``correct <= count <= MAX_EVAL_COUNT``, a finite
    non-negative loss sum), so one report cannot swamp the consortium's figures.
    """

    site: SiteName
    round: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    status: Literal["ok", "refused"] = "ok"
    reason: Text = ""
    loss_sum: NonNegF32 = 0.0
    correct: int = Field(default=0, ge=0, le=MAX_EVAL_COUNT)
    count: int = Field(default=0, ge=0, le=MAX_EVAL_COUNT)
    receipts_verified: int = Field(default=0, ge=0, le=MAX_SAFE_INTEGER)
    sums: MetricSums = Field(default_factory=dict, description="the task's metric sums")
    cosignature: str = Field(default="", max_length=1024, description="the site's cosignature (JSON)")
    run_id: RunId | None = None
    model_digest: Digest | None = None

    @model_validator(mode="after")
    def _correct_within_count(self) -> EvalReport:
        if self.correct > self.count:
            raise PydanticCustomError("correct_above_count", "correct exceeds count")
        return self
