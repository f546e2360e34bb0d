"""The codec's limits and refusals at their exact edges, with the exact messages users see.

A site's own refusals (empty, non-finite, beyond the bound, round ids) name what to fix;
the coordinator's refusals name the public bound crossed; a refusal that concerns the
ciphertext or the decrypted plaintext is the one generic ``REJECTED`` text. Messages that a
site or the coordinator can only forge by hand (two senders, a zero-length update, a reused
nonce, a header that overstates its contributors) are built here with the wire format and
the site's own signing key, as a malicious site or coordinator would.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.crypto import CODECS, EncryptedSum, _sign, envelope, generate_consortium, open_sum, seal_update
from fedinfra.crypto._seal import REJECTED
from fedinfra.crypto.params import HEParams
from fedinfra.crypto.quantize import quant_max
from fedinfra.errors import ConfigError, CryptoError

SITES = ["a", "b", "c"]
CAP = 100


def _kit(**spec: object) -> tuple:
    settings = {"mode": "bfv", "clip": 1.0, "max_sites": 3, "example_cap": CAP, **spec}
    return generate_consortium(ConsortiumSpec(name="t", sites=SITES, secure_aggregation=SecureAggSpec(**settings)))


@pytest.fixture(scope="module")
def bfv():
    return _kit()


@pytest.fixture(scope="module")
def ckks():
    return _kit(mode="ckks", ckks_max_abs=100.0)


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def _seal(keys, values, n=1, *, round_id=1, **kw):
    return seal_update(np.asarray(values, dtype=np.float64), n, keys, run_id="run", round_id=round_id, **kw)


def _resigned(update: bytes, keys, **changes) -> bytes:
    """``update`` with header fields (or ``blobs``) changed, signed again with ``keys``' signing key."""
    header, blobs, _, _ = envelope.decode(update, kind=envelope.KIND_UPDATE)
    blobs = changes.pop("blobs", [bytes(b) for b in blobs])
    body = envelope.encode(dataclasses.replace(header, **changes), blobs)
    return body + _sign.sign(keys.signing_key, envelope.digest(envelope.KIND_UPDATE, body))


def _rehashed(aggregate: bytes, **changes) -> bytes:
    """``aggregate`` with header fields (or ``blobs``) changed and a matching SHA-256 trailer."""
    header, blobs, _, _ = envelope.decode(aggregate, kind=envelope.KIND_AGGREGATE)
    blobs = changes.pop("blobs", [bytes(b) for b in blobs])
    body = envelope.encode(dataclasses.replace(header, **changes), blobs)
    return body + envelope.digest(envelope.KIND_AGGREGATE, body)


def _aggregate(public, sites, values, *, n=1, site="a"):
    agg = EncryptedSum(public, run_id="run", round_id=1)
    agg.add(_seal(sites[site], values, n))
    return agg.to_bytes()


# -- site: what seal_update refuses ------------------------------------------------------------------


def test_an_empty_update_is_refused(bfv):
    with pytest.raises(ConfigError, match=_exactly("update is empty; nothing to encrypt")):
        _seal(bfv[1]["a"], [])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_refused_with_what_to_check(bfv, bad):
    with pytest.raises(ConfigError, match=_exactly("update contains NaN or infinity; check the training step")):
        _seal(bfv[1]["a"], [0.25, bad, -0.5])


def test_reject_mode_accepts_values_at_the_clip_bound_and_names_the_bound_beyond_it(bfv):
    public, sites = bfv
    mean, _ = open_sum(
        _aggregate(public, sites, [1.0, -1.0, 0.5], n=CAP), sites["b"], run_id="run", round_id=1
    )  # default: clip; at the bound nothing changes
    assert np.allclose(mean, [1.0, -1.0, 0.5], atol=1e-5)
    _seal(sites["a"], [1.0, -1.0], over_clip="reject")

    with pytest.raises(
        ConfigError,
        match=_exactly("update value 1.5 exceeds secure_aggregation.clip=1; clip the update or raise the agreed bound"),
    ):
        _seal(sites["a"], [0.5, -1.5], over_clip="reject")


def test_ckks_accepts_values_at_its_bound(ckks):
    public, sites = ckks
    mean, total = open_sum(_aggregate(public, sites, [100.0, -100.0, 3.0], n=CAP), sites["c"], run_id="run", round_id=1)

    assert total == CAP
    assert np.allclose(mean, [100.0, -100.0, 3.0], atol=1e-4)


@pytest.mark.parametrize("round_id", [-1, 2**64])
def test_round_ids_outside_64_bits_are_refused(bfv, round_id):
    with pytest.raises(ConfigError, match=_exactly(f"round_id={round_id} must be a non-negative 64-bit integer")):
        _seal(bfv[1]["a"], [0.5], round_id=round_id)


def test_the_largest_64_bit_round_id_is_sealed_summed_and_opened(bfv):
    public, sites = bfv
    last = 2**64 - 1
    agg = EncryptedSum(public, run_id="run", round_id=last)
    agg.add(_seal(sites["a"], [0.5, -0.25], 10, round_id=last))

    mean, total = open_sum(agg.to_bytes(), sites["b"], run_id="run", round_id=last)

    assert total == 10
    assert np.max(np.abs(mean - [0.5, -0.25])) <= public.params.mean_error_bound(sites=1, total_examples=10)


def test_masking_a_ckks_update_is_refused(ckks):
    with pytest.raises(
        ConfigError,
        match=_exactly("masking under encryption needs BFV slots (secure_aggregation.mode = 'secagg+he')"),
    ):
        _seal(ckks[1]["a"], [0.5], mask=lambda rows, t: None)


def test_the_secret_key_is_parsed_once_per_site_kit(bfv):
    _, sites = bfv
    keys = dataclasses.replace(sites["a"])  # a fresh cache
    _seal(keys, [0.5])
    parsed = keys._cache["sk"]
    _seal(keys, [0.25])

    assert keys._cache["sk"] is parsed


# -- coordinator: what EncryptedSum refuses ------------------------------------------------------------


def test_an_empty_sum_has_nothing_to_serialize(bfv):
    with pytest.raises(ConfigError, match=_exactly("no valid encrypted updates to aggregate this round")):
        EncryptedSum(bfv[0], run_id="run", round_id=1).to_bytes()


def test_an_update_of_another_kit_is_refused_with_the_reason(bfv):
    other_public, _ = _kit()
    with pytest.raises(CryptoError, match=_exactly("update rejected: made under other HE parameters or another kit")):
        EncryptedSum(other_public, run_id="run", round_id=1).add(_seal(bfv[1]["a"], [0.5]))


def test_the_sum_is_full_at_max_sites():
    public, sites = _kit(max_sites=2)
    agg = EncryptedSum(public, run_id="run", round_id=1)
    for name in ("a", "b"):
        agg.add(_seal(sites[name], [0.5]))

    with pytest.raises(
        CryptoError,
        match=_exactly(
            "update rejected: the sum already holds max_sites=2 replies, the most the parameters were sized for"
        ),
    ):
        agg.add(_seal(sites["c"], [0.5]))
    assert agg.sites == ("a", "b")


@pytest.mark.parametrize("senders", [("z",), ("a", "b"), ()])
def test_an_update_must_name_exactly_one_site_of_the_kit(bfv, senders):
    public, sites = bfv
    forged = _resigned(_seal(sites["a"], [0.5]), sites["a"], sites=senders)
    agg = EncryptedSum(public, run_id="run", round_id=1)

    with pytest.raises(CryptoError, match=_exactly("update rejected: sender is not a site of this kit")):
        agg.add(forged)
    assert len(agg) == 0


def test_a_second_update_reusing_a_summed_nonce_is_a_replay(bfv):
    public, sites = bfv
    agg = EncryptedSum(public, run_id="run", round_id=1)
    first = _seal(sites["a"], [0.5])
    agg.add(first)
    nonce = envelope.decode(first, kind=envelope.KIND_UPDATE)[0].nonce
    copied = _resigned(_seal(sites["b"], [0.5]), sites["b"], nonce=nonce)

    with pytest.raises(CryptoError, match="already contributed to this round"):
        agg.add(copied)
    assert agg.sites == ("a",)


@pytest.mark.parametrize("n_values", [0, 2**40, 2**40 + 1, 2**64 - 1])
def test_a_value_count_out_of_range_is_refused_before_the_ciphertexts(bfv, n_values):
    public, sites = bfv
    forged = _resigned(_seal(sites["a"], [0.5]), sites["a"], n_values=n_values)
    agg = EncryptedSum(public, run_id="run", round_id=1)

    with pytest.raises(CryptoError, match=_exactly("update rejected: value count out of range")):
        agg.add(forged)
    assert len(agg) == 0


def test_fewer_ciphertexts_than_the_value_count_needs_is_the_generic_refusal(bfv):
    public, sites = bfv
    update = _seal(sites["a"], np.zeros(10_000))
    _, blobs, _, _ = envelope.decode(update, kind=envelope.KIND_UPDATE)
    assert len(blobs) == 2
    forged = _resigned(update, sites["a"], blobs=[bytes(blobs[0])])

    with pytest.raises(CryptoError, match=_exactly(REJECTED)):
        EncryptedSum(public, run_id="run", round_id=1).add(forged)


def test_the_jobs_layout_binds_the_first_reply_too(bfv):
    public, sites = bfv
    layout = [("w", (2, 3))]

    wrong_size = EncryptedSum(public, run_id="run", round_id=1, layout=layout)
    with pytest.raises(
        CryptoError, match=_exactly("update rejected: carries 5 values, the sum holds 6 (model mismatch)")
    ):
        wrong_size.add(_seal(sites["a"], np.zeros(5)))
    assert len(wrong_size) == 0

    # Same count, other shape: refused by the layout digest alone.
    transposed = EncryptedSum(public, run_id="run", round_id=1, layout=layout)
    with pytest.raises(CryptoError, match="model mismatch"):
        transposed.add(seal_update({"w": np.zeros((3, 2))}, 1, sites["a"], run_id="run", round_id=1))
    transposed.add(seal_update({"w": np.zeros((2, 3))}, 1, sites["a"], run_id="run", round_id=1))
    assert transposed.sites == ("a",)


def test_without_a_layout_the_first_reply_fixes_the_shape_for_the_rest(bfv):
    public, sites = bfv
    agg = EncryptedSum(public, run_id="run", round_id=1)
    agg.add(seal_update({"w": np.zeros((2, 3))}, 1, sites["a"], run_id="run", round_id=1))

    with pytest.raises(CryptoError, match="model mismatch"):
        agg.add(seal_update({"w": np.zeros((3, 2))}, 1, sites["b"], run_id="run", round_id=1))
    assert agg.sites == ("a",)


# -- site: what open_sum refuses ----------------------------------------------------------------------


def test_the_coordinator_kit_cannot_decrypt(bfv):
    public, sites = bfv
    with pytest.raises(
        CryptoError, match=_exactly("cannot decrypt: this kit holds no HE secret key (only site kits do)")
    ):
        open_sum(_aggregate(public, sites, [0.5]), public, run_id="run", round_id=1)  # type: ignore[arg-type]


def test_a_corrupted_aggregate_is_refused_with_the_reason(bfv):
    public, sites = bfv
    blob = bytearray(_aggregate(public, sites, [0.5]))
    blob[-40] ^= 1

    with pytest.raises(CryptoError, match=_exactly("aggregate rejected: corrupted or truncated")):
        open_sum(bytes(blob), sites["a"], run_id="run", round_id=1)


def test_an_aggregate_of_another_kit_of_the_same_scheme_is_refused_with_the_reason(bfv):
    public, sites = bfv
    _, other_sites = _kit()
    with pytest.raises(
        CryptoError, match=_exactly("aggregate rejected: made under other HE parameters or another kit")
    ):
        open_sum(_aggregate(public, sites, [0.5]), other_sites["a"], run_id="run", round_id=1)


def test_unmasking_a_ckks_aggregate_is_refused(ckks):
    public, sites = ckks
    with pytest.raises(CryptoError, match=_exactly("aggregate rejected: masked aggregates need BFV slots")):
        open_sum(
            _aggregate(public, sites, [0.5]), sites["a"], run_id="run", round_id=1, unmask=lambda rows, t, who: None
        )


def test_an_aggregate_with_fewer_ciphertexts_than_its_value_count_needs_is_refused(bfv):
    public, sites = bfv
    aggregate = _aggregate(public, sites, np.zeros(10_000))
    _, blobs, _, _ = envelope.decode(aggregate, kind=envelope.KIND_AGGREGATE)
    forged = _rehashed(aggregate, blobs=[bytes(blobs[0])])

    with pytest.raises(CryptoError, match=_exactly(REJECTED)):
        open_sum(forged, sites["a"], run_id="run", round_id=1)


def test_a_zero_length_aggregate_is_refused_even_if_its_plaintext_is_consistent(bfv):
    # The only ciphertext of a zero-value aggregate would hold just the trailer (total, count);
    # unmask writes that plaintext, so only the value-count check stands in the way.
    public, sites = bfv
    forged = _rehashed(_aggregate(public, sites, [0.5]), n_values=0)

    def consistent(rows, t, who):
        rows[:] = 0
        rows[0, :2] = [1, 1]

    with pytest.raises(CryptoError, match=_exactly(REJECTED)):
        open_sum(forged, sites["a"], run_id="run", round_id=1, unmask=consistent)


def test_a_header_claiming_more_contributors_than_were_encrypted_is_refused(bfv):
    public, sites = bfv
    forged = _rehashed(_aggregate(public, sites, [0.5], n=50), sites=("a", "b"))

    with pytest.raises(CryptoError, match=_exactly(REJECTED)):
        open_sum(forged, sites["c"], run_id="run", round_id=1)


# -- the scheme codecs on plaintext rows (CODECS, no encryption) ---------------------------------------


def _params(public) -> HEParams:
    return public.params


def _bfv_rows(params: HEParams, values, weight: float):
    return CODECS["bfv"].encode(params, np.asarray(values, dtype=np.float64), weight, np.random.default_rng(0))


def _bfv_refuses(params: HEParams, rows, n_values: int) -> None:
    with pytest.raises(CryptoError, match=_exactly(REJECTED)):
        CODECS["bfv"].decode(params, rows, n_values)


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_one_site_with_one_example_and_one_with_the_cap_decode(bfv, ckks, scheme):
    params = _params((bfv if scheme == "bfv" else ckks)[0])
    codec = CODECS[scheme]
    for weight in (1.0, float(CAP)):
        rows = codec.encode(params, np.array([0.5, -0.25, 1.0]), weight, np.random.default_rng(0))

        weighted, total, sites = codec.decode(params, rows, 3)

        assert (total, sites) == (weight, 1)
        bound = params.mean_error_bound(sites=1, total_examples=int(total))
        assert np.max(np.abs(np.asarray(weighted) * CAP / total - [0.5, -0.25, 1.0])) <= bound


def test_bfv_refuses_a_contribution_count_above_max_sites_even_with_a_valid_total(bfv):
    params = _params(bfv[0])
    rows = _bfv_rows(params, [0.5, -0.5, 0.25], 1.0)
    flat = rows.reshape(-1)
    data = params.data_slots(3)
    flat[data + 1] = params.spec.max_sites + 1

    _bfv_refuses(params, rows, 3)


def test_ckks_refuses_a_contribution_count_above_max_sites_even_with_a_valid_total(ckks):
    params = _params(ckks[0])
    codec = CODECS["ckks"]
    rows = codec.encode(params, np.array([0.5, -0.5, 0.25]), 1.0, np.random.default_rng(0))
    flat = rows.reshape(-1)
    data = params.data_slots(3)
    flat[data] = flat[data].real + 1j * (params.spec.max_sites + 1)

    with pytest.raises(CryptoError, match=_exactly(REJECTED)):
        codec.decode(params, rows, 3)


def test_ckks_refuses_a_total_above_the_cap_of_its_contributors(ckks):
    params = _params(ckks[0])
    codec = CODECS["ckks"]
    rows = codec.encode(params, np.array([0.5]), float(CAP), np.random.default_rng(0))
    flat = rows.reshape(-1)
    flat[params.data_slots(1)] += 1 / CAP  # one example more than one site may hold

    with pytest.raises(CryptoError, match=_exactly(REJECTED)):
        codec.decode(params, rows, 1)


def test_bfv_refuses_a_nonzero_slot_after_the_trailer(bfv):
    params = _params(bfv[0])
    rows = _bfv_rows(params, [0.5, -0.5, 0.25], 1.0)
    rows.reshape(-1)[params.data_slots(3) + 2] = 1

    _bfv_refuses(params, rows, 3)


def test_bfv_refuses_bits_above_the_packed_lanes(bfv):
    params = _params(bfv[0])
    s = params.spec
    rows = _bfv_rows(params, [0.5, -0.5, 0.25], 1.0)
    rows.reshape(-1)[0] |= np.uint64(1) << np.uint64(s.lane_bits * s.lanes_per_slot)

    _bfv_refuses(params, rows, 3)


def test_bfv_refuses_a_lane_above_what_its_contributors_can_sum_to(bfv):
    params = _params(bfv[0])
    s = params.spec
    top = 2 * quant_max(s.quant_bits)  # one site at +clip
    rows = _bfv_rows(params, [0.5, -0.5, 0.25], 1.0)
    flat = rows.reshape(-1)
    lane0 = np.uint64((1 << s.lane_bits) - 1)

    flat[0] = (flat[0] & ~lane0) | np.uint64(top)
    weighted, _, _ = CODECS["bfv"].decode(params, rows, 3)
    assert weighted[0] == pytest.approx(s.clip)

    flat[0] = (flat[0] & ~lane0) | np.uint64(top + 1)
    _bfv_refuses(params, rows, 3)
