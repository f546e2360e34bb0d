"""The public surface of fedinfra.privacy is pinned, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import fedinfra.privacy

EXPECTED = {
    "ACCOUNTANTS", "MIN_MEANINGFUL_SITES", "DPSGDResult", "DatasetTotal", "PrivacyLedger", "Remaining",
    "SpendRecord", "UserLevelDPWarning", "add_gaussian_noise", "central_noise_std", "check_accountant",
    "check_delta", "choose_mode", "clip_update", "compute_epsilon", "discrete_gaussian", "epsilon_of_history",
    "gaussian", "make_private_compatible", "noise_central", "noise_site_share", "plan_noise_multiplier",
    "resolve_noise_multiplier", "sample_rate_for", "sampling_rate", "secure_generator", "secure_seed",
    "site_discrete_noise_share", "site_noise_std", "steps_for", "train_dp_sgd", "update_norm",
    "user_level_caveats", "user_level_epsilon", "warn_if_user_level_dp_weak",
}


def test_all_is_pinned() -> None:
    assert set(fedinfra.privacy.__all__) == EXPECTED


def test_importing_privacy_does_not_load_torch_or_opacus() -> None:
    code = "import sys, fedinfra.privacy; print(any(m.split('.')[0] in {'torch', 'opacus'} for m in sys.modules))"

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "False"
