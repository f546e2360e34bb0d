"""SecAgg building blocks: Shamir, the PRG, the plan, mask cancellation, dropout recovery."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from fedinfra.crypto.secagg import SecAggAbandoned, plan, prg, shamir
from fedinfra.crypto.secagg.local import identities, run_round
from fedinfra.crypto.secagg.plan import neighbours
from fedinfra.crypto.secagg.protocol import Roster, SiteSession, Unmasker
from fedinfra.errors import ConfigError, CryptoError

# -- Shamir ---------------------------------------------------------------------------------------


def test_shamir_matches_the_published_worked_example():
    # Wikipedia, "Shamir's secret sharing": f(x) = 1234 + 166x + 94x^2 mod 1613.
    shares = shamir.split(1234, threshold=3, count=6, prime=1613, coefficients=[166, 94])

    assert shares == [(1, 1494), (2, 329), (3, 965), (4, 176), (5, 1188), (6, 775)]


@pytest.mark.parametrize("subset", [(2, 4, 5), (1, 2, 3), (6, 3, 1)])
def test_shamir_combine_recovers_the_published_worked_example(subset):
    # The same example in reverse: any three of the six shares interpolate to 1234 modulo 1613.
    shares = dict([(1, 1494), (2, 329), (3, 965), (4, 176), (5, 1188), (6, 775)])

    assert shamir.combine([(x, shares[x]) for x in subset], prime=1613) == 1234


@pytest.mark.parametrize("subset", [(0, 1, 2), (3, 4, 5), (5, 0, 3), (0, 1, 2, 3, 4, 5)])
def test_any_threshold_of_shares_recovers_the_secret(subset):
    secret = int.from_bytes(bytes(range(32)), "big")
    shares = shamir.split(secret, threshold=3, count=6)

    assert shamir.combine([shares[i] for i in subset]) == secret


def test_fewer_than_threshold_shares_give_an_unrelated_value():
    secret = 123456789
    shares = shamir.split(secret, threshold=4, count=6)

    assert shamir.combine(shares[:3]) != secret


def test_duplicate_share_indices_are_refused():
    shares = shamir.split(5, threshold=2, count=3)

    with pytest.raises(CryptoError, match="distinct"):
        shamir.combine([shares[0], shares[0]])


# -- PRG ------------------------------------------------------------------------------------------


def test_the_prg_is_deterministic_in_seed_and_label():
    seed = bytes(32)

    a = prg.expand(seed, "pair", 1000, 24)
    b = prg.expand(seed, "pair", 1000, 24)
    c = prg.expand(seed, "self", 1000, 24)

    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert int(a.max()) < 2**24


def test_the_prg_key_is_hkdf_sha256_of_the_seed():
    # The AES-128-CTR keystream itself is checked against NIST SP 800-38A F.5.1 in
    # test_secagg_prg; its key is HKDF-SHA256 of the seed (RFC 5869) cut to 16 bytes, so check
    # the derivation against an independent computation with hashlib/hmac.
    import hashlib
    import hmac

    seed = bytes(range(32))
    prk = hmac.new(bytes(32), seed, hashlib.sha256).digest()
    okm = hmac.new(prk, b"fedinfra/secagg/v1/x" + b"\x01", hashlib.sha256).digest()

    assert prg.derive_key(seed, "x") == okm[:16]


# -- plan -----------------------------------------------------------------------------------------


def test_small_federations_use_the_complete_graph():
    p = plan(4, max_dropouts=1, max_colluders=1, min_contributors=3)

    assert (p.n, p.k, p.t) == (4, 3, 3)


def test_large_federations_use_a_regular_graph_of_degree_k():
    p = plan(100, max_dropouts=3, max_colluders=2, min_contributors=3)
    graph = neighbours(p, bytes(32))

    assert p.k < 99
    assert all(len(nb) == p.k for nb in graph)
    assert all(i not in nb for i, nb in enumerate(graph))
    assert all(i in graph[j] for i, nb in enumerate(graph) for j in nb)
    assert 2 * p.t > p.k + 1 + p.max_colluders
    assert p.t <= p.k + 1 - p.max_dropouts


def test_bounds_that_cannot_hold_are_refused_naming_the_bound():
    with pytest.raises(ConfigError, match=r"max_dropouts=2 and max_colluders=1"):
        plan(5, max_dropouts=2, max_colluders=1, min_contributors=2)
    with pytest.raises(ConfigError, match=r"min_contributors=3"):
        plan(3, max_dropouts=1, max_colluders=0, min_contributors=3)
    with pytest.raises(ConfigError, match=r"at least 2"):
        plan(10, max_dropouts=1, max_colluders=0, min_contributors=1)


# -- the protocol ---------------------------------------------------------------------------------


def _inputs(n: int, size: int, bits: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        f"s{i:02d}": [rng.integers(0, 2 ** (bits - 4), size=size, dtype=np.uint64), np.array([i + 1, 1], np.uint64)]
        for i in range(n)
    }


def _signed(p, names, run_id="r", round_id=1):
    """Sessions, their signed roster, the pinned identities and the sealed share boxes."""
    ids = identities(list(names))
    sessions = {n: SiteSession.start(n, run_id=run_id, round_id=round_id) for n in names}
    roster = Roster(tuple(sessions[n].advertise(ids.private[n]) for n in names))
    shared = {n: s.share(p, roster, ids.public) for n, s in sessions.items()}
    return ids, sessions, roster, {n: b for n, (b, _) in shared.items()}, {n: c for n, (_, c) in shared.items()}


def _plain_sum(inputs, names, bits):
    return [sum(inputs[n][i].astype(object) for n in names) % (2**b) for i, b in enumerate(bits)]


def test_pairwise_masks_cancel_without_dropouts():
    p = plan(5, max_dropouts=1, max_colluders=1, min_contributors=3)
    inputs = _inputs(5, 1000, 24)
    expected = _plain_sum(inputs, inputs, [24, 64])

    total = run_round(p, {k: [s.copy() for s in v] for k, v in inputs.items()}, [24, 64])

    assert [t.tolist() for t in total] == [list(e) for e in expected]


def test_masked_inputs_look_nothing_like_the_inputs():
    p = plan(4, max_dropouts=1, max_colluders=1, min_contributors=3)
    _, sessions, _, boxes, _ = _signed(p, "abcd")
    zeros = [np.zeros(4096, np.uint64)]

    masked = sessions["a"].mask(p, zeros, [24], u2=list(sessions), shares_for_me={m: b["a"] for m, b in boxes.items()})

    assert np.count_nonzero(masked[0]) > 4000


@pytest.mark.parametrize(("before_mask", "before_unmask"), [(["s01"], []), ([], ["s03"]), (["s04"], ["s00"])])
def test_dropped_sites_are_unmasked_from_the_survivors_shares(before_mask, before_unmask):
    p = plan(6, max_dropouts=2, max_colluders=1, min_contributors=3)
    inputs = _inputs(6, 500, 24, seed=3)
    survivors = [n for n in inputs if n not in before_mask]
    expected = _plain_sum(inputs, survivors, [24, 64])

    total = run_round(
        p,
        {k: [s.copy() for s in v] for k, v in inputs.items()},
        [24, 64],
        drop_before_mask=before_mask,
        drop_before_unmask=before_unmask,
    )

    assert [t.tolist() for t in total] == [list(e) for e in expected]


def test_too_many_dropouts_abandon_the_round_and_release_nothing():
    p = plan(4, max_dropouts=1, max_colluders=1, min_contributors=3)
    inputs = _inputs(4, 100, 24)

    with pytest.raises(SecAggAbandoned, match="fewer than"):
        run_round(p, inputs, [24, 64], drop_before_mask=["s00", "s01"])


def test_a_site_refuses_to_unmask_below_min_contributors():
    p = plan(6, max_dropouts=2, max_colluders=0, min_contributors=3)
    ids, sessions, _, boxes, _ = _signed(p, "abcdef")
    site = sessions["a"]
    site.mask(p, [np.zeros(8, np.uint64)], [24], u2=list(sessions), shares_for_me={m: b["a"] for m, b in boxes.items()})

    with pytest.raises(SecAggAbandoned, match="refuses to unmask"):
        site.consistency(p, ["a", "b"], ids.private["a"])
    with pytest.raises(SecAggAbandoned, match="refuses to unmask"):
        site.unmask(p, ["a", "b"], {}, ids.public)


def test_a_site_answers_one_unmask_request_only():
    # A coordinator asking twice (first "b survived", then "b dropped") would get both of
    # b's secrets from one holder; the second request is refused.
    p = plan(4, max_dropouts=1, max_colluders=0, min_contributors=3)
    ids, sessions, _, boxes, _ = _signed(p, "abcd")
    for n, s in sessions.items():
        s.mask(p, [np.zeros(8, np.uint64)], [24], u2=list(sessions), shares_for_me={m: b[n] for m, b in boxes.items()})
    sigs = {n: s.consistency(p, list("abcd"), ids.private[n]) for n, s in sessions.items()}
    site = sessions["a"]
    site.unmask(p, list("abcd"), sigs, ids.public)

    with pytest.raises(CryptoError, match="already answered"):
        site.unmask(p, ["a", "c", "d"], sigs, ids.public)


def test_a_share_sealed_for_another_site_is_refused():
    p = plan(4, max_dropouts=1, max_colluders=0, min_contributors=3)
    ids, sessions, _, boxes, _ = _signed(p, "abcd")
    for n, s in sessions.items():
        mine = {m: b["b" if n == "a" else n] for m, b in boxes.items()}  # b's shares handed to a
        s.mask(p, [np.zeros(8, np.uint64)], [24], u2=list(sessions), shares_for_me=mine)
    sigs = {n: s.consistency(p, list(sessions), ids.private[n]) for n, s in sessions.items()}

    with pytest.raises(CryptoError, match="share rejected"):
        sessions["a"].unmask(p, list(sessions), sigs, ids.public)


def test_a_rejected_masked_input_leaves_no_trace():
    p = plan(4, max_dropouts=1, max_colluders=0, min_contributors=3)
    _, _, roster, _, commits = _signed(p, "abcd")
    unmasker = Unmasker(p, roster, run_id="r", round_id=1, u2="abcd", commitments=commits, sizes=[4], bits=[8])
    before = unmasker.sum[0].copy()

    with pytest.raises(CryptoError, match="wrong length"):
        unmasker.add("a", [np.array([1, 2, 3, 4, 5], np.uint64)])
    with pytest.raises(CryptoError, match="not unsigned"):
        unmasker.add("a", [np.array([1.0, 2, 3, 4])])

    assert np.array_equal(unmasker.sum[0], before)
    assert unmasker.u3 == []


def test_the_session_survives_serialisation():
    s = SiteSession.start("a", run_id="r", round_id=2)

    assert SiteSession.from_bytes(s.to_bytes()) == s


@pytest.mark.parametrize("bits", [12, 24, 32, 40])
def test_batched_masking_equals_mask_by_mask(bits):
    rng = np.random.default_rng(5)
    start = rng.integers(0, 2**bits, size=777, dtype=np.uint64)
    masks = [(bytes([i]) * 32, f"m{i}", i % 2 == 1) for i in range(4)]
    one_by_one = start.copy()
    for seed, label, subtract in masks:
        prg.expand_into(one_by_one, seed, label, bits, subtract=subtract)
    batched = start.copy()

    prg.apply_masks(batched, bits, masks)

    assert np.array_equal(batched, one_by_one)


@pytest.mark.parametrize("bits", [12, 24, 36])
def test_the_wire_form_round_trips_modulo_the_segment_width(bits):
    from fedinfra.crypto.secagg import codec

    rng = np.random.default_rng(9)
    segs = [rng.integers(0, 2**bits, size=1001, dtype=np.uint64), np.array([7, 1], np.uint64)]
    wire = codec.to_wire(segs, [bits, 64])

    back = codec.from_wire(wire, [1001, 2], [bits, 64])

    assert len(wire) == 1001 * ((bits + 7) // 8) + 16
    assert np.array_equal(back[0].astype(np.uint64) & np.uint64(2**bits - 1), segs[0])
    assert back[1].tolist() == [7, 1]
    with pytest.raises(CryptoError, match="expected"):
        codec.from_wire(wire[:-1], [1001, 2], [bits, 64])


@pytest.mark.parametrize("modulus", [1613, (1 << 50) - 27, 1125899906826241])
def test_masks_modulo_a_prime_are_exact_and_deterministic(modulus):
    rng = np.random.default_rng(4)
    start = rng.integers(0, modulus, size=5000, dtype=np.uint64)
    masks = [(bytes([i]) * 32, f"m{i}", i % 3 == 0) for i in range(7)]
    expected = start.astype(object)
    for seed, label, subtract in masks:
        m = prg.expand_mod(seed, label, start.shape[0], modulus)
        assert int(m.max()) < modulus
        assert np.array_equal(m, prg.expand_mod(seed, label, start.shape[0], modulus))
        expected = (expected - m.astype(object)) % modulus if subtract else (expected + m.astype(object)) % modulus
    got = start.copy()

    prg.apply_masks_mod(got, modulus, masks)

    assert got.astype(object).tolist() == expected.tolist()


# -- field and mask-width boundaries (issue 20: mutation survivors) ------------------------------


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_a_threshold_of_one_gives_every_holder_the_secret():
    assert shamir.split(7, threshold=1, count=3, prime=1613, coefficients=[]) == [(1, 7), (2, 7), (3, 7)]


@pytest.mark.parametrize(("threshold", "count"), [(0, 3), (4, 3)])
def test_a_threshold_outside_one_to_count_is_refused(threshold, count):
    with pytest.raises(ValueError, match=_exactly(f"threshold={threshold} must be between 1 and count={count}")):
        shamir.split(1, threshold=threshold, count=count, prime=1613)


def test_shares_need_a_nonzero_field_element_each():
    assert shamir.split(1, threshold=2, count=6, prime=7, coefficients=[1])[-1] == (6, 0)
    with pytest.raises(ValueError, match=_exactly("more shares than field elements")):
        shamir.split(1, threshold=2, count=7, prime=7, coefficients=[1])


def test_the_secret_is_a_field_element_zero_included():
    assert shamir.split(0, threshold=2, count=3, prime=7, coefficients=[1]) == [(1, 1), (2, 2), (3, 3)]
    for secret in (7, -1):
        with pytest.raises(ValueError, match=_exactly("secret does not fit the field")):
            shamir.split(secret, threshold=2, count=3, prime=7, coefficients=[1])


def test_the_number_of_coefficients_must_match_the_degree():
    with pytest.raises(ValueError, match=_exactly("need 2 coefficients, got 1")):
        shamir.split(5, threshold=3, count=4, prime=1613, coefficients=[1])


@pytest.mark.parametrize("x", [0, 1613], ids=["zero", "the-prime"])
def test_a_share_at_zero_is_refused_it_would_be_the_secret(x):
    shares = shamir.split(1234, threshold=3, count=6, prime=1613, coefficients=[166, 94])

    with pytest.raises(CryptoError, match=_exactly("secret sharing: shares must have distinct non-zero indices")):
        shamir.combine([(x, 1234), *shares[:2]], prime=1613)


def test_a_share_encodes_as_66_big_endian_bytes_inside_the_field():
    assert shamir.to_bytes(1) == bytes(65) + b"\x01"
    assert shamir.from_bytes(bytes(65) + b"\x01") == 1
    assert shamir.from_bytes(shamir.to_bytes(shamir.PRIME - 1)) == shamir.PRIME - 1
    with pytest.raises(CryptoError, match=_exactly("secret sharing: a share is outside the field")):
        shamir.from_bytes(shamir.to_bytes(shamir.PRIME))
    with pytest.raises(CryptoError, match=_exactly("secret sharing: a share has the wrong length")):
        shamir.from_bytes(bytes(65))


@pytest.mark.parametrize("bits", [1, 64])
def test_mask_widths_from_one_to_sixty_four_bits(bits):
    values = prg.expand(bytes(32), "pair", 256, bits)

    assert values.dtype == np.uint64
    assert set(np.unique(values).tolist()) == {0, 1} if bits == 1 else int(values.max()) >= 2**63


@pytest.mark.parametrize("bits", [0, 65])
def test_a_mask_width_outside_one_to_sixty_four_is_refused(bits):
    with pytest.raises(ValueError, match=_exactly(f"mask width {bits} bits must be between 1 and 64")):
        prg.expand(bytes(32), "pair", 4, bits)


def test_an_empty_mask_is_allowed_a_negative_length_is_not():
    assert prg.expand(bytes(32), "pair", 0, 24).shape == (0,)
    with pytest.raises(ValueError, match=_exactly("negative mask length")):
        prg.expand(bytes(32), "pair", -1, 24)


def test_up_to_32_bits_a_mask_reads_4_keystream_bytes_per_value_above_8():
    seed, n = bytes(range(32)), 512
    words32 = prg.raw_words(seed, "pair", n).astype(np.uint64)
    words64 = prg.expand(seed, "pair", n, 64)

    assert np.array_equal(prg.expand(seed, "pair", n, 32), words32)
    assert np.array_equal(prg.expand(seed, "pair", n, 20), words32 & np.uint64(2**20 - 1))
    assert np.array_equal(prg.expand(seed, "pair", n, 33), words64 & np.uint64(2**33 - 1))
    assert int(prg.expand(seed, "pair", n, 33).max()) >= 2**32


def test_expand_into_adds_unless_told_to_subtract():
    seed, mask = bytes(32), prg.expand(bytes(32), "pair", 8, 24)
    acc = np.zeros(8, dtype=np.uint64)

    prg.expand_into(acc, seed, "pair", 24)

    assert np.array_equal(acc, mask)


@pytest.mark.parametrize(("n", "k"), [(6, 2), (6, 4), (7, 4), (8, 6), (9, 6), (10, 3), (10, 5), (12, 7)])
def test_every_harary_neighbour_set_has_exactly_k_members_and_the_graph_is_symmetric(n: int, k: int) -> None:
    from fedinfra.crypto.secagg.plan import SecAggPlan

    p = SecAggPlan(n=n, k=k, t=k // 2 + 1, max_dropouts=0, max_colluders=0, min_contributors=1)

    graph = neighbours(p, hashlib.sha256(f"{n}/{k}".encode()).digest())

    assert [len(nb) for nb in graph] == [k] * n  # k = n - 2 too: not the full graph
    assert all(i not in nb for i, nb in enumerate(graph))
    assert all(i in graph[j] for i, nb in enumerate(graph) for j in nb)


def test_the_graph_seed_binds_run_round_and_roster_under_its_own_label() -> None:
    from fedinfra.crypto.secagg.plan import graph_seed

    seed = graph_seed("run-1", 3, b"roster")

    assert seed == hashlib.sha256(b"fedinfra/secagg/v1/graph\x00run-1\x003\x00roster").digest()
    assert (
        len(
            {
                seed,
                graph_seed("run-2", 3, b"roster"),
                graph_seed("run-1", 4, b"roster"),
                graph_seed("run-1", 3, b"other"),
            }
        )
        == 4
    )


def _reference_harary(n: int, k: int, seed: bytes) -> list[frozenset[int]]:
    """Bell et al. (CCS 2020) section 3.1 written as a distance rule: order the sites by their 32-bit
    draw under the label "graph" (ties to the lower index); two sites are neighbours when their
    distance around that cycle is at most floor(k/2), or, for odd k, exactly n // 2 (opposite)."""
    draws = [int(v) for v in prg.expand(seed, "graph", n, 32)]
    place = np.empty(n, dtype=np.int64)
    place[sorted(range(n), key=lambda i: (draws[i], i))] = np.arange(n)
    graph = []
    for i in range(n):
        gap = np.abs(place - place[i])
        distance = np.minimum(gap, n - gap)
        joined = ((distance >= 1) & (distance <= k // 2)) | ((k % 2 == 1) & (gap == n // 2))
        graph.append(frozenset(int(j) for j in np.flatnonzero(joined)))
    return graph


@pytest.mark.parametrize(("n", "k"), [(33, 12), (40, 13), (64, 13), (100, 16)])
def test_every_site_derives_the_same_graph_from_the_public_seed(n: int, k: int) -> None:
    """The graph is part of the protocol: every site computes it alone from the public seed, so the
    label, the draw width and the order must be exactly those specified, or sites disagree on who
    holds whose shares."""
    from fedinfra.crypto.secagg.plan import SecAggPlan

    seed = hashlib.sha256(f"graph/{n}/{k}".encode()).digest()
    p = SecAggPlan(n=n, k=k, t=k // 2 + 1, max_dropouts=0, max_colluders=0, min_contributors=2)

    assert neighbours(p, seed) == _reference_harary(n, k, seed)


def test_sites_with_equal_draws_are_ordered_by_index_on_every_platform() -> None:
    """Two equal 32-bit draws (seed found by search: sites 1/2^32 apart happen at n = 5000) must be
    ordered the same way at every site: a stable sort, not numpy's default (introsort, or a SIMD sort
    whose order of equal keys depends on the CPU)."""
    from fedinfra.crypto.secagg.plan import SecAggPlan

    n, k = 5000, 27
    seed = hashlib.sha256(b"tie252").digest()
    draws = prg.expand(seed, "graph", n, 32)
    _, counts = np.unique(draws, return_counts=True)
    assert counts.max() == 2  # the tie this test is about
    p = SecAggPlan(n=n, k=k, t=14, max_dropouts=0, max_colluders=0, min_contributors=2)

    assert neighbours(p, seed) == _reference_harary(n, k, seed)
