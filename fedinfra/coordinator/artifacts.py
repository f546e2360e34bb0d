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

    def write_metrics(
        self,
        run_id: str,
        rounds: Sequence[RoundResult],
        sites: Sequence[str],
        seconds: float,
        extra: dict[str, object] | None = None,
    ) -> dict[str, object]:
        """Write ``metrics.json`` and return what was written."""
        doc: dict[str, object] = {
            "run_id": run_id,
            "sites": list(sites),
            "rounds": [r.to_json() for r in rounds],
            "loss": [r.test_loss for r in rounds],
            "accuracy": [r.test_accuracy for r in rounds],
            "final_accuracy": rounds[-1].test_accuracy if rounds else None,
            "final_loss": rounds[-1].test_loss if rounds else None,
            "timings": {"total_s": seconds, "round_s": [r.seconds for r in rounds]},
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
