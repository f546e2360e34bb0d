"""Issue 16 deliverable 3 under ``secure_aggregation.mode = "secagg"``: sites check what comes back.

The coordinator unmasks the sum and applies the server step itself, so it could move the
global model anywhere. Here it is played by the real :class:`~fedinfra.coordinator.server.Coordinator`
with its server optimiser swapped for one that pushes one coordinate of round 1's mean to
2.5 times the clip, to NaN or to +-50 before stepping; everything else (the SecAgg+ waves,
the sites, the stores) is real. Every site refuses round 2's model, records why in its own
``alerts.log`` and sends the coordinator only the bounded code. An honest run whose updates
all sit at the clip (and one with server momentum) is accepted by every site.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from fedinfra.aggregation.server_opt import ServerOptimizer
from fedinfra.config import JobSpec
from fedinfra.site.receipts import ALERTS_FILE
from fedinfra.types import NDArrays
from tests.adversarial.harness import Outcome, adversarial_job, honest, rejections, run_job

pytestmark = pytest.mark.timeout(600)

CLIP = 1e-3
SITES = ("edge-0", "edge-1", "edge-2", "edge-3")


def _job(**training: Any) -> JobSpec:
    # A training step far larger than the clip: every site's update sits at the clip.
    return adversarial_job(
        name="secagg-views",
        training={"local_epochs": 1, "lr": 0.5, **training},
        secure_aggregation={"mode": "secagg", "clip": CLIP, "example_cap": 1000},
    )


class _Recorder(ServerOptimizer):
    """The coordinator's optimiser, recording each round's unmasked mean (and tampering with it)."""

    means: ClassVar[list[NDArrays]] = []
    poison: ClassVar[float | None] = None

    def step(self, weights: NDArrays, mean_update: NDArrays) -> NDArrays:
        mean = {k: np.array(v, dtype=np.float32) for k, v in mean_update.items()}
        type(self).means.append(mean)
        if type(self).poison is not None:
            first = sorted(mean)[0]
            mean[first].reshape(-1)[0] = type(self).poison
        return super().step(weights, mean)


def _run(tmp: Path, job: JobSpec, monkeypatch: Any, poison: float | None) -> tuple[Outcome, list[NDArrays]]:
    """Run ``job`` over four honest sites; return the outcome and the means the coordinator unmasked."""
    means: list[NDArrays] = []
    recorder = type("Recorder", (_Recorder,), {"means": means, "poison": poison})
    monkeypatch.setattr("fedinfra.coordinator.server.ServerOptimizer", recorder)
    return run_job(tmp, job, [honest] * 4, monkeypatch=monkeypatch), means


def _alerts(out: Outcome, site: str) -> list[str]:
    found = list((out.run_dir / "site-homes" / site / "receipts").rglob(ALERTS_FILE))
    return [line for path in found for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("poison", "momentum"),
    [(2.5 * CLIP, 0.0), (float("nan"), 0.0), (50.0, 0.0), (-50.0, 0.0), (2.5 * CLIP, 0.9)],
    ids=["2.5x-clip", "nan", "+50", "-50", "2.5x-clip-momentum"],
)
def test_a_coordinator_that_moves_the_unmasked_mean_is_refused_by_every_site(
    tmp_path: Path, monkeypatch: Any, poison: float, momentum: float
) -> None:
    out, _ = _run(tmp_path, _job(server_momentum=momentum), monkeypatch, poison)
    assert out.error is not None  # no site trains on the tampered model: round 2 has no valid reply
    refused = {site: d for site, d in rejections(out) if d.get("code") == "receipt"}
    assert sorted(refused) == list(SITES)
    assert all(d["check"] == "site.refused:receipt" for d in refused.values())
    trained = {(e.actor.id, e.round) for e in out.entries if e.type == "update.received"}
    assert trained == {(s, 1) for s in SITES}
    for site in SITES:
        (line,) = _alerts(out, site)
        assert "moved further than clipped secure-aggregation means allow" in line


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["fedavg", "momentum-0.9"])
def test_an_honest_secagg_run_at_the_clip_is_accepted(tmp_path: Path, monkeypatch: Any, momentum: float) -> None:
    job = _job(server_momentum=momentum).model_copy(update={"rounds": 3})
    out, means = _run(tmp_path, job, monkeypatch, None)
    assert out.error is None, out.error
    assert rejections(out) == []
    assert len(means) == 3
    # The updates really sit at the clip: the unmasked means reach it (up to the codec's error).
    assert max(float(np.max(np.abs(v))) for m in means for v in m.values()) > 0.99 * CLIP
    for site in SITES:
        assert _alerts(out, site) == []
