"""One aggregator interface for every secure-aggregation mode (issue 13).

The coordinator's round loop speaks to one small interface whatever the mode::

    agg = start_round(RoundSpec(run_id=..., round=r, layout=layout_of_model, job=job, ...))
    for reply in replies:
        try:
            folded = agg.accept(Reply(site=..., weight=..., config=..., arrays=...))
        except UpdateRejected as exc:   # exc.check names the failing check
            audit("update.rejected", check=exc.check)
    result = agg.finish()               # a plaintext mean or an encrypted aggregate

Two properties hold in every implementation, and the tests prove them per mode:

* **Layout from the job's model.** The update's layout (tensor names and shapes, in order)
  is fixed when the round starts, from the job's model, never from the first reply. A
  malformed first reply cannot turn the honest replies that follow into "model mismatch".
* **Atomic folds.** A reply is validated completely before it touches the running sum; a
  rejected reply leaves no trace in it (Bonawitz et al., CCS 2017, section 2: the server
  must only ever learn the sum of *accepted* inputs; a half-applied input breaks that).

Implementations register by name (STYLE.md: registries instead of if-chains); adding a mode
touches one module and the config. :func:`aggregator_name` maps a job to its aggregator.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from fedinfra.aggregation.fedavg import StreamingFedAvg
from fedinfra.aggregation.records import ArrayLike, arrays_from_record
from fedinfra.errors import ConfigError, FedinfraError
from fedinfra.types import NDArrays

if TYPE_CHECKING:
    from fedinfra.config import JobSpec

#: Tensor names and shapes, in the model's order.
Layout = tuple[tuple[str, tuple[int, ...]], ...]


def model_layout(weights: NDArrays) -> Layout:
    """Return the layout (names and shapes, in order) of a model's weights."""
    return tuple((str(name), tuple(int(d) for d in np.shape(arr))) for name, arr in weights.items())


class UpdateRejected(ConfigError):
    """A reply failed validation; ``check`` names the check (audited in ``update.rejected``).

    ``check`` is one of a small fixed vocabulary (``layout``, ``shape``, ``dtype``,
    ``finite``, ``weight``, ``encoding``, ``ciphertext``, ``bound``, ``protocol``,
    ``missing``) so an auditor can count failures by kind; the message never carries a
    raw update value.
    """

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check


@dataclass(frozen=True)
class RoundSpec:
    """What an aggregator needs to start a round: run, round, the model's layout, the job."""

    run_id: str
    round: int
    layout: Layout
    job: JobSpec
    #: The coordinator kit's public HE parameters (encrypted modes only).
    he_public: Any = None
    #: Names of the sites sampled for this round (protocols that need the roster).
    sites: tuple[str, ...] = ()
    #: Length of the evaluation sums summed with the update (masked modes; 0: none this round).
    eval_size: int = 0


@dataclass(frozen=True)
class Reply:
    """One site's reply as the aggregator sees it: who, how much weight, its records."""

    site: str
    weight: float
    config: Mapping[str, Any]
    arrays: Mapping[str, ArrayLike] | None = None


@dataclass(frozen=True)
class Folded:
    """What was folded in: the audit subject of the accepted update (kind, SHA-256, size).

    The digest is computed over the update's bytes where they already are (the reply's
    buffer, or the tensor views into it): a plaintext update's canonical bytes used to be
    joined into a fresh ``bytes`` only to be hashed, one model-sized copy per reply that the
    coordinator's loop then kept alive while the next reply was pulled (issue 17).
    """

    kind: str
    sha256: str
    size: int

    @classmethod
    def of(cls, kind: str, parts: Iterable[bytes | bytearray | memoryview]) -> Folded:
        """The subject of the concatenation of ``parts`` (C-contiguous buffers), hashed one by one, never joined."""
        h = hashlib.sha256()
        size = 0
        for part in parts:
            view = memoryview(part)
            h.update(view)
            size += view.nbytes
        return cls(kind, h.hexdigest(), size)

    @property
    def subject(self) -> tuple[str, str, int]:
        """``(artifact, sha256, size)``, as :meth:`fedinfra.coordinator.trail.AuditTrail.event` takes it."""
        return (self.kind, self.sha256, self.size)


@dataclass(frozen=True)
class RoundAggregate:
    """The end of a round: a plaintext weighted mean, or an encrypted aggregate for the sites."""

    sites: tuple[str, ...]
    mean: NDArrays | None = None
    ciphertext: bytes | None = None
    details: dict[str, object] = field(default_factory=dict)
    #: The survivors' total evaluation sums (``RoundSpec.eval_size`` values), when the mode carried them.
    evaluation: npt.NDArray[np.float64] | None = None


@dataclass
class Stage:
    """An extra message wave a multi-stage protocol (SecAgg) needs around the train wave.

    The coordinator sends ``payloads[site]`` (a JSON document) to each named site, hands
    every reply to ``collect(site, document)`` (raising :class:`UpdateRejected` drops that
    site from the protocol) and calls ``close()`` when the wave is over.
    """

    name: str
    payloads: dict[str, str]
    collect: Callable[[str, str], None]
    close: Callable[[], None] = lambda: None


class Aggregator(ABC):
    """Start a round from the model's layout, accept one validated reply at a time, finish.

    Single-wave modes implement :meth:`_accept` and :meth:`finish` only. Multi-stage
    protocols also yield :class:`Stage` waves from :meth:`stages_before` (before training),
    say per site what the train message must carry (:meth:`train_extra`; ``None`` leaves the
    site out of the train wave) and yield waves from :meth:`stages_after`.
    """

    #: Registry name (the job's mode, or the rule's name).
    name: ClassVar[str] = ""
    #: True when the coordinator cannot read the result (it forwards a ciphertext).
    hides_aggregate: ClassVar[bool] = False

    def __init__(self, spec: RoundSpec) -> None:
        self.spec = spec
        self._sites: list[str] = []

    @property
    def sites(self) -> tuple[str, ...]:
        """Sites whose updates were accepted, in arrival order."""
        return tuple(self._sites)

    @property
    def count(self) -> int:
        """Number of accepted replies."""
        return len(self._sites)

    def accept(self, reply: Reply) -> Folded:
        """Validate ``reply`` completely, then fold it in; raise :class:`UpdateRejected` otherwise.

        A rejected reply leaves the running sum exactly as it was.
        """
        if reply.site in self._sites:
            raise UpdateRejected("protocol", f"site {reply.site!r} already contributed to this round (replay)")
        try:
            folded = self._accept(reply)
        except UpdateRejected:
            raise
        except (FedinfraError, ValueError, KeyError, TypeError) as exc:
            raise UpdateRejected(_check_of(exc), str(exc)) from exc
        self._sites.append(reply.site)
        return folded

    def stages_before(self) -> Iterator[Stage]:
        """Waves before the train wave (none by default)."""
        return iter(())

    def train_extra(self, site: str) -> dict[str, Any] | None:
        """Extra config values for ``site``'s train message; ``None``: do not ask it to train."""
        return {}

    def stages_after(self) -> Iterator[Stage]:
        """Waves after the train wave, before :meth:`finish` (none by default)."""
        return iter(())

    def audit_details(self) -> dict[str, object]:
        """Mode-specific figures for ``aggregation.completed`` (ids and counts only)."""
        return {}

    @abstractmethod
    def _accept(self, reply: Reply) -> Folded:
        """Validate and fold one reply (all checks before any mutation)."""

    @abstractmethod
    def finish(self) -> RoundAggregate:
        """Return the round's aggregate; raises :class:`ConfigError` if nothing was accepted."""


def _check_of(exc: Exception) -> str:
    from fedinfra.errors import CryptoError

    if isinstance(exc, CryptoError):
        return "ciphertext"
    if isinstance(exc, KeyError):
        return "missing"
    return "encoding"


#: Aggregators by name.
AGGREGATORS: dict[str, type[Aggregator]] = {}

_A = TypeVar("_A", bound=type[Aggregator])


def register(cls: _A) -> _A:
    """Class decorator: register an aggregator under ``cls.name``."""
    if not cls.name or cls.name in AGGREGATORS:
        raise ValueError(f"aggregator name {cls.name!r} is empty or taken")
    AGGREGATORS[cls.name] = cls
    return cls


#: Extra job -> aggregator-name hooks (robust rules, DP wrappers) consulted first, in order.
SELECTORS: list[Callable[[JobSpec], str | None]] = []


def aggregator_name(job: JobSpec) -> str:
    """Return the name of the aggregator a job uses.

    Hooks in :data:`SELECTORS` (e.g. a robust rule named by the job) come first; otherwise
    the secure-aggregation mode decides, and plaintext jobs use ``compressed`` or ``fedavg``.
    """
    for select in SELECTORS:
        name = select(job)
        if name is not None:
            return name
    mode = job.secure_aggregation.mode
    if mode != "none":
        return str(mode)
    if job.aggregation.rule != "fedavg":  # robust rules (plaintext only; the job validator checks)
        return job.aggregation.rule
    return "compressed" if job.compression is not None else "fedavg"


def aggregator_class(job: JobSpec) -> type[Aggregator]:
    """Return the aggregator class for ``job`` (imports the built-ins on first use)."""
    from fedinfra.aggregation import modes, robust_rules, secagg  # noqa: F401  (register the built-ins)

    name = aggregator_name(job)
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise ConfigError(f"no aggregator named {name!r}; known: {sorted(AGGREGATORS)}") from None


def start_round(spec: RoundSpec) -> Aggregator:
    """Start one round's aggregation for ``spec.job`` from the model's layout."""
    return aggregator_class(spec.job)(spec)


# -- plaintext validation shared by the float modes ---------------------------------------------------


#: Values :func:`check_update` squares at a time (a 2 MiB float64 temporary).
_CHECK_SLICE = 1 << 18


def check_update(update: NDArrays, layout: Layout, *, max_norm: float = math.inf) -> None:
    """Raise :class:`UpdateRejected` unless ``update`` has exactly ``layout`` and bounded numbers.

    The dtype comes from the model (float32, issue 16): a float64 1e300 is finite but no
    value of the model, and would become inf in the float32 sum. ``max_norm`` (the job's
    ``aggregation.max_update_norm``) bounds the L2 norm, so every coordinate - and every
    weighted mean of updates - stays far inside float32 range.
    """
    names = [name for name, _ in layout]
    if sorted(update.keys()) != sorted(names):
        raise UpdateRejected("layout", "update tensors do not match the model")
    sq = 0.0
    for name, shape in layout:
        value = np.asarray(update[name])
        if tuple(value.shape) != shape:
            raise UpdateRejected("shape", f"update tensor {name!r} has shape {value.shape}, the model {shape}")
        if value.dtype != np.float32:
            raise UpdateRejected("dtype", f"update tensor {name!r} is not float32 like the model")
        flat = value.ravel(order="K")  # a view, whatever the memory order
        # In slices: a float64 square of a whole 8M-value tensor is a 64 MiB temporary (issue 17).
        for start in range(0, flat.shape[0], _CHECK_SLICE):
            part = flat[start : start + _CHECK_SLICE]
            if not bool(np.all(np.isfinite(part))):
                raise UpdateRejected("finite", f"update tensor {name!r} has non-finite values")
            sq += float(np.sum(np.square(part, dtype=np.float64)))
    if not math.sqrt(sq) <= max_norm:
        raise UpdateRejected("bound", "update norm exceeds the job's aggregation.max_update_norm")


def check_weight(weight: float) -> float:
    """Return ``weight`` as a float if positive and finite, else raise :class:`UpdateRejected`."""
    w = float(weight)
    if not (w > 0 and math.isfinite(w)):
        raise UpdateRejected("weight", "reply weight must be a positive finite number")
    return w


def running_mean(layout: Layout) -> StreamingFedAvg:
    """A streaming FedAvg whose tensors are fixed by ``layout`` before any reply arrives."""
    return StreamingFedAvg(layout=layout)


def update_subject(update: NDArrays, layout: Layout) -> Folded:
    """The audit subject of a plaintext update: its float32 tensors, C order, in sorted name order.

    The same bytes as :func:`fedinfra.aggregation.digest.model_bytes`, hashed tensor by
    tensor without joining them (a C-ordered tensor is hashed in place in the reply's buffer).
    """
    names = sorted(name for name, _ in layout)
    return Folded.of("update", (np.ascontiguousarray(update[k], dtype=np.float32).data for k in names))


def plaintext_update(reply: Reply, layout: Layout, *, max_norm: float = math.inf) -> NDArrays:
    """The reply's float tensors, validated against ``layout`` (and ``max_norm``)."""
    if reply.arrays is None:
        raise UpdateRejected("missing", "reply carries no update tensors")
    update = arrays_from_record(reply.arrays)
    check_update(update, layout, max_norm=max_norm)
    return update


__all__ = [
    "AGGREGATORS",
    "SELECTORS",
    "Aggregator",
    "Folded",
    "Layout",
    "Reply",
    "RoundAggregate",
    "RoundSpec",
    "Stage",
    "UpdateRejected",
    "aggregator_class",
    "aggregator_name",
    "check_update",
    "check_weight",
    "model_layout",
    "plaintext_update",
    "register",
    "running_mean",
    "start_round",
    "update_subject",
]
