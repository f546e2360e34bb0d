"""Crash-safe coordinator state: written after every round, committed by the audit log.

After round ``r`` the coordinator writes ``state/round-<r>.json`` (+ ``.npz`` weights,
+ encrypted aggregates) atomically, *then* appends ``aggregation.completed`` for round
``r``. The audit entry is the commit point: on resume the coordinator continues after
the last round the log records as aggregated and loads that round's state file, so no
round is counted twice and a half-written state is never trusted.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedinfra.coordinator.artifacts import atomic_write
from fedinfra.coordinator.events import RoundResult
from fedinfra.errors import ConfigError
from fedinfra.types import NDArrays


@dataclass
class SiteBook:
    """What the coordinator tracks per site between rounds."""

    synced: int = 0  # HE: last round whose aggregate the site applied
    pending: list[int] = field(default_factory=list)  # audit seqs awaiting a receipt
    sent: list[int] = field(default_factory=list)  # receipts in the message in flight
    seen_size: int = 0  # tree size of the newest checkpoint the site was sent
    epsilon_total: float = 0.0
    rounds_joined: int = 0


@dataclass
class RunState:
    """Everything needed to continue a run after round ``round``."""

    round: int
    weights: NDArrays  # plaintext: current global model; HE: the initial model
    books: dict[str, SiteBook] = field(default_factory=dict)
    results: list[RoundResult] = field(default_factory=list)
    optimizer: NDArrays = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)


def _npz(arrays: NDArrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def save_state(state_dir: Path, state: RunState, aggregate: bytes | None) -> bytes:
    """Write the state after ``state.round``; return the bytes of its weights file."""
    weights = _npz({**state.weights, **state.optimizer})
    atomic_write(state_dir / f"round-{state.round:05d}.npz", weights)
    if aggregate is not None:
        atomic_write(state_dir / f"aggregate-{state.round:05d}.bin", aggregate)
    doc = {
        "round": state.round,
        "books": {k: asdict(v) for k, v in state.books.items()},
        "results": [r.to_json() for r in state.results],
        "rng": state.rng,
    }
    atomic_write(state_dir / f"round-{state.round:05d}.json", json.dumps(doc, sort_keys=True).encode())
    return weights


def load_state(state_dir: Path, round_: int) -> RunState:
    """Load the state written after ``round_``."""
    try:
        doc = json.loads((state_dir / f"round-{round_:05d}.json").read_text())
        with np.load(state_dir / f"round-{round_:05d}.npz") as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{state_dir}: no usable state for round {round_} ({exc}); cannot resume") from exc
    return RunState(
        round=int(doc["round"]),
        weights={k: v for k, v in arrays.items() if not k.startswith("velocity/")},
        optimizer={k: v for k, v in arrays.items() if k.startswith("velocity/")},
        books={k: SiteBook(**v) for k, v in doc["books"].items()},
        results=[RoundResult(**r) for r in doc["results"]],
        rng=doc.get("rng", {}),
    )


def load_aggregate(state_dir: Path, round_: int) -> bytes:
    """The encrypted aggregate of ``round_`` (HE mode)."""
    return (state_dir / f"aggregate-{round_:05d}.bin").read_bytes()
