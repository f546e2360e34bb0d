"""Where a site's training data comes from.

In simulation a site is one partition of a bundled data set, chosen by the Flower node
config (``partition-id``, ``num-partitions``); deployed, it reads the table its manifest
declares (``site-manifest`` in the node config). Loaded data is cached per process because
Flower may call a ClientApp many times in one worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedinfra.config import JobSpec, SiteManifest, load_site
from fedinfra.config.job import simulated_site_name
from fedinfra.data import SplitData, dirichlet_partition, fingerprint_arrays, load_bundled
from fedinfra.data.tables import read_csv_table
from fedinfra.errors import ConfigError


@dataclass(frozen=True)
class SiteData:
    """A site's training data and identity."""

    name: str
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    fingerprint: str
    manifest: SiteManifest | None
    feature_names: tuple[str, ...] = ()
    test_x: npt.NDArray[np.float32] | None = None
    test_y: npt.NDArray[np.int64] | None = None
    source: Path | None = None


def load_split(job: JobSpec) -> SplitData:
    """The job's bundled split (features standardised on the training part)."""
    return _load_split(job.data.dataset, job.data.test_fraction, job.seed)


@lru_cache(maxsize=4)
def _load_split(dataset: str, test_fraction: float, seed: int) -> SplitData:
    if dataset == "caravan":
        import importlib

        caravan = importlib.import_module("fedinfra.data.caravan")
        split: SplitData = caravan.load_caravan(test_fraction=test_fraction, seed=seed)
        return split
    return load_bundled(dataset, test_fraction=test_fraction, seed=seed)


@lru_cache(maxsize=64)
def _simulated(job_json: str, partition_id: int, num_partitions: int) -> SiteData:
    job = JobSpec.model_validate_json(job_json)
    split = load_split(job)
    parts = dirichlet_partition(split.y_train, num_sites=num_partitions, alpha=job.data.alpha, seed=job.seed)
    idx = parts[partition_id]
    x, y = split.x_train[idx], split.y_train[idx]
    # The held-out test set is dealt out evenly: federated evaluation over all sites then
    # equals evaluation on the whole test set.
    return SiteData(
        name=simulated_site_name(job.scenario, partition_id, job.sites.count, job.sites.devices),
        x=x,
        y=y,
        fingerprint=fingerprint_arrays(x, y),
        manifest=None,
        feature_names=tuple(split.feature_names),
        test_x=split.x_test[partition_id::num_partitions],
        test_y=split.y_test[partition_id::num_partitions],
    )


@lru_cache(maxsize=8)
def _deployed(manifest_path: str) -> SiteData:
    manifest = load_site(manifest_path)
    if manifest.dataset is None:
        raise ConfigError(f"{manifest_path}: field 'dataset' is required for a deployed site")
    decl = manifest.dataset
    data_path = Path(decl.path)
    if not data_path.is_absolute():
        data_path = Path(manifest_path).parent / data_path
    x, y, names = read_csv_table(data_path, label_column=decl.label_column, feature_columns=list(decl.feature_columns))
    # A deployed site keeps the last 20% of its rows (seeded shuffle) for federated evaluation.
    order = np.random.default_rng(0).permutation(len(y))
    cut = max(1, int(len(y) * 0.8))
    tr, te = np.sort(order[:cut]), np.sort(order[cut:])
    return SiteData(
        manifest.name,
        x[tr],
        y[tr],
        fingerprint_arrays(x[tr], y[tr]),
        manifest,
        feature_names=tuple(names),
        test_x=x[te],
        test_y=y[te],
        source=data_path,
    )


def resolve_site_data(node_config: dict[str, object], job: JobSpec) -> SiteData:
    """Load the data of the site described by ``node_config`` for ``job``."""
    if "site-manifest" in node_config:
        return _deployed(str(node_config["site-manifest"]))
    try:
        pid = int(str(node_config["partition-id"]))
        num = int(str(node_config["num-partitions"]))
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            "node config needs 'site-manifest' (deployment) or 'partition-id' and 'num-partitions' (simulation)"
        ) from exc
    return _simulated(job.model_dump_json(), pid, num)
