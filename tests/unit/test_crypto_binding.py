"""An encrypted sum binds every update to its run and counts each site once (one vote per site)."""

from __future__ import annotations

import numpy as np
import pytest

from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.crypto import EncryptedSum, generate_consortium, open_sum, seal_update
from fedinfra.errors import CryptoError

SITES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def kit():  # type: ignore[no-untyped-def]
    spec = SecureAggSpec(mode="bfv", clip=1.0, max_sites=3, example_cap=100)
    return generate_consortium(ConsortiumSpec(name="t", sites=SITES, secure_aggregation=spec))


def test_an_update_sealed_for_another_run_is_rejected(kit) -> None:  # type: ignore[no-untyped-def]
    public, sites = kit
    other_run = seal_update(np.full(100, 0.5), 10, sites["a"], run_id="run-other", round_id=1)
    agg = EncryptedSum(public, run_id="run-this", round_id=1)

    with pytest.raises(CryptoError, match="meant for run"):
        agg.add(other_run)
    assert len(agg) == 0


def test_two_fresh_updates_from_one_site_count_once(kit) -> None:  # type: ignore[no-untyped-def]
    public, sites = kit
    agg = EncryptedSum(public, run_id="run", round_id=1)
    agg.add(seal_update(np.full(100, 0.5), 10, sites["a"], run_id="run", round_id=1))
    second = seal_update(np.full(100, 0.9), 10, sites["a"], run_id="run", round_id=1)  # new nonce

    with pytest.raises(CryptoError, match="already contributed"):
        agg.add(second)
    agg.add(seal_update(np.full(100, -0.5), 10, sites["b"], run_id="run", round_id=1))

    assert agg.sites == ("a", "b")
    mean, total = open_sum(agg.to_bytes(), sites["c"], run_id="run", round_id=1)
    assert total == 20
    assert np.allclose(mean, 0.0, atol=0.02)


def test_a_site_cannot_open_a_sum_of_another_run(kit) -> None:  # type: ignore[no-untyped-def]
    public, sites = kit
    agg = EncryptedSum(public, run_id="run", round_id=1)
    agg.add(seal_update(np.full(100, 0.5), 10, sites["a"], run_id="run", round_id=1))

    with pytest.raises(CryptoError):
        open_sum(agg.to_bytes(), sites["b"], run_id="run-other", round_id=1)
