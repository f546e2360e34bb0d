"""The built-in aggregators: plaintext FedAvg, compressed FedAvg, packed BFV, CKKS.

Each is one implementation of :class:`~fedinfra.aggregation.rounds.Aggregator`; see that
module for the two properties every one of them keeps (layout from the model, atomic folds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

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
from fedinfra.config.wire import COMPRESSED_UPDATE, HE_UPDATE
from fedinfra.errors import ConfigError

if TYPE_CHECKING:
    from fedinfra.crypto import EncryptedSum


@register
class FedAvgAggregator(Aggregator):
    """Plaintext example-weighted FedAvg (McMahan et al. 2017), streaming."""

    name = "fedavg"

    def __init__(self, spec: RoundSpec) -> None:
        super().__init__(spec)
        self._mean = running_mean(spec.layout)

    def _accept(self, reply: Reply) -> Folded:
        w = check_weight(reply.weight)
        update = plaintext_update(reply, self.spec.layout, max_norm=self.spec.job.aggregation.max_update_norm)
        self._mean.add(update, w)
        return update_subject(update, self.spec.layout)

    def finish(self) -> RoundAggregate:
        """The weighted mean of the accepted updates."""
        return RoundAggregate(sites=self.sites, mean=self._mean.result())


@register
class CompressedAggregator(Aggregator):
    """Plaintext FedAvg of compressed updates (quantized, optionally sparse; edge devices)."""

    name = "compressed"

    def __init__(self, spec: RoundSpec) -> None:
        super().__init__(spec)
        if spec.job.compression is None:
            raise ConfigError("the compressed aggregator needs a [compression] table in the job")
        self._mean = running_mean(spec.layout)

    def _accept(self, reply: Reply) -> Folded:
        from fedinfra.aggregation.compression import decompress

        w = check_weight(reply.weight)
        raw = reply.config.get(COMPRESSED_UPDATE)
        if not isinstance(raw, bytes | bytearray):
            raise UpdateRejected("missing", "reply carries no compressed update")
        blob = bytes(raw)
        spec = self.spec.job.compression
        assert spec is not None
        update = decompress(blob, self.spec.layout, clip=spec.clip, bits=spec.bits)
        check_update(update, self.spec.layout, max_norm=self.spec.job.aggregation.max_update_norm)
        self._mean.add(update, w)
        return Folded.of("update.compressed", [blob])

    def finish(self) -> RoundAggregate:
        """The weighted mean of the accepted updates."""
        return RoundAggregate(sites=self.sites, mean=self._mean.result())


#: The error for a job with HE but a coordinator kit without HE parameters.
NO_HE_KIT = "secure_aggregation is on but the coordinator kit has no HE parameters"


def encrypted_sum(spec: RoundSpec, mode: str, *, no_kit: str = NO_HE_KIT) -> EncryptedSum:
    """An empty :class:`~fedinfra.crypto.EncryptedSum` for ``mode``, from the coordinator kit.

    Refuses (:class:`ConfigError`, message ``no_kit``) a kit without HE parameters, and a
    kit made for another mode: its parameters, or its packing, would not be the ones the
    sites encrypt under. The layout is the job's model's (never a reply's).
    """
    from fedinfra.crypto import EncryptedSum

    if spec.he_public is None:
        raise ConfigError(no_kit)
    if spec.he_public.params.spec.mode != mode:
        raise ConfigError(
            f"the coordinator kit is for {spec.he_public.params.spec.mode!r}, the job asks for {mode!r}; "
            "use the kit made for this job's secure_aggregation.mode"
        )
    return EncryptedSum(spec.he_public, run_id=spec.run_id, round_id=spec.round, layout=list(spec.layout))


class _EncryptedAggregator(Aggregator):
    """Adds signed HE ciphertexts (:class:`fedinfra.crypto.EncryptedSum`); sites decrypt."""

    hides_aggregate: ClassVar[bool] = True

    def __init__(self, spec: RoundSpec) -> None:
        super().__init__(spec)
        self._sum = encrypted_sum(spec, self.name)

    def _accept(self, reply: Reply) -> Folded:
        raw = reply.config.get(HE_UPDATE)
        if not isinstance(raw, bytes | bytearray):
            raise UpdateRejected("missing", "reply carries no encrypted update")
        blob = bytes(raw)
        self._sum.add(blob)  # signature first; each ciphertext checked before it is added, undone if one is refused
        return Folded.of("update.ciphertext", [blob])

    def finish(self) -> RoundAggregate:
        """The encrypted aggregate, for the sites to decrypt."""
        return RoundAggregate(sites=self._sum.sites, ciphertext=self._sum.to_bytes())


@register
class BFVAggregator(_EncryptedAggregator):
    """Packed BFV: exact integer sums of quantized updates."""

    name = "bfv"


@register
class CKKSAggregator(_EncryptedAggregator):
    """CKKS: approximate float sums."""

    name = "ckks"


__all__ = ["NO_HE_KIT", "BFVAggregator", "CKKSAggregator", "CompressedAggregator", "FedAvgAggregator", "encrypted_sum"]
