"""Differential-privacy settings of a job (:class:`PrivacySpec`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedinfra.config._load import StrictModel


class PrivacySpec(StrictModel):
    """How updates are protected by differential privacy.

    ``mechanism``:
      * ``none`` - no DP (only allowed where the policy packs permit it);
      * ``dp-sgd`` - sample-level DP at each site with Opacus (Abadi et al. 2016);
      * ``user-dp`` - user-level DP-FedAvg: clip each site update, add Gaussian noise
        (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models").

    ``max_grad_norm`` is the per-example clip bound C for ``dp-sgd`` and the per-site update
    clip bound S for ``user-dp``. Every number must be finite; the checks that need the data
    (delta < 1/n, a noise multiplier that reaches the target, unsupported layers) run in
    :func:`fedinfra.privacy.resolve_noise_multiplier` and the trainer, before any step.

    ``trust_sampling`` (user-dp): sites enforce their caps on the figure *against the
    coordinator* (no amplification by a sample it chose) unless this is true; then they
    enforce the amplified figure, which holds only if the coordinator samples honestly
    (Poisson, secret) - the report states that assumption.
    """

    mechanism: Literal["none", "dp-sgd", "user-dp"] = "none"
    epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="target epsilon per run")
    delta: float = Field(default=1e-5, gt=0, lt=1, allow_inf_nan=False)
    noise_multiplier: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_grad_norm: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    accountant: Literal["prv", "rdp"] = "prv"
    trust_sampling: bool = Field(
        default=False,
        description="user-dp: enforce caps on the amplified figure (assumes honest Poisson sampling)",
    )

    @model_validator(mode="after")
    def _target_given(self) -> PrivacySpec:
        if self.mechanism != "none" and self.epsilon is None and self.noise_multiplier is None:
            raise ValueError("with DP on, set 'epsilon' (target) or 'noise_multiplier'")
        return self
