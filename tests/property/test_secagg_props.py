"""Properties of SecAgg: exact sums under any tolerable dropouts; masked inputs look uniform."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedinfra.crypto.secagg import plan, prg
from fedinfra.crypto.secagg.local import identities, run_round
from fedinfra.crypto.secagg.protocol import Roster, SiteSession, pair_seed


@st.composite
def _rounds(draw):
    n = draw(st.integers(min_value=3, max_value=9))
    d = draw(st.integers(min_value=0, max_value=(n - 2) // 2))
    p = plan(n, max_dropouts=d, max_colluders=0, min_contributors=2) if n - d >= 2 and n > 2 * d else None
    drops = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=d))
    split = draw(st.integers(0, len(drops)))
    size = draw(st.integers(1, 64))
    bits = draw(st.sampled_from([8, 12, 24, 33]))
    seed = draw(st.integers(0, 2**32 - 1))
    return p, drops[:split], drops[split:], size, bits, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rounds())
def test_the_unmasked_sum_is_the_exact_integer_sum_for_any_tolerable_dropouts(case):
    _check_exact(case)


def _check_exact(case):
    p, before_mask, before_unmask, size, bits, seed = case
    assert p is not None
    rng = np.random.default_rng(seed)
    names = [f"s{i}" for i in range(p.n)]
    inputs = {n: [rng.integers(0, 2 ** (bits - 4), size=size, dtype=np.uint64)] for n in names}
    dropped = {names[i] for i in before_mask}
    expected = sum(inputs[n][0].astype(object) for n in names if n not in dropped) % 2**bits

    total = run_round(
        p,
        {k: [v[0].copy()] for k, v in inputs.items()},
        [bits],
        drop_before_mask=[names[i] for i in before_mask],
        drop_before_unmask=[names[i] for i in before_unmask],
    )

    assert total[0].tolist() == list(expected)


def test_a_masked_update_with_one_colluders_keys_is_uniform():
    # The coordinator sees y_a and holds colluding site d's keys, so it can strip the a-d
    # pairwise mask; what is left is x_a + PRG(b_a) + PRG(s_ab) + PRG(s_ac), which must be
    # uniform modulo 2^bits. Chi-square over 16 buckets of the top 4 bits, many rounds, a
    # constant input (the worst case: all-zero update).
    from scipy.stats import chisquare

    p = plan(4, max_dropouts=1, max_colluders=1, min_contributors=3)
    bits, size, rounds = 12, 2048, 40
    counts = np.zeros(16, dtype=np.int64)
    ids = identities(list("abcd"))
    for rnd in range(rounds):
        sessions = {n: SiteSession.start(n, run_id="chi", round_id=rnd + 1) for n in "abcd"}
        roster = Roster(tuple(s.advertise(ids.private[n]) for n, s in sessions.items()))
        boxes = {n: s.share(p, roster, ids.public)[0] for n, s in sessions.items()}
        a, d = sessions["a"], sessions["d"]
        y = a.mask(
            p, [np.zeros(size, np.uint64)], [bits], u2="abcd", shares_for_me={m: b["a"] for m, b in boxes.items()}
        )
        seed = pair_seed(d.s_sk, roster.entries[0].s_pk)  # d's key and a's public key
        label = f"pair\x00chi\x00{rnd + 1}\x00a\x00d"
        prg.expand_into(y[0], seed, f"{label}\x000", bits, subtract=True)  # a added +mask (a < d)
        if rnd == 0:  # the stripping above is right: removing the other masks too gives x = 0
            rest = y[0].copy()
            prg.expand_into(rest, a.b_seed, "self\x00chi\x001\x00a\x000", bits, subtract=True)
            for peer, idx in (("b", 1), ("c", 2)):
                s_ap = pair_seed(a.s_sk, roster.entries[idx].s_pk)
                prg.expand_into(rest, s_ap, f"pair\x00chi\x001\x00a\x00{peer}\x000", bits, subtract=True)
            assert not rest.any()
        counts += np.bincount((y[0] >> np.uint64(bits - 4)).astype(np.int64), minlength=16)

    stat = chisquare(counts)

    assert stat.pvalue > 1e-3, stat


def test_the_colluder_view_test_detects_a_leak():
    # The same statistic on an unmasked, skewed update must fail: the test can fail.
    from scipy.stats import chisquare

    x = np.random.default_rng(0).integers(0, 2**11, size=40 * 2048).astype(np.uint64)
    counts = np.bincount((x >> np.uint64(8)).astype(np.int64), minlength=16)

    assert chisquare(counts).pvalue < 1e-6


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rounds())
def test_exact_sums_many_cases(case):
    _check_exact(case)
