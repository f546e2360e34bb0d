"""A site refuses an instruction whose named model digest is not what it received."""

from __future__ import annotations

import numpy as np
import pytest

from fedinfra.aggregation.digest import blob_digest, model_digest
from fedinfra.config.wire import TrainInstruction
from fedinfra.errors import VerificationError
from fedinfra.site.views import check_view, received_digest

W = {"b": np.zeros(2, np.float32), "a": np.ones((2, 2), np.float32)}


def _instruction(digest: str | None) -> TrainInstruction:
    return TrainInstruction(run_id="r", round=1, job={}, model_digest=digest)


def test_the_named_model_is_accepted() -> None:
    got = received_digest(encrypted=False, base=W, aggregates=[])
    check_view(_instruction(model_digest(W)), got)


def test_another_model_or_no_digest_is_refused() -> None:
    other = {**W, "b": np.full(2, 1e-7, np.float32)}
    with pytest.raises(VerificationError, match="digest mismatch"):
        check_view(_instruction(model_digest(W)), received_digest(encrypted=False, base=other, aggregates=[]))
    with pytest.raises(VerificationError, match="no model digest"):
        check_view(_instruction(None), model_digest(W))


def test_under_he_the_newest_aggregate_is_what_is_named() -> None:
    got = received_digest(encrypted=True, base=W, aggregates=[b"r1", b"r2"])
    assert got == blob_digest(b"r2")
    check_view(_instruction(blob_digest(b"r2")), got)
    with pytest.raises(VerificationError):
        check_view(_instruction(blob_digest(b"r1")), got)


def test_the_digest_does_not_depend_on_dict_order() -> None:
    assert model_digest(W) == model_digest(dict(reversed(list(W.items()))))


def test_a_decrypted_mean_beyond_the_clip_bound_is_refused() -> None:
    from fedinfra.config import SecureAggSpec
    from fedinfra.site.views import check_mean_bound

    bfv = SecureAggSpec(mode="bfv", clip=1.0, quant_bits=8)
    check_mean_bound(np.array([0.5, -1.0, 1.005]), bfv)
    for bad in ([0.0, 1.2], [float("nan")], [-50.0]):
        with pytest.raises(VerificationError, match="clip bound"):
            check_mean_bound(np.array(bad), bfv)
    ckks = SecureAggSpec(mode="ckks", ckks_max_abs=4.0)
    check_mean_bound(np.array([3.9]), ckks)
    with pytest.raises(VerificationError):
        check_mean_bound(np.array([4.1]), ckks)
