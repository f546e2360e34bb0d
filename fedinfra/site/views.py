"""A site checks that the model it was sent is the one the instruction names (issue 16).

The coordinator names, in every instruction, the SHA-256 of the global model - or under
HE of the encrypted aggregate - the instruction is built from, and logs the same digest
(``round.started``, and as the subject of the previous ``aggregation.completed``). The
site recomputes the digest from the bytes it received and refuses a mismatch, so a
coordinator cannot hand different sites different models without either lying in its
signed, cosigned log or being refused (split views; RFC 9162 section 8.1.4).

Under HE a site that is already in sync receives no aggregate in the message; it then
checks nothing new here - its copy was checked when it was received.
"""

from __future__ import annotations

from fedinfra.aggregation.digest import blob_digest, model_digest
from fedinfra.config.wire import TrainInstruction
from fedinfra.errors import VerificationError
from fedinfra.types import NDArrays


def received_digest(*, encrypted: bool, base: NDArrays | None, aggregates: list[bytes]) -> str | None:
    """The digest of what arrived: the newest aggregate (HE), else the plaintext model."""
    if encrypted and aggregates:
        return blob_digest(aggregates[-1])
    if base is not None:
        return model_digest(base)
    return None


def check_view(instruction: TrainInstruction, received: str | None) -> None:
    """Refuse an instruction whose named model digest differs from what was received.

    Raises
    ------
    VerificationError
        If the instruction names no digest, or names another model than the one sent.
    """
    if instruction.model_digest is None:
        raise VerificationError("the instruction names no model digest; refusing to train on an unnamed model")
    if received is not None and received != instruction.model_digest:
        raise VerificationError("the model received is not the one the instruction names (digest mismatch); refused")


__all__ = ["check_view", "received_digest"]
