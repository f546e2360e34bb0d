"""The robust rules of :mod:`fedinfra.aggregation.robust` as round aggregators.

Selected by the job's ``aggregation.rule`` (plaintext modes only: the job validator
refuses a robust rule under secure aggregation, where the coordinator never sees single
updates). Each reply is validated completely (layout, float32, finite, the job's
``max_update_norm``) before it is kept, as for every aggregator (``rounds.py``).

Median, trimmed mean and Krum need all updates at once: they keep one ``(sites, d)``
float32 matrix, preallocated from the round's sample, i.e. O(sites x model) memory where
streaming FedAvg needs O(model). Norm-bounded FedAvg clips each update and streams.
Server momentum composes unchanged: the coordinator's optimiser steps with whatever mean
the rule returns.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedinfra.aggregation import robust
from fedinfra.aggregation.compression import unflatten
from fedinfra.aggregation.rounds import (
    Aggregator,
    Folded,
    Reply,
    RoundAggregate,
    RoundSpec,
    UpdateRejected,
    check_update,
    check_weight,
    plaintext_update,
    register,
    running_mean,
    update_subject,
)
from fedinfra.config.wire import COMPRESSED_UPDATE
from fedinfra.errors import ConfigError
from fedinfra.types import NDArrays


def _update(spec: RoundSpec, reply: Reply) -> tuple[NDArrays, Folded]:
    """The reply's validated float32 update (plain tensors, or compressed if the job says so)."""
    max_norm = spec.job.aggregation.max_update_norm
    comp = spec.job.compression
    if comp is None:
        update = plaintext_update(reply, spec.layout, max_norm=max_norm)
        return update, update_subject(update, spec.layout)
    from fedinfra.aggregation.compression import decompress

    raw = reply.config.get(COMPRESSED_UPDATE)
    if not isinstance(raw, bytes | bytearray):
        raise UpdateRejected("missing", "reply carries no compressed update")
    blob = bytes(raw)
    update = decompress(blob, spec.layout, clip=comp.clip, bits=comp.bits)
    check_update(update, spec.layout, max_norm=max_norm)
    return update, Folded.of("update.compressed", [blob])


class _Stacked(Aggregator):
    """Keeps every accepted update as one row of a preallocated float32 matrix."""

    def __init__(self, spec: RoundSpec) -> None:
        super().__init__(spec)
        dim = sum(int(np.prod(shape)) for _, shape in spec.layout)
        self._rows = np.empty((max(len(spec.sites), 1), dim), dtype=np.float32)

    def _accept(self, reply: Reply) -> Folded:
        check_weight(reply.weight)
        if self.count >= self._rows.shape[0]:
            raise UpdateRejected("protocol", "more replies than sites sampled for this round")
        update, folded = _update(self.spec, reply)
        row, at = self._rows[self.count], 0
        for name, _ in self.spec.layout:
            flat = np.asarray(update[name]).reshape(-1)
            row[at : at + flat.size] = flat
            at += flat.size
        return folded

    def finish(self) -> RoundAggregate:
        """Apply the rule to the accepted rows."""
        if self.count == 0:
            raise ConfigError("no replies to aggregate")
        flat, details = self._combine(self._rows[: self.count])
        mean = {k: np.asarray(v, dtype=np.float32) for k, v in unflatten(flat, self.spec.layout).items()}
        return RoundAggregate(sites=self.sites, mean=mean, details={"rule": self.name, **details})

    def _combine(self, rows: robust.F32) -> tuple[robust.F32, dict[str, object]]:
        raise NotImplementedError


@register
class MedianAggregator(_Stacked):
    """Coordinate-wise median (Yin et al. 2018)."""

    name: ClassVar[str] = "median"

    def _combine(self, rows: robust.F32) -> tuple[robust.F32, dict[str, object]]:
        return robust.coordinate_median(rows), {}


@register
class TrimmedMeanAggregator(_Stacked):
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018)."""

    name: ClassVar[str] = "trimmed-mean"

    def _combine(self, rows: robust.F32) -> tuple[robust.F32, dict[str, object]]:
        beta = self.spec.job.aggregation.trim_fraction
        return robust.trimmed_mean(rows, beta), {"trimmed_per_end": robust.trim_count(len(rows), beta)}


@register
class KrumAggregator(_Stacked):
    """Krum (Blanchard et al. 2017): the one update closest to its neighbours."""

    name: ClassVar[str] = "krum"

    def _select(self, n: int) -> int:
        return 1

    def _combine(self, rows: robust.F32) -> tuple[robust.F32, dict[str, object]]:
        f = self.spec.job.aggregation.byzantine
        mean, chosen = robust.multi_krum(rows, f, self._select(len(rows)))
        return mean, {"selected": [self.sites[i] for i in chosen], "byzantine": f}


@register
class MultiKrumAggregator(KrumAggregator):
    """Multi-Krum: the mean of the ``krum_select`` (default ``n - f``) best-scored updates."""

    name: ClassVar[str] = "multi-krum"

    def _select(self, n: int) -> int:
        agg = self.spec.job.aggregation
        return min(agg.krum_select or n - agg.byzantine, n)


@register
class NormBoundedAggregator(Aggregator):
    """FedAvg of updates clipped to ``aggregation.clip`` at the coordinator (streaming)."""

    name: ClassVar[str] = "norm-bounded"

    def __init__(self, spec: RoundSpec) -> None:
        super().__init__(spec)
        if spec.job.aggregation.clip is None:
            raise ConfigError("aggregation.rule = 'norm-bounded' needs aggregation.clip")
        self._clip = spec.job.aggregation.clip
        self._mean = running_mean(spec.layout)
        self._clipped = 0

    def _accept(self, reply: Reply) -> Folded:
        w = check_weight(reply.weight)
        update, folded = _update(self.spec, reply)
        norm = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values())))
        scale = np.float32(robust.clip_factor(norm, self._clip))
        self._mean.add({k: np.multiply(v, scale, dtype=np.float32) for k, v in update.items()}, w)
        self._clipped += int(scale < 1)
        return folded

    def finish(self) -> RoundAggregate:
        """The weighted mean of the clipped updates."""
        details: dict[str, object] = {"rule": self.name, "clip": self._clip, "clipped": self._clipped}
        return RoundAggregate(sites=self.sites, mean=self._mean.result(), details=details)


__all__ = [
    "KrumAggregator",
    "MedianAggregator",
    "MultiKrumAggregator",
    "NormBoundedAggregator",
    "TrimmedMeanAggregator",
]
