"""Everything a site needs to handle one message: data, private home, keys, policy."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from fedinfra.config import JobSpec, SiteManifest
from fedinfra.errors import ConfigError
from fedinfra.site.data import SiteData, resolve_site_data
from fedinfra.site.home import SiteHome, resolve_home
from fedinfra.site.simulated import simulated_manifest

if TYPE_CHECKING:
    from fedinfra.crypto import SiteKeys
    from fedinfra.policy import Evaluation
    from fedinfra.policy.scan import ScanSummary


@dataclass(frozen=True)
class SiteContext:
    """One site, ready to act on a job."""

    job: JobSpec
    data: SiteData
    home: SiteHome
    manifest: SiteManifest

    @property
    def name(self) -> str:
        """The site's id."""
        return self.data.name

    @property
    def fingerprint(self) -> str:
        """The dataset fingerprint that leaves the site: an HMAC under the site's own key."""
        from fedinfra.data.fingerprint import keyed_fingerprint

        return keyed_fingerprint(self.data.fingerprint, self.home.fingerprint_key())

    def receipts_dir(self, run_id: str) -> Path:
        """Where the receipts and cosigned checkpoints of the coordinator's log are kept.

        One directory per *log* (the origin named by the kit's log key), not per run: a
        deployed coordinator keeps one log for the consortium, so the site's consistency
        chain - and the split-view check it enables - spans all its runs. A demo's log is
        per run and so is its origin. Without a log key, one directory per run.
        """
        from fedinfra.config.names import check_slug

        run = check_slug(run_id, "run_id from the coordinator")
        key = self.audit_key()
        if key is None:
            return self.home.receipts / run
        origin = re.sub(r"[^A-Za-z0-9._-]", "_", key.split("+", 1)[0])
        return self.home.receipts / (origin if origin.strip(".") else "_")

    def he_keys(self) -> SiteKeys:
        """The site's HE kit (shared secret key); refuses when there is none."""
        if self.home.kit is None:
            raise ConfigError(f"site {self.name}: secure aggregation is on but no kit was given (node config 'kit')")
        return _site_keys(str(self.home.kit))

    def audit_key(self) -> str | None:
        """The coordinator's audit verifier key (``[audit] vkey`` in the kit), if any."""
        if self.home.kit is None:
            return None
        return _audit_vkey(str(self.home.kit))

    @property
    def scan(self) -> ScanSummary:
        """The PHI/PII scan summary of the site's training table."""
        return _scans[_scan_key(self.data)]

    def preflight(self, *, tls: bool | None) -> Evaluation:
        """The site's own policy check of the job (cached per job)."""
        return _preflight(self.manifest.model_dump_json(), self.job.model_dump_json(), _scan_key(self.data), tls)


@lru_cache(maxsize=8)
def _site_keys(kit: str) -> SiteKeys:
    from fedinfra.crypto import load_site_kit

    return load_site_kit(kit)


@lru_cache(maxsize=8)
def _audit_vkey(kit: str) -> str | None:
    from fedinfra.config import read_toml

    path = Path(kit) / "kit.toml"
    if not path.exists():
        return None
    vkey = read_toml(path).get("audit", {}).get("vkey")
    return str(vkey) if vkey else None


@lru_cache(maxsize=32)
def _preflight(manifest_json: str, job_json: str, site: str, tls: bool | None) -> Evaluation:
    from fedinfra.policy import preflight

    manifest = SiteManifest.model_validate_json(manifest_json)
    job = JobSpec.model_validate_json(job_json)
    return preflight(manifest, job, scan=_scans[site], tls=tls)


#: Scan summaries per site *and data*: one process may serve several jobs' data.
_scans: dict[str, ScanSummary] = {}


def _scan_key(data: SiteData) -> str:
    return f"{data.name}:{data.fingerprint}"


def _scan(data: SiteData) -> ScanSummary:
    """Scan the site's training table for identifiers (HIPAA 164.514(b)(2) Safe Harbor).

    A deployed site scans the file its manifest declares; a simulated site scans its
    partition's feature table (first 1,000 rows).
    """
    from fedinfra.policy import scan_table
    from fedinfra.site.screen import screen_site_data

    if data.manifest is not None and data.manifest.dataset is not None and data.source is not None:
        return screen_site_data(data.manifest, data.source)
    if data.x.ndim != 2:  # simulated images: no columns to scan; the labels are
        return scan_table({"label": [str(v) for v in data.y[:1000]]}, source=f"{data.name}:labels")
    rows = min(len(data.y), 1000)
    table: dict[str, list[str | None]] = {
        name: [f"{float(v):.6g}" for v in data.x[:rows, i]] for i, name in enumerate(data.feature_names)
    }
    table["label"] = [f"{float(v):.6g}" for v in data.y[:rows]]
    return scan_table(table, source=f"{data.name}:training-table")


@lru_cache(maxsize=16)
def _deployed_preflight(manifest_path: str, job_json: str, tls: bool) -> None:
    """Scan the declared table and run the site's own gates *before* loading it for training.

    A table with an identifier among its training columns (HIPAA 164.514(b)(2), GDPR
    Art. 5(1)(c)) is refused here, so it is never parsed into features at all.
    """
    from fedinfra.config import load_site
    from fedinfra.errors import PolicyViolation
    from fedinfra.policy import preflight
    from fedinfra.site.screen import screen_site_data

    manifest = load_site(manifest_path)
    if manifest.dataset is None:
        return
    path = Path(manifest.dataset.path)
    if not path.is_absolute():
        path = Path(manifest_path).parent / path
    job = JobSpec.model_validate_json(job_json)
    evaluation = preflight(manifest, job, scan=screen_site_data(manifest, path), tls=tls or None)
    if evaluation.blocking:
        raise PolicyViolation(f"site {manifest.name} refuses the job: {evaluation.reason()}")


def site_context(node_config: dict[str, object], job: JobSpec) -> SiteContext:
    """Build the context of the site this process serves."""
    if "site-manifest" in node_config:
        from fedinfra.task.packaging import confine_task, installed_app_dir

        confine_task(job, installed_app_dir())  # the task comes from the signed app, or not at all
        tls = str(node_config.get("tls", "")).lower() == "true"
        _deployed_preflight(str(node_config["site-manifest"]), job.model_dump_json(), tls)
    data = resolve_site_data(node_config, job)
    home = resolve_home(node_config, data.name)
    manifest = data.manifest or simulated_manifest(job, data.name)
    if _scan_key(data) not in _scans:
        _scans[_scan_key(data)] = _scan(data)
    return SiteContext(job=job, data=data, home=home, manifest=manifest)
