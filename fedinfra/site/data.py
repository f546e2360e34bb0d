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
from typing import Any

import numpy as np
import numpy.typing as npt

from fedinfra.config import JobSpec, SiteManifest, load_site
from fedinfra.config.job import simulated_site_name
from fedinfra.data import SplitData, dirichlet_partition, fingerprint_arrays, load_bundled
from fedinfra.data.loaders import read_declared, resolve
from fedinfra.errors import ConfigError, DataError
from fedinfra.task.api import DataSource, Table


@dataclass(frozen=True)
class SiteData:
    """A site's training data and identity."""

    name: str
    x: npt.NDArray[np.float32]
    y: npt.NDArray[Any]
    fingerprint: str
    manifest: SiteManifest | None
    feature_names: tuple[str, ...] = ()
    test_x: npt.NDArray[np.float32] | None = None
    test_y: npt.NDArray[Any] | None = None
    source: Path | None = None


def load_split(job: JobSpec) -> SplitData:
    """The job's bundled split, standardised with constants no site's training rows enter.

    ``data.standardize = "job"``: the job's ``feature_mean``/``feature_std``; otherwise the
    held-out test split's moments (see :mod:`fedinfra.data.bundled`).
    """
    d = job.data
    mean = tuple(d.feature_mean) if d.standardize == "job" and d.feature_mean is not None else None
    std = tuple(d.feature_std) if d.standardize == "job" and d.feature_std is not None else None
    return _load_split(d.dataset, d.test_fraction, job.seed, mean, std)


@lru_cache(maxsize=4)
def _load_split(
    dataset: str,
    test_fraction: float,
    seed: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> SplitData:
    if dataset == "caravan":
        import importlib

        caravan = importlib.import_module("fedinfra.data.caravan")
        split: SplitData = caravan.load_caravan(test_fraction=test_fraction, seed=seed, mean=mean, std=std)
        return split
    return load_bundled(dataset, test_fraction=test_fraction, seed=seed, mean=mean, std=std)


def _from_task(
    job: JobSpec, name: str, source: DataSource, manifest: SiteManifest | None, path: Path | None = None
) -> SiteData:
    """Hand the site's (already admitted) data to the job's task; keep what it returns as arrays."""
    from fedinfra.site.tasks import job_task
    from fedinfra.task.training import as_arrays

    task = job_task(job)
    data = task.load_data(source)
    regression = task.kind == "regression"
    x, y = as_arrays(data.train, regression=regression)
    test_x, test_y = as_arrays(data.eval, regression=regression) if data.eval is not None else (None, None)
    return SiteData(
        name=name,
        x=x,
        y=y,
        fingerprint=fingerprint_arrays(x, y),
        manifest=manifest,
        feature_names=data.feature_names,
        test_x=test_x,
        test_y=test_y,
        source=path,
    )


@lru_cache(maxsize=64)
def _simulated(job_json: str, partition_id: int, num_partitions: int) -> SiteData:
    job = JobSpec.model_validate_json(job_json)
    name = simulated_site_name(job.scenario, partition_id, job.sites.count, job.sites.devices)
    if job.data.source is not None:
        return _from_task(job, name, _user_partition(job, partition_id, num_partitions, name), None)
    split = load_split(job)
    parts = dirichlet_partition(split.y_train, num_sites=num_partitions, alpha=job.data.alpha, seed=job.seed)
    idx = parts[partition_id]
    names = tuple(split.feature_names)
    # The held-out test set is dealt out evenly: federated evaluation over all sites then
    # equals evaluation on the whole test set.
    source = DataSource(
        read=lambda: Table(split.x_train[idx], split.y_train[idx], names),
        read_eval=lambda: Table(
            split.x_test[partition_id::num_partitions], split.y_test[partition_id::num_partitions], names
        ),
    )
    return _from_task(job, name, source, None)


@lru_cache(maxsize=2)
def _user_split(job_json: str, num_partitions: int) -> tuple[Table, Table, list[npt.NDArray[np.int64]]]:
    """Read the job's own data set once, hold out ``test_fraction``, split the rest among sites."""
    job = JobSpec.model_validate_json(job_json)
    decl = job.data.source
    assert decl is not None
    x, y, names = read_declared(decl, Path(decl.path))
    rng = np.random.default_rng(job.seed)
    order = rng.permutation(len(y))
    cut = max(1, round(len(y) * job.data.test_fraction))
    te, tr = np.sort(order[:cut]), np.sort(order[cut:])
    train, test = Table(x[tr], y[tr], names), Table(x[te], y[te], names)
    if job.data.partition == "iid":
        if len(tr) < num_partitions:
            raise DataError(f"{decl.path}: {len(tr)} training examples cannot be split among {num_partitions} sites")
        parts = [np.sort(p) for p in np.array_split(rng.permutation(len(tr)), num_partitions)]
    else:
        if y.dtype.kind == "f" and not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"{decl.path}: labels are not classes; use data.partition = 'iid' for a regression target")
        parts = dirichlet_partition(train.y, num_sites=num_partitions, alpha=job.data.alpha, seed=job.seed)
    return train, test, parts


def _user_partition(job: JobSpec, partition_id: int, num_partitions: int, name: str) -> DataSource:
    """A simulated site's share of the job's own data set, screened like a deployed site's."""
    from fedinfra.site.screen import screen_declared

    decl = job.data.source
    assert decl is not None
    screen_declared(decl, Path(decl.path), site=name)
    train, test, parts = _user_split(job.model_dump_json(), num_partitions)
    idx = parts[partition_id]
    return DataSource(
        read=lambda: Table(train.x[idx], train.y[idx], train.names),
        read_eval=lambda: Table(
            test.x[partition_id::num_partitions], test.y[partition_id::num_partitions], test.names
        ),
        declaration=decl,
        path=Path(decl.path),
    )


@lru_cache(maxsize=8)
def _deployed(manifest_path: str, job_json: str) -> SiteData:
    manifest = load_site(manifest_path)
    if manifest.dataset is None:
        raise ConfigError(f"{manifest_path}: field 'dataset' is required for a deployed site")
    decl = manifest.dataset
    data_path = resolve(decl, Path(manifest_path).parent)
    job = JobSpec.model_validate_json(job_json)
    scale = _deployed_scale(job)

    def read() -> Table:
        x, y, names = read_declared(decl, data_path)
        if scale is not None:
            mean, std = scale
            if x.shape[1] != mean.size:
                raise DataError(
                    f"{data_path}: {x.shape[1]} feature columns, but the job's data set {job.data.dataset!r} "
                    f"(its evaluation data and standardisation) has {mean.size}; declare matching features "
                    f"in {manifest_path} [dataset]"
                )
            x = ((x - mean) / std).astype(np.float32)
        return Table(x, y, names)

    # Without an evaluation part of its own, the task keeps the last 20% of the rows
    # (seeded shuffle) for federated evaluation.
    source = DataSource(read=read, declaration=decl, path=data_path)
    return _from_task(job, manifest.name, source, manifest, data_path)


def _deployed_scale(job: JobSpec) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """The standardisation a deployed site applies to its own rows under a built-in task.

    The coordinator evaluates on the job's bundled data set standardised with public
    constants (the job's ``feature_mean``/``feature_std`` or the held-out split's moments,
    :func:`load_split`); a site that trained on raw features would learn another scale
    (the hospital example reached accuracy 0.626 that way). The constants come from the
    job, never from any site's rows, so applying them releases nothing (issue 14, item 6).
    A job with its own ``[task]`` standardises in its task.
    """
    if job.task is not None:
        return None
    split = load_split(job)
    if not split.mean:
        return None
    return np.asarray(split.mean, dtype=np.float64), np.asarray(split.std, dtype=np.float64)


def resolve_site_data(node_config: dict[str, object], job: JobSpec) -> SiteData:
    """Load the data of the site described by ``node_config`` for ``job``."""
    if "site-manifest" in node_config:
        return _deployed(str(node_config["site-manifest"]), job.model_dump_json())
    try:
        pid = int(str(node_config["partition-id"]))
        num = int(str(node_config["num-partitions"]))
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            "node config needs 'site-manifest' (deployment) or 'partition-id' and 'num-partitions' (simulation)"
        ) from exc
    return _simulated(job.model_dump_json(), pid, num)
