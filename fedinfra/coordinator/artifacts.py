"""Files a run writes under ``runs/<run-id>/``.

Every file is written atomically (temporary file + rename) so a crash never leaves a
half-written artifact that a later reader would trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fedinfra.config import JobSpec
from fedinfra.config.names import check_slug
from fedinfra.coordinator.events import RoundResult
from fedinfra.types import NDArrays

#: ``metrics.json`` layout version. 2: schema version, timestamps, versions, the job's
#: hyperparameters and Flower's run ids; per-round figures only under ``rounds``.
METRICS_SCHEMA_VERSION = 2
#: The Flower run ids of a fedinfra run (one per submission or resume), oldest first.
FLOWER_RUNS_FILE = "flower-runs.json"
#: Written by ``fedinfra runs stop`` before it stops the run's Flower runs: the operator's
#: stop, so the coordinator's ``run.failed`` entry and ``runs ls`` name it as such.
STOP_FILE = "stopped.json"
_VERSIONED = ("fedinfra", "flwr", "torch", "opacus", "tenseal", "numpy")


def component_versions() -> dict[str, str | None]:
    """Installed versions of fedinfra and the engines a run's figures depend on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync'd temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunArtifacts:
    """The run directory and what goes in it."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir

    @property
    def metrics_path(self) -> Path:
        """``metrics.json``."""
        return self.dir / "metrics.json"

    @property
    def model_path(self) -> Path:
        """``model.pt``: the final global model as a torch state dict."""
        return self.dir / "model.pt"

    def write_job(self, job: JobSpec, run_id: str) -> None:
        """Write the resolved job configuration (``job.json``)."""
        doc = {"run_id": run_id, "job": job.model_dump(mode="json")}
        self.write_json("job.json", doc)

    def flower_run_ids(self) -> list[str]:
        """Flower's run ids recorded for this run (``flower-runs.json``)."""
        try:
            runs = json.loads((self.dir / FLOWER_RUNS_FILE).read_text())
        except (OSError, ValueError):
            return []
        return [str(r) for r in runs] if isinstance(runs, list) else []

    def stop_requested(self) -> bool:
        """``fedinfra runs stop`` asked for this run to stop (:data:`STOP_FILE`)."""
        return (self.dir / STOP_FILE).is_file()

    def record_flower_run(self, flower_run_id: int | str) -> None:
        """Add Flower's run id to ``flower-runs.json``: one fedinfra id per run, Flower's inside it."""
        runs = self.flower_run_ids()
        if str(flower_run_id) not in runs:
            self.write_json(FLOWER_RUNS_FILE, [*runs, str(flower_run_id)])

    def write_metrics(
        self,
        run_id: str,
        rounds: Sequence[RoundResult],
        sites: Sequence[str],
        seconds: float,
        extra: dict[str, object] | None = None,
    ) -> dict[str, object]:
        """Write ``metrics.json`` (schema :data:`METRICS_SCHEMA_VERSION`) and return what was written.

        Per-round figures appear once, under ``rounds``; ``final_*`` are the run's result.
        """
        try:
            before = json.loads(self.metrics_path.read_text())
        except (OSError, ValueError):
            before = {}
        try:
            job = json.loads((self.dir / "job.json").read_text()).get("job")
        except (OSError, ValueError, AttributeError):
            job = None
        doc: dict[str, object] = {
            "schema_version": METRICS_SCHEMA_VERSION,
            "run_id": run_id,
            "flower_run_ids": self.flower_run_ids(),
            "created_at": before.get("created_at") if isinstance(before, dict) and before.get("created_at") else _now(),
            "updated_at": _now(),
            "versions": component_versions(),
            "job": job,
            "sites": list(sites),
            "rounds": [r.to_json() for r in rounds],
            "final_accuracy": rounds[-1].test_accuracy if rounds else None,
            "final_loss": rounds[-1].test_loss if rounds else None,
            "timings": {"total_s": seconds},
        }
        if extra:
            doc.update(extra)
        self.write_json(self.metrics_path.name, doc)
        return doc

    def write_json(self, name: str, doc: object) -> None:
        """Write ``doc`` as sorted, indented JSON."""
        atomic_write(self.dir / name, json.dumps(doc, indent=2, sort_keys=True).encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a binary artifact."""
        atomic_write(self.dir / name, data)

    def write_sites(self, manifests: dict[str, dict[str, object]]) -> None:
        """Keep the admitted sites' manifests (``sites/<name>.json``) for the report.

        They hold organisational contacts (the DPO), which never go into the audit log.
        """
        for name, manifest in manifests.items():
            self.write_json(f"sites/{check_slug(name, 'site name')}.json", manifest)

    def write_model(self, weights: NDArrays) -> None:
        """Write the final model as a torch state dict (``model.pt``)."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save({k: torch.from_numpy(v.copy()) for k, v in weights.items()}, buf)
        atomic_write(self.model_path, buf.getvalue())
