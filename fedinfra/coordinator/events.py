"""What the coordinator reports as a run progresses (for progress displays and metrics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class RoundResult:
    """The outcome of one completed round."""

    round: int
    test_loss: float
    test_accuracy: float
    train_loss: float
    replies: int
    refused: int
    seconds: float
    details: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """JSON-compatible form (used in ``metrics.json``)."""
        return asdict(self)


class Reporter(Protocol):
    """Receives progress events; the CLI renders them with rich."""

    def run_started(self, run_id: str, rounds: int, sites: int) -> None:
        """The run passed admission and is about to start round 1."""

    def round_done(self, result: RoundResult) -> None:
        """A round finished and the global model was updated."""


class NullReporter:
    """A reporter that ignores every event (deployment ServerApp without a console)."""

    def run_started(self, run_id: str, rounds: int, sites: int) -> None:
        """Ignore."""

    def round_done(self, result: RoundResult) -> None:
        """Ignore."""
