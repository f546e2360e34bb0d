"""Federated standardisation (issue 14, item 6): no statistics pooled over sites' raw data.

A site's standardised features must depend only on its own rows and on constants that no
site's training data enters: the job's ``feature_mean``/``feature_std`` or the held-out
test split's moments. The old code standardised with the mean and std of the whole
training part, i.e. of every site's rows pooled, so changing site B's rows moved site A's
features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedinfra.config import JobSpec, load_job
from fedinfra.data import dirichlet_partition
from fedinfra.data.bundled import _raw, split_indices, split_standardised
from fedinfra.errors import ConfigError, DataError
from fedinfra.site.data import load_split

SEED, TEST = 3, 0.2


def _site_rows(y: np.ndarray, site: int, sites: int = 4) -> np.ndarray:
    """Raw row indices of one simulated site's training share (as ``site.data`` deals them)."""
    tr, _ = split_indices(y, test_fraction=TEST, seed=SEED)
    return tr[dirichlet_partition(y[tr], num_sites=sites, alpha=0.5, seed=SEED)[site]]


@pytest.mark.parametrize("constants", [None, "job"])
def test_site_a_features_do_not_depend_on_site_b_rows(constants: str | None) -> None:
    x, y, names = _raw("breast_cancer")
    mean = std = None
    if constants == "job":
        mean, std = [1.0] * x.shape[1], [2.0] * x.shape[1]
    tr, _ = split_indices(y, test_fraction=TEST, seed=SEED)
    pos_a = dirichlet_partition(y[tr], num_sites=4, alpha=0.5, seed=SEED)[0]
    rows_b = _site_rows(y, 1)
    before = split_standardised(x, y, names, test_fraction=TEST, seed=SEED, mean=mean, std=std)
    x2 = x.copy()
    x2[rows_b] = x2[rows_b] * 7.0 + 1000.0  # site B's data changes beyond recognition
    after = split_standardised(x2, y, names, test_fraction=TEST, seed=SEED, mean=mean, std=std)
    assert not np.array_equal(before.x_train, after.x_train)  # B's own rows did change
    np.testing.assert_array_equal(before.x_train[pos_a], after.x_train[pos_a])
    np.testing.assert_array_equal(before.x_test, after.x_test)


def test_job_constants_applied_exactly_by_the_site_path() -> None:
    x, y, _ = _raw("wine")
    mean = [float(v) for v in np.linspace(-3.0, 5.0, 13)]
    std = [float(v) for v in np.linspace(0.5, 4.0, 13)]
    job = JobSpec.model_validate(
        {"data": {"dataset": "wine", "standardize": "job", "feature_mean": mean, "feature_std": std}, "seed": SEED}
    )
    split = load_split(job)
    tr, te = split_indices(y, test_fraction=job.data.test_fraction, seed=SEED)
    want = ((x[tr] - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
    np.testing.assert_array_equal(split.x_train, want)
    np.testing.assert_array_equal(split.x_test, ((x[te] - np.asarray(mean)) / np.asarray(std)).astype(np.float32))


def test_default_uses_the_holdout_moments_not_the_pooled_training_ones() -> None:
    x, y, names = _raw("breast_cancer")
    split = split_standardised(x, y, names, test_fraction=TEST, seed=SEED)
    tr, te = split_indices(y, test_fraction=TEST, seed=SEED)
    np.testing.assert_allclose(split.x_test.mean(axis=0), 0.0, atol=1e-5)
    # The pooled training moments are no longer what the transform removes.
    assert np.abs(split.x_train.mean(axis=0)).max() > 1e-3
    np.testing.assert_allclose(split.x_train, ((x[tr] - x[te].mean(0)) / x[te].std(0)).astype(np.float32), rtol=1e-6)


def _job(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "job.toml"
    p.write_text(f'[data]\ndataset = "wine"\n{body}\n', encoding="utf-8")
    return p


OK_MEAN, OK_STD = "[" + ", ".join(["0.0"] * 13) + "]", "[" + ", ".join(["1.0"] * 13) + "]"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (f'standardize = "job"\nfeature_std = {OK_STD}', "data.feature_mean"),
        (f'standardize = "job"\nfeature_mean = [0.0, 1.0]\nfeature_std = {OK_STD}', "data.feature_mean"),
        (f'standardize = "job"\nfeature_mean = {OK_MEAN}\nfeature_std = [1.0]', "data.feature_std"),
        (f'standardize = "job"\nfeature_mean = {OK_MEAN[:-1]}, nan]\nfeature_std = {OK_STD}', "data.feature_mean"),
        (f'standardize = "job"\nfeature_mean = {OK_MEAN}\nfeature_std = {OK_STD[:-1]}, inf]', "data.feature_std"),
        (f'standardize = "job"\nfeature_mean = {OK_MEAN}\nfeature_std = {OK_STD[:-1]}, 0.0]', "data.feature_std"),
        (f'standardize = "job"\nfeature_mean = {OK_MEAN}\nfeature_std = {OK_STD[:-1]}, -2.0]', "data.feature_std"),
        (f"feature_mean = {OK_MEAN}\nfeature_std = {OK_STD}", "data.standardize"),
    ],
)
def test_bad_constants_refused_with_one_line_naming_the_field(tmp_path: Path, body: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_job(_job(tmp_path, body))
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert field in msg, msg


def test_good_constants_load(tmp_path: Path) -> None:
    job = load_job(_job(tmp_path, f'standardize = "job"\nfeature_mean = {OK_MEAN}\nfeature_std = {OK_STD}'))
    assert job.data.feature_std == [1.0] * 13


def test_data_layer_refuses_constants_of_the_wrong_length() -> None:
    x, y, names = _raw("wine")
    with pytest.raises(DataError, match="feature_mean"):
        split_standardised(x, y, names, test_fraction=TEST, seed=SEED, mean=[0.0] * 12, std=[1.0] * 12)


def test_a_deployed_site_scales_its_raw_rows_as_the_coordinator_scales_its_evaluation_data(tmp_path: Path) -> None:
    """The hospital example's raw CSV, read by a deployed site under ``server/job.toml``.

    Before, deployed sites trained on raw features while the coordinator evaluated on the
    standardised bundled split: the live guide run reached accuracy 0.626. Now the site
    applies the job's public constants, so a model fitted on its rows scores on the
    coordinator's evaluation split as it would on its own.
    """
    import shutil
    import subprocess
    import sys

    from sklearn.linear_model import LogisticRegression

    from fedinfra.site.data import resolve_site_data

    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(repo / "clients/hospital/prepare_data.py"), "--sites", "3",
                    "--out", str(tmp_path / "data")], check=True, capture_output=True)
    shutil.copy(repo / "clients/hospital/site.toml", tmp_path / "site.toml")
    job = load_job(repo / "server/job.toml")
    site = resolve_site_data({"site-manifest": str(tmp_path / "site.toml")}, job)
    split = load_split(job)
    assert np.allclose(split.mean, [float(v) for v in job.data.feature_mean or []])  # the job's constants
    assert float(np.abs(site.x.mean(axis=0)).max()) < 3.0  # raw: column 4 (area) averages ~650
    model = LogisticRegression(max_iter=2000).fit(site.x, site.y)
    assert model.score(split.x_test, split.y_test) > 0.85


def test_a_deployed_site_whose_columns_do_not_match_the_job_data_set_is_told_which(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    from fedinfra.site.data import resolve_site_data

    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(repo / "clients/hospital/prepare_data.py"), "--sites", "3",
                    "--out", str(tmp_path / "data")], check=True, capture_output=True)
    manifest = (repo / "clients/hospital/site.toml").read_text()
    two = re.sub(r"feature_columns = \[.*?\]", 'feature_columns = ["mean_radius", "mean_texture"]', manifest,
                 flags=re.S)
    assert two != manifest
    (tmp_path / "site.toml").write_text(two)
    with pytest.raises(DataError, match=r"2 feature columns.*'breast_cancer'.*30"):
        resolve_site_data({"site-manifest": str(tmp_path / "site.toml")}, JobSpec())
