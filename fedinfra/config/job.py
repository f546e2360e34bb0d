"""The federation job (:class:`JobSpec`), loaded from ``job.toml``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from fedinfra.config._load import StrictModel, load_model
from fedinfra.config.aggregation import ROBUST_RULES, AggregationSpec
from fedinfra.config.privacy import PrivacySpec
from fedinfra.config.secagg import SecureAggSpec
from fedinfra.config.site import DatasetDecl

if TYPE_CHECKING:
    from packaging.requirements import Requirement

#: Secure-aggregation modes under which the coordinator only ever sees a sum (or nothing), so
#: user-level DP may split its noise across sites (see :mod:`fedinfra.privacy.distributed`).
DISTRIBUTED_NOISE_MODES = frozenset({"bfv", "ckks", "he", "secagg", "secagg+he"})
DISTRIBUTED_NOISE_RULE = (
    "user-level DP splits its noise across sites, so secure_aggregation.mode must be he, bfv, ckks, "
    "secagg or secagg+he (the coordinator may only see a sum); set secure_aggregation.mode"
)

Scenario = Literal["hospital", "bank", "edge"]
Dataset = Literal["breast_cancer", "digits", "wine", "caravan"]
#: Feature count of each bundled data set (checked again against the loaded arrays).
BUNDLED_FEATURES: dict[str, int] = {"breast_cancer": 30, "digits": 64, "wine": 13, "caravan": 85}


class ModelSpec(StrictModel):
    """The model trained: logistic regression or a small MLP."""

    kind: Literal["logreg", "mlp"] = "logreg"
    hidden: list[int] = Field(default_factory=lambda: [32], description="MLP hidden widths")


class DataSpec(StrictModel):
    """Which data and how it is split among sites (simulation) or read (deployment).

    ``source`` declares a user's own data set, in the same form as a site manifest's
    ``[dataset]``, for ``fedinfra simulate``: it is screened like a site's data, a
    ``test_fraction`` is held out and the rest is split among the simulated sites,
    ``partition = "iid"`` (uniformly at random) or ``"dirichlet"`` (label skew ``alpha``,
    Hsu et al. 2019). Without it, ``dataset`` names a bundled set.

    Standardisation of a bundled set (issue 14, item 6: never statistics pooled over
    sites' raw data) uses constants every site applies unchanged: ``standardize =
    "holdout"`` (default) takes the feature means and standard deviations of the
    held-out test split, which the job draws (seeded) before any site's share exists
    and which belongs to the coordinator's evaluation, never to a site's training data;
    ``standardize = "job"`` takes ``feature_mean`` / ``feature_std`` from the job
    (one value per feature, finite, std > 0). Either way a site's transform does not
    depend on any site's training rows, so it releases nothing about them.
    """

    dataset: Dataset = "breast_cancer"
    source: DatasetDecl | None = None
    partition: Literal["dirichlet", "iid"] = "dirichlet"
    alpha: float = Field(default=0.5, gt=0, description="Dirichlet concentration of label skew")
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    standardize: Literal["holdout", "job"] = "holdout"
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None

    @model_validator(mode="after")
    def _constants(self) -> DataSpec:
        given = self.feature_mean is not None or self.feature_std is not None
        if self.standardize != "job":
            if given:
                raise ValueError("data.feature_mean/feature_std are used only with data.standardize = 'job'; set it")
            return self
        if self.source is not None:
            raise ValueError(
                "data.standardize = 'job' applies to bundled data sets; with data.source standardise in your task"
            )
        want = BUNDLED_FEATURES[self.dataset]
        for field, values in (("feature_mean", self.feature_mean), ("feature_std", self.feature_std)):
            if values is None:
                raise ValueError(f"data.{field} is required with data.standardize = 'job' ({want} values)")
            if len(values) != want:
                raise ValueError(f"data.{field} has {len(values)} values; {self.dataset} has {want} features")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"data.{field} must be finite numbers (no nan/inf)")
        if not all(v > 0 for v in self.feature_std or ()):
            raise ValueError("data.feature_std values must all be > 0 (a constant feature: use 1.0)")
        return self


def parse_requirement(text: str) -> Requirement:
    """A PEP 508 requirement naming a package by name and version only (no URL, no path), or ValueError."""
    from packaging.requirements import InvalidRequirement, Requirement

    if len(text) > 200:
        raise ValueError("a requirement is at most 200 characters")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"not a PEP 508 requirement ({exc}); write it as 'name>=version'") from None
    if req.url is not None:
        raise ValueError("a direct URL reference is refused: name a package and a version range")
    return req


def _requirement(text: str) -> str:
    return str(parse_requirement(text))


class TaskSpec(StrictModel):
    """The task a job trains, named by import path (``module:Class``), and its settings.

    Without a ``[task]`` table the job's ``model`` and ``data`` tables name a built-in
    task (:mod:`fedinfra.task.builtin`); both paths run the same code.
    """

    ref: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$",
        max_length=256,
        description="import path of a fedinfra.Task subclass, 'package.module:Class'",
    )
    config: dict[str, Any] = Field(default_factory=dict, description="passed to the task's constructor")
    requires: list[Annotated[str, AfterValidator(_requirement)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "third-party packages the task imports, as PEP 508 requirements ('pydicom>=2.4'); "
            "written into the signed app, checked at each site before the task is imported"
        ),
    )


class SitesSpec(StrictModel):
    """How many sites take part and how many must reply for a round to count."""

    count: int = Field(default=4, ge=1, le=100_000)
    fraction: float = Field(default=1.0, gt=0, le=1, description="share of sites sampled per round")
    min_sites: int = Field(default=1, ge=1, description="fewest replies a round accepts")
    devices: int = Field(default=0, ge=0, description="how many of the sites are edge devices (mixed federation)")
    cosign_quorum: int | None = Field(
        default=None, ge=1, description="sites that must cosign the close checkpoint (default: all of the last round)"
    )

    @model_validator(mode="after")
    def _min_le_count(self) -> SitesSpec:
        if self.min_sites > self.count:
            raise ValueError(f"min_sites ({self.min_sites}) exceeds count ({self.count})")
        if self.devices > self.count:
            raise ValueError(f"devices ({self.devices}) exceeds count ({self.count})")
        return self


class TrainingSpec(StrictModel):
    """Local training at each site."""

    local_epochs: int = Field(default=2, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1, le=100_000)
    lr: float = Field(default=0.1, gt=0, le=100)
    server_lr: float = Field(default=1.0, gt=0, le=100)
    server_momentum: float = Field(default=0.0, ge=0, lt=1)


class CompressionSpec(StrictModel):
    """Update compression for constrained links (edge devices): clip, quantize, sparsify.

    Clip to ``clip`` (L2), optional top-k with error feedback (Stich et al. 2018), then
    unbiased stochastic quantization to ``bits`` (Alistarh et al. 2017, QSGD).
    """

    bits: int = Field(default=8, ge=2, le=16)
    clip: float = Field(default=1.0, gt=0)
    topk_fraction: float | None = Field(default=None, gt=0, le=1)


class TrackingSpec(StrictModel):
    """Optional experiment tracking of a run's figures (``[tracking]``): MLflow and/or TensorBoard.

    Only hyperparameters, per-round figures, privacy figures and the report go out - the
    same content as ``metrics.json`` and the report, never data. Nothing is sent unless a
    destination is set here (nothing phones home).
    """

    mlflow_uri: str | None = Field(
        default=None, description="file:/path (a local MLflow file store) or http(s)://host:port (a server)"
    )
    experiment: str = Field(default="fedinfra", min_length=1, max_length=256)
    tensorboard_dir: str | None = Field(default=None, min_length=1, description="TensorBoard log directory")

    @field_validator("mlflow_uri")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file:", "http://", "https://")):
            raise ValueError("must start with file:, http:// or https://")
        return value


def simulated_site_name(scenario: str, index: int, count: int, devices: int) -> str:
    """Name of simulated site ``index``: the last ``devices`` of ``count`` are edge devices."""
    if scenario != "edge" and index >= count - devices:
        return f"device-{index}"
    return f"{scenario}-{index}"


class JobSpec(StrictModel):
    """One federated training job."""

    name: str = Field(default="fedinfra-job", min_length=1, max_length=128)
    scenario: Scenario = "hospital"
    purpose: str = Field(default="medical-research", min_length=1)
    rounds: int = Field(default=5, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0)
    model: ModelSpec = Field(default_factory=ModelSpec)
    task: TaskSpec | None = None
    data: DataSpec = Field(default_factory=DataSpec)
    sites: SitesSpec = Field(default_factory=SitesSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    secure_aggregation: SecureAggSpec = Field(default_factory=SecureAggSpec)
    compression: CompressionSpec | None = None
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)
    policy_packs: list[str] = Field(default_factory=list)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    timeout_s: float = Field(default=600.0, gt=0, description="per-round reply timeout")

    @model_validator(mode="after")
    def _compatible(self) -> JobSpec:
        if self.data.source is not None and self.task is None:
            raise ValueError("data.source (your own data set) needs a [task] naming the model to train on it")
        comp, sec = self.compression, self.secure_aggregation
        if self.aggregation.rule in ROBUST_RULES and sec.mode != "none":
            raise ValueError(
                f"aggregation.rule = {self.aggregation.rule!r} needs visible updates; under secure aggregation the "
                "coordinator sees only the sum (sites clip before encrypting instead): use rule = 'fedavg'"
            )
        if self.privacy.mechanism == "user-dp" and sec.mode not in DISTRIBUTED_NOISE_MODES:
            raise ValueError(f"{DISTRIBUTED_NOISE_RULE} (got {sec.mode!r})")
        if self.privacy.mechanism == "user-dp" and sec.example_cap != 1:
            raise ValueError(
                f"secure_aggregation.example_cap = {sec.example_cap} must be 1 with user-level DP: its noise is "
                "calibrated to one clipped update per site (McMahan et al. 2018), so sites are not weighted by examples"
            )
        if sec.masked:
            from fedinfra.config.secagg_plan import contributor_floor, plan

            sampled = max(self.sites.min_sites, round(self.sites.fraction * self.sites.count))
            user_dp = self.privacy.mechanism == "user-dp"
            floor = contributor_floor(sec.min_contributors, min_sites=self.sites.min_sites, distributed_noise=user_dp)
            try:
                plan(
                    sampled,
                    max_dropouts=sec.max_dropouts,
                    max_colluders=sec.max_colluders,
                    min_contributors=floor,
                )
            except ValueError as exc:
                hint = " (under user-level DP the floor is max(min_contributors, sites.min_sites))" if user_dp else ""
                raise ValueError(f"{exc}{hint}") from None
            if sampled > sec.max_sites:
                raise ValueError(
                    f"secure_aggregation.max_sites={sec.max_sites} is below the {sampled} sites sampled per round"
                )
        if comp is None or sec.mode == "none":
            return self
        if sec.mode != "bfv":
            raise ValueError(
                "compression composes with secure_aggregation.mode = 'bfv' only (CKKS encrypts floats; "
                "secagg already sends quant_bits-wide integers)"
            )
        if comp.topk_fraction is not None:
            raise ValueError(
                "compression.topk_fraction does not compose with secure aggregation: sites keep different "
                "coordinates, so the ciphertexts are dense anyway; drop topk_fraction or secure_aggregation"
            )
        if comp.bits != sec.quant_bits:
            raise ValueError(
                f"compression.bits = {comp.bits} must equal secure_aggregation.quant_bits = {sec.quant_bits}: "
                "under encryption the BFV codec does the quantization"
            )
        if comp.clip > sec.clip:
            raise ValueError(
                f"compression.clip = {comp.clip:g} must be <= secure_aggregation.clip = {sec.clip:g}, "
                "or the codec would clip the update a second time"
            )
        return self


def load_job(path: Path | str) -> JobSpec:
    """Load and validate a ``job.toml``."""
    return load_model(JobSpec, path)
