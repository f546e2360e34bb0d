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

from typing import TYPE_CHECKING, Any

from fedinfra.aggregation.digest import blob_digest, model_digest
from fedinfra.config.wire import TrainInstruction
from fedinfra.errors import VerificationError
from fedinfra.types import NDArrays

if TYPE_CHECKING:
    from fedinfra.crypto.params import HEParams


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


def check_mean_bound(mean: Any, params: HEParams, *, total_examples: int, sites: int | None = None) -> None:
    """Refuse a decrypted mean outside what the sites' clipped updates can produce.

    Under secure aggregation the coordinator cannot inspect updates, so every site clips
    before encrypting (BFV: ``|value| <= clip`` per coordinate; CKKS: ``|value| <=
    ckks_max_abs``) and checks the decrypted mean against the same bound before using it
    (issue 16; Bonawitz et al. 2017 leave input validation to the protocol around SecAgg).
    Any weighted mean of clipped values lies within that bound *up to the codec's error*,
    which is not one quantization step: a site sends ``(n_i / example_cap) * x_i`` rounded
    stochastically, so each site errs by up to ``clip / M`` *before* the division by
    ``total / example_cap`` - the mean's error is ``sites * (clip / M) * example_cap /
    total`` plus float32 rounding (:meth:`fedinfra.crypto.HEParams.mean_error_bound`). With
    every site's update at the clip (a saturated coordinate) the mean exceeds ``clip`` by up
    to that much; a tolerance of two steps refused such rounds (issue 13's ``secagg+he``
    e2e: 4 sites, 363 examples, a coordinate at 1.0000726 for clip 1).

    ``params`` are the kit's (what the codec used), ``total_examples`` the aggregate's
    decrypted example total and ``sites`` its contribution count; without it the bound
    takes ``min(max_sites, total_examples)`` sites - an upper bound, since the codec
    refuses more than ``max_sites`` contributions and every site weighs in with at least
    one example.

    Raises
    ------
    VerificationError
        If a coordinate of the mean is not finite or exceeds the bound.
    """
    import numpy as np

    spec = params.spec
    count = min(spec.max_sites, total_examples) if sites is None else sites
    magnitude = spec.ckks_max_abs if params.scheme == "ckks" else spec.clip
    bound = magnitude + params.mean_error_bound(sites=max(1, count), total_examples=max(1, total_examples))
    values = np.asarray(mean, dtype=np.float64)
    if values.size and not (np.all(np.isfinite(values)) and float(np.max(np.abs(values))) <= bound):
        raise VerificationError("the decrypted aggregate exceeds the job's clip bound; refused")


__all__ = ["check_mean_bound", "check_view", "received_digest"]
