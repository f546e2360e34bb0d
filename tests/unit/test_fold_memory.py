"""What a coordinator allocates to fold one reply and finish a round, traced (issue 17).

A 10M-parameter model's coordinator must stay within 2x the model's float32 size plus
200 MB (``bench/big_model.py``). These tests bound the Python-traced allocations of each
step in multiples of one update, deterministically (``tracemalloc``, not RSS): each names
the model-sized copy the old code made.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array

from fedinfra.aggregation.rounds import _CHECK_SLICE, Reply, RoundSpec, start_round
from fedinfra.config import JobSpec

#: A 4 MB model: a matrix and a bias.
LAYOUT = (("fc.weight", (1000, 1000)), ("fc.bias", (1000,)))
MODEL_BYTES = 4 * (1000 * 1000 + 1000)


def _peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak traced bytes allocated while ``fn`` runs (above what was allocated before)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return tracemalloc.get_traced_memory()[1] - base, out
    finally:
        tracemalloc.stop()


def _reply(site: str, value: float) -> Reply:
    rng = np.random.default_rng(int(value * 100))
    update = {n: (rng.normal(0, 0.01, s) + value).astype(np.float32) for n, s in LAYOUT}
    return Reply(site=site, weight=10.0, config={}, arrays={n: Array(v) for n, v in update.items()})


def test_a_plaintext_fold_hashes_its_audit_subject_without_copying_the_update() -> None:
    """Allowed: the norm check's float64 slice (2 MiB). The old code joined the update's bytes: 2x one update more."""
    job = JobSpec.model_validate({"sites": {"count": 3}})
    agg = start_round(RoundSpec(run_id="r", round=1, layout=LAYOUT, job=job, sites=("a", "b", "c")))
    agg.accept(_reply("a", 0.1))  # imports scipy's BLAS on first use: not the fold's own cost
    second = _reply("b", 0.2)
    canonical = b"".join(np.asarray(second.arrays[n].numpy()).tobytes() for n in sorted(dict(LAYOUT)))  # type: ignore[index]

    peak, folded = _peak(lambda: agg.accept(second))

    assert peak < 8 * _CHECK_SLICE + 0.1 * MODEL_BYTES
    assert folded.subject == ("update", hashlib.sha256(canonical).hexdigest(), len(canonical))
