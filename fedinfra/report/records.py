"""What the report reads: verified audit records, checkpoints and the run's configuration.

These small types are the *only* contract between report generation and the audit
store. :mod:`fedinfra.report._store` fills them from :mod:`fedinfra.audit` after the
store has verified; everything else in :mod:`fedinfra.report` reads them and nothing
else, so a change in the audit API touches one adapter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedinfra.config import JobSpec, SiteManifest, load_site, parse_model
from fedinfra.errors import ConfigError


@dataclass(frozen=True)
class AuditRecord:
    """One audit entry as the report sees it (RFC 9162 leaf ``index`` plus entry fields)."""

    index: int
    seq: int
    ts: str
    run_id: str | None
    round: int | None
    type: str
    actor_kind: str
    actor_id: str
    actor_key_id: str | None
    outcome: str
    subject: dict[str, Any] | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def site(self) -> str:
        """The site an entry is about: ``details.site`` or else the actor's id."""
        value = self.details.get("site")
        return str(value) if value is not None else self.actor_id


@dataclass(frozen=True)
class Checkpoint:
    """A signed checkpoint whose signature the store verification checked."""

    tree_size: int
    root_hash: str
    key_name: str
    key_id: str
    note: str


@dataclass(frozen=True)
class VerifiedLog:
    """A whole audit log that passed verification, with what is needed to re-verify it."""

    origin: str
    records: list[AuditRecord]
    checkpoints: list[Checkpoint]
    public_key: str
    store_name: str
    #: tree size -> names on the cosignature lines stored beside that checkpoint (the lines'
    #: signatures are checked by ``audit verify --witnesses``, which holds the sites' keys).
    cosigners: dict[int, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """The run's configuration as written into its run directory.

    ``job.json`` (``{"run_id": ..., "job": {...}}``) holds the resolved job; ``sites/``
    holds the manifests of the sites (``<name>.toml`` or ``<name>.json``). Both are
    optional: what the log records wins, configuration fills the rest (contacts of the
    DPO, which never enter the log).
    """

    job: JobSpec | None = None
    job_sha256: str | None = None
    manifests: dict[str, SiteManifest] = field(default_factory=dict)

    @classmethod
    def from_run_dir(cls, run_dir: Path | None, run_id: str) -> RunConfig:
        """Read ``job.json`` and ``sites/*`` from ``run_dir`` (missing parts stay empty)."""
        if run_dir is None or not run_dir.is_dir():
            return cls()
        job: JobSpec | None = None
        job_sha: str | None = None
        job_path = run_dir / "job.json"
        if job_path.is_file():
            raw = job_path.read_bytes()
            try:
                doc = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{job_path}: invalid JSON ({exc}); restore it from the run") from exc
            if doc.get("run_id") == run_id and isinstance(doc.get("job"), dict):
                job = parse_model(JobSpec, doc["job"], str(job_path))
                job_sha = hashlib.sha256(raw).hexdigest()
        manifests: dict[str, SiteManifest] = {}
        sites_dir = run_dir / "sites"
        if sites_dir.is_dir():
            for path in sorted(sites_dir.iterdir()):
                manifest: SiteManifest | None = None
                if path.suffix == ".toml":
                    manifest = load_site(path)
                elif path.suffix == ".json":
                    try:
                        data = json.loads(path.read_text(encoding="utf-8"))
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{path}: invalid JSON ({exc}); fix or remove it") from exc
                    manifest = parse_model(SiteManifest, data, str(path))
                if manifest is not None:
                    manifests[manifest.name] = manifest
        return cls(job=job, job_sha256=job_sha, manifests=manifests)
