"""Differential privacy (layer L2): accounting, noise, DP-SGD, user-level DP, the ledger.

Pure functions (accounting, clipping, noise) sit apart from the two stateful shells
(:class:`PrivacyLedger`, and the Opacus training loop in :func:`train_dp_sgd`). torch and
Opacus are imported only when a function needs them.
"""

from fedinfra.privacy.accounting import (
    ACCOUNTANTS,
    check_accountant,
    check_delta,
    compute_epsilon,
    epsilon_of_history,
    plan_noise_multiplier,
    resolve_noise_multiplier,
)
from fedinfra.privacy.dp_sgd import (
    DPSGDResult,
    choose_mode,
    make_private_compatible,
    sample_rate_for,
    steps_for,
    train_dp_sgd,
)
from fedinfra.privacy.ledger import DatasetTotal, PrivacyLedger, Remaining, SpendRecord
from fedinfra.privacy.noise import add_gaussian_noise, discrete_gaussian, gaussian, secure_generator, secure_seed
from fedinfra.privacy.user_level import (
    MIN_MEANINGFUL_SITES,
    UserLevelDPWarning,
    central_noise_std,
    clip_update,
    noise_central,
    noise_site_share,
    sampling_rate,
    site_discrete_noise_share,
    site_noise_std,
    update_norm,
    user_level_caveats,
    user_level_epsilon,
    warn_if_user_level_dp_weak,
)

__all__ = [
    "ACCOUNTANTS",
    "MIN_MEANINGFUL_SITES",
    "DPSGDResult",
    "DatasetTotal",
    "PrivacyLedger",
    "Remaining",
    "SpendRecord",
    "UserLevelDPWarning",
    "add_gaussian_noise",
    "central_noise_std",
    "check_accountant",
    "check_delta",
    "choose_mode",
    "clip_update",
    "compute_epsilon",
    "discrete_gaussian",
    "epsilon_of_history",
    "gaussian",
    "make_private_compatible",
    "noise_central",
    "noise_site_share",
    "plan_noise_multiplier",
    "resolve_noise_multiplier",
    "sample_rate_for",
    "sampling_rate",
    "secure_generator",
    "secure_seed",
    "site_discrete_noise_share",
    "site_noise_std",
    "steps_for",
    "train_dp_sgd",
    "update_norm",
    "user_level_caveats",
    "user_level_epsilon",
    "warn_if_user_level_dp_weak",
]
