"""Configuration models (layer L1): pydantic v2, loaded from TOML.

Every model forbids unknown keys; every error names the file, the field and what is
allowed, as one line (:class:`fedinfra.errors.ConfigError`).
"""

from fedinfra.config._load import describe_validation_error, load_model, parse_model, read_toml
from fedinfra.config.device import DeviceProfile
from fedinfra.config.job import DataSpec, JobSpec, ModelSpec, SitesSpec, TaskSpec, TrainingSpec, load_job
from fedinfra.config.privacy import PrivacySpec
from fedinfra.config.secagg import SecureAggSpec
from fedinfra.config.site import BudgetCaps, DatasetDecl, SiteManifest, load_site

__all__ = [
    "BudgetCaps",
    "DataSpec",
    "DatasetDecl",
    "DeviceProfile",
    "JobSpec",
    "ModelSpec",
    "PrivacySpec",
    "SecureAggSpec",
    "SiteManifest",
    "SitesSpec",
    "TaskSpec",
    "TrainingSpec",
    "describe_validation_error",
    "load_job",
    "load_model",
    "load_site",
    "parse_model",
    "read_toml",
]
