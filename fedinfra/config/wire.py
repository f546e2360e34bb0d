"""Wire schemas between coordinator and sites (carried in Flower records).

Everything a site or the coordinator receives from the other side is validated against
these models before use; a reply that does not validate is rejected, never guessed at.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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


class SiteHello(StrictModel):
    """A site's answer to the admission QUERY.

    ``num_examples`` is withheld (``None``) under HE secure aggregation, where example
    counts travel only encrypted.
    """

    site: str = Field(min_length=1, max_length=64, pattern=SLUG_PATTERN)
    num_examples: int | None = Field(default=None, ge=1)
    num_features: int = Field(ge=1)
    dataset_fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    manifest: dict[str, object] = Field(default_factory=dict)
    scan: dict[str, object] | None = None
    preflight_passed: bool = True
    preflight_reason: str = ""
    epsilon_spent_lifetime: float | None = Field(default=None, ge=0)
    epsilon_remaining_run: float | None = Field(default=None, ge=0)
    checkpoint_size: int = Field(default=0, ge=0, description="tree size of the newest checkpoint the site holds")


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

    run_id: str = Field(min_length=1, max_length=128, pattern=SLUG_PATTERN)
    round: int = Field(ge=0)
    job: dict[str, object]
    phase: Literal["admit", "train", "evaluate", "close"] = "train"
    receipts: list[str] = Field(default_factory=list)
    sync_from: int | None = Field(default=None, ge=1)
    sampled: int = Field(default=1, ge=1, description="sites sampled this round (user-level DP noise share)")
    evaluate_round: int | None = Field(default=None, ge=1, description="also evaluate the model after this round")

    @model_validator(mode="after")
    def _evaluate_previous(self) -> TrainInstruction:
        if self.evaluate_round is not None and (self.phase != "train" or self.evaluate_round != self.round - 1):
            raise ValueError(
                f"evaluate_round={self.evaluate_round} must be round - 1 ({self.round - 1}) of a train instruction"
            )
        return self


#: Upper bound on a site's reported test-shard size: larger counts are treated as invalid.
MAX_EVAL_COUNT = 100_000_000


class EvalCounts(StrictModel):
    """A site's evaluation of one round's global model: sums only, no records.

    Bounded and non-negative so one malformed or hostile reply cannot swamp the
    consortium's accuracy (``correct <= count <= MAX_EVAL_COUNT``, a loss sum that is a
    finite sum of non-negative cross-entropies).
    """

    round: int = Field(ge=1)
    loss_sum: float = Field(ge=0.0, allow_inf_nan=False)
    correct: int = Field(ge=0)
    count: int = Field(ge=0, le=MAX_EVAL_COUNT)

    @model_validator(mode="after")
    def _correct_within_count(self) -> EvalCounts:
        if self.correct > self.count:
            raise ValueError(f"evaluation.correct={self.correct} exceeds evaluation.count={self.count}")
        return self


class TrainReport(StrictModel):
    """What a site reports with its update (no personal data: counts and losses only).

    ``status`` is ``refused`` when the site's own checks (policy, budget, receipt) deny
    the round; ``reason`` then says why and no update is attached. ``evaluation`` answers
    the instruction's ``evaluate_round`` (HE mode).
    """

    site: str = Field(min_length=1, max_length=64)
    round: int = Field(ge=1)
    status: Literal["ok", "refused"] = "ok"
    reason: str = ""
    code: Literal["", "budget", "policy", "receipt", "crypto", "error"] = ""
    num_examples: int = Field(ge=0)
    train_loss: float = 0.0
    details: dict[str, object] = Field(default_factory=dict)
    evaluation: EvalCounts | None = None


class EvalReport(StrictModel):
    """A site's evaluation of the current global model on its local test shard."""

    site: str = Field(min_length=1, max_length=64)
    round: int = Field(ge=0)
    status: Literal["ok", "refused"] = "ok"
    reason: str = ""
    loss_sum: float = 0.0
    correct: int = Field(default=0, ge=0)
    count: int = Field(default=0, ge=0)
    receipts_verified: int = Field(default=0, ge=0)
