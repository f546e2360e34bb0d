"""How the coordinator combines plaintext updates (:class:`AggregationSpec`).

``rule`` picks a Byzantine-robust rule where updates are visible (``secure_aggregation.mode
= "none"``):

* ``fedavg`` - the example-weighted mean (McMahan et al. 2017);
* ``median`` - coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML);
* ``trimmed-mean`` - coordinate-wise mean after dropping the ``trim_fraction`` largest and
  smallest values (Yin et al. 2018);
* ``krum`` / ``multi-krum`` - the update(s) closest to their ``n - f - 2`` nearest
  neighbours (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent", NeurIPS), ``f = byzantine``;
* ``norm-bounded`` - FedAvg after clipping every update to L2 norm ``clip`` at the
  coordinator (Sun et al. 2019, "Can You Really Backdoor Federated Learning?").

``max_update_norm`` is a sanity bound under every rule: a plaintext update longer than it
is refused as malformed. With it every update coordinate is at most that large, so no
weighted sum of them overflows float32 and the aggregate stays finite (issue 16).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedinfra.config._load import StrictModel

Rule = Literal["fedavg", "median", "trimmed-mean", "krum", "multi-krum", "norm-bounded"]
#: Rules that need every update at once (O(sites x model) memory) and visible updates.
ROBUST_RULES: frozenset[str] = frozenset({"median", "trimmed-mean", "krum", "multi-krum", "norm-bounded"})


class AggregationSpec(StrictModel):
    """The aggregation rule of a job and its parameters."""

    rule: Rule = "fedavg"
    trim_fraction: float = Field(default=0.2, ge=0, lt=0.5, description="trimmed-mean: share cut at each end")
    byzantine: int = Field(default=1, ge=0, le=100_000, description="krum: number f of faulty sites tolerated")
    krum_select: int = Field(default=0, ge=0, le=100_000, description="multi-krum: updates averaged (0 = n - f)")
    clip: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="norm-bounded: L2 clip")
    max_update_norm: float = Field(
        default=1e6, gt=0, le=1e12, allow_inf_nan=False, description="plaintext updates longer than this are refused"
    )

    @model_validator(mode="after")
    def _parameters(self) -> AggregationSpec:
        if self.rule == "norm-bounded" and self.clip is None:
            raise ValueError("aggregation.rule = 'norm-bounded' needs aggregation.clip (the L2 bound, e.g. 1.0)")
        return self
