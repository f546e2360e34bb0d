"""SecAgg protocol against a hostile coordinator or site (issue 20: mutation survivors of secagg.protocol).

Each test's docstring names the rule of Bonawitz et al., CCS 2017 (figure 4) / Bell et al., CCS 2020
that it protects. Refusals are matched by their exact wording, so a test cannot pass on another error.
Most rounds run on a SecAgg+ graph that is not complete (8 sites, k = 4, t = 3), so a site's
neighbourhood differs from the roster and "a share from a site not in the graph" exists.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

import numpy as np
import pytest

from fedinfra.crypto import _sign
from fedinfra.crypto.secagg import _primitives, prg, shamir
from fedinfra.crypto.secagg.local import Identities, identities
from fedinfra.crypto.secagg.plan import SecAggPlan, graph_seed, neighbours
from fedinfra.crypto.secagg.protocol import (
    MOD_LABEL,
    Roster,
    RosterEntry,
    SecAggAbandoned,
    SiteSession,
    Unmasker,
    add_masks,
    commitment,
    recover_masks,
    sign_entry,
    verify_roster,
    verify_survivors,
)
from fedinfra.errors import CryptoError

NAMES = tuple("abcdefgh")
#: SecAgg+ on 8 sites: each holds shares of its 4 neighbours and itself, any 3 rebuild a secret.
SPARSE = SecAggPlan(n=8, k=4, t=3, max_dropouts=2, max_colluders=0, min_contributors=3)


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


@dataclass
class _Round:
    """Every site of one round after stage 2 (keys advertised, roster checked, shares sealed)."""

    p: SecAggPlan
    ids: Identities
    sessions: dict[str, SiteSession]
    roster: Roster
    boxes: dict[str, dict[str, bytes]]  # sender -> holder -> sealed share
    commits: dict[str, bytes]
    run_id: str
    round_id: int

    def mine(self, holder: str, u2=None) -> dict[str, bytes]:
        """The sealed shares addressed to ``holder`` from the sites of ``u2``."""
        u2 = self.sessions if u2 is None else u2
        return {s: box[holder] for s, box in self.boxes.items() if holder in box and s in u2}

    def graph(self) -> list[frozenset[int]]:
        return neighbours(self.p, graph_seed(self.run_id, self.round_id, self.roster.digest()))

    def hood(self, site: str) -> set[str]:
        """``site``'s neighbourhood, itself included (the holders of its shares)."""
        i = self.roster.index(site)
        return {self.roster.entries[j].name for j in self.graph()[i] | {i}}


def _round(p: SecAggPlan = SPARSE, names=NAMES, run_id: str = "r", round_id: int = 1) -> _Round:
    ids = identities(list(names))
    sessions = {n: SiteSession.start(n, run_id=run_id, round_id=round_id) for n in names}
    roster = Roster(tuple(sessions[n].advertise(ids.private[n]) for n in names))
    shared = {n: s.share(p, roster, ids.public) for n, s in sessions.items()}
    return _Round(
        p,
        ids,
        sessions,
        roster,
        {n: b for n, (b, _) in shared.items()},
        {n: c for n, (_, c) in shared.items()},
        run_id,
        round_id,
    )


def _run(r: _Round, inputs, bits, *, u3, answering=None, tamper=None):
    """Stages 3 and 4 with ``u3`` sending masked inputs; returns (unmasker, responses)."""
    u2 = list(r.sessions)
    sizes = [s.shape[0] for s in next(iter(inputs.values()))]
    unmasker = Unmasker(
        r.p, r.roster, run_id=r.run_id, round_id=r.round_id, u2=u2, commitments=r.commits, sizes=sizes, bits=bits
    )
    for n in u2:
        masked = r.sessions[n].mask(r.p, [s.copy() for s in inputs[n]], bits, u2=u2, shares_for_me=r.mine(n))
        if n in u3:
            unmasker.add(n, masked)
    answering = list(u3) if answering is None else answering
    sigs = {n: r.sessions[n].consistency(r.p, list(u3), r.ids.private[n]) for n in answering}
    responses = {n: r.sessions[n].unmask(r.p, list(u3), sigs, r.ids.public) for n in answering}
    if tamper:
        tamper(responses)
    return unmasker, responses


def _plain(inputs, names, bits):
    return [[int(v) % 2**b for v in sum(inputs[n][i].astype(object) for n in names)] for i, b in enumerate(bits)]


# -- the roster --------------------------------------------------------------------------------------


def _keys(i: int) -> tuple[bytes, bytes]:
    return bytes([i]) * 32, bytes([100 + i]) * 32


def test_a_roster_must_be_sorted_unique_names_with_distinct_32_byte_keys():
    """Roster invariants: index i is Shamir x-coordinate i + 1, so order and uniqueness are the share map."""
    a, b = RosterEntry("a", *_keys(1)), RosterEntry("b", *_keys(2))

    assert Roster((a, b)).names == ["a", "b"]
    for entries in ((b, a), (a, replace(a, c_pk=_keys(3)[0], s_pk=_keys(3)[1]))):
        with pytest.raises(CryptoError, match=_exactly("secure aggregation: roster names must be unique and sorted")):
            Roster(entries)
    keys_msg = _exactly("secure aggregation: roster keys must be distinct 32-byte X25519 keys")
    with pytest.raises(CryptoError, match=keys_msg):
        Roster((a, RosterEntry("b", a.c_pk, _keys(2)[1])))  # b re-uses a's share-channel key
    with pytest.raises(CryptoError, match=keys_msg):
        Roster((a, RosterEntry("b", _keys(2)[0], b"\x07" * 31)))
    with pytest.raises(CryptoError, match=keys_msg):
        Roster((a, RosterEntry("b", b"\x07" * 33, _keys(2)[1])))


def test_a_site_absent_from_the_roster_is_named():
    """roster.index is how a share's x-coordinate is found: an absent site is an error, never index -1 or 0."""
    roster = Roster((RosterEntry("a", *_keys(1)), RosterEntry("b", *_keys(2))))

    assert (roster.index("a"), roster.index("b")) == (0, 1)
    with pytest.raises(CryptoError, match=_exactly("secure aggregation: site 'z' is not in the round's roster")):
        roster.index("z")


def test_the_roster_digest_covers_every_name_and_key_under_its_label():
    """The digest binds the graph and the survivor signatures to exactly these names and keys."""
    entries = (RosterEntry("a", *_keys(1)), RosterEntry("b", *_keys(2)))
    expected = hashlib.sha256(
        b"fedinfra/secagg/v1/roster\x00" + b"a\x00" + _keys(1)[0] + _keys(1)[1] + b"b\x00" + _keys(2)[0] + _keys(2)[1]
    ).digest()

    assert Roster(entries).digest() == expected
    assert Roster((entries[0], replace(entries[1], s_pk=_keys(3)[1]))).digest() != expected


def test_the_roster_json_round_trips_and_malformed_json_is_refused_by_name():
    """The roster reaches a site through the coordinator: anything but the documented form is refused."""
    r = _round(names=NAMES[:4], p=SecAggPlan(n=4, k=3, t=3, max_dropouts=1, max_colluders=0, min_contributors=3))
    doc = r.roster.to_json()

    assert doc[0] == [
        "a",
        r.roster.entries[0].c_pk.hex(),
        r.roster.entries[0].s_pk.hex(),
        r.roster.entries[0].sig.hex(),
    ]
    assert Roster.from_json(doc) == r.roster
    for bad in ({"a": 1}, [["a", "00", "00"]], [["a", "zz", "00", ""]], [["a", 1, "00", ""]], "abcd"):
        with pytest.raises(CryptoError, match=_exactly("secure aggregation: malformed roster")):
            Roster.from_json(bad)


# -- identity signatures: keys and survivor lists ------------------------------------------------------


def test_the_key_signature_covers_run_round_name_and_both_keys_under_its_label():
    """A signed advertisement cannot be moved to another run, round, name or key pair (section 6.2)."""
    ids = identities(["a"])
    entry = sign_entry(RosterEntry("a", *_keys(1)), ids.private["a"], run_id="run-7", round_id=3)
    digest = hashlib.sha256(b"fedinfra/secagg/v1/keys\x00run-7\x003\x00a\x00" + _keys(1)[0] + _keys(1)[1]).digest()

    _sign.verify(ids.public["a"], digest, entry.sig)
    verify_roster(Roster((entry,)), ids.public, run_id="run-7", round_id=3)
    for run_id, round_id in (("run-8", 3), ("run-7", 4)):
        with pytest.raises(CryptoError, match="swapped keys"):
            verify_roster(Roster((entry,)), ids.public, run_id=run_id, round_id=round_id)


def test_an_unsigned_or_unpinned_roster_entry_is_refused_by_name():
    """Sybil (no pinned identity) and swapped/unsigned keys are two refusals, each naming the site."""
    ids = identities(["a", "b"])
    a = sign_entry(RosterEntry("a", *_keys(1)), ids.private["a"], run_id="r", round_id=1)
    unsigned = RosterEntry("b", *_keys(2))

    with pytest.raises(
        CryptoError,
        match=_exactly(
            "secure aggregation: the keys advertised for 'b' are not signed by its pinned identity key "
            "(swapped keys); round refused"
        ),
    ):
        verify_roster(Roster((a, unsigned)), ids.public, run_id="r", round_id=1)
    with pytest.raises(
        CryptoError,
        match=_exactly(
            "secure aggregation: roster site 'b' has no pinned identity key in this site's kit (sybil site); "
            "round refused"
        ),
    ):
        verify_roster(Roster((a, unsigned)), {"a": ids.public["a"]}, run_id="r", round_id=1)


def test_an_advertisement_without_an_identity_key_is_unsigned():
    """advertise() signs only when given the site's identity key; the keys are the session's own."""
    s = SiteSession.start("a", run_id="r", round_id=1)
    ids = identities(["a"])

    plain, signed = s.advertise(), s.advertise(ids.private["a"])

    assert plain.sig == b""
    assert plain.keys == signed.keys == ("a", _primitives.public_of(s.c_sk), _primitives.public_of(s.s_sk))
    verify_roster(Roster((signed,)), ids.public, run_id="r", round_id=1)


def _digest_u3(r: _Round, u3) -> bytes:
    listing = "\x00".join(sorted(set(u3))).encode()
    return hashlib.sha256(
        b"fedinfra/secagg/v1/survivors\x00" + f"{r.run_id}\x00{r.round_id}\x00".encode() + r.roster.digest() + listing
    ).digest()


def _masked(r: _Round) -> None:
    for n, s in r.sessions.items():
        s.mask(r.p, [np.zeros(4, np.uint64)], [16], u2=list(r.sessions), shares_for_me=r.mine(n))


def test_a_survivor_signature_covers_run_round_roster_and_the_sorted_list():
    """consistency() signs the documented digest, and signing the same list again gives the same signature."""
    r = _round()
    _masked(r)
    u3 = ["b", "a", "c", "d", "e", "f"]

    sig = r.sessions["a"].consistency(r.p, u3, r.ids.private["a"])

    _sign.verify(r.ids.public["a"], _digest_u3(r, u3), sig)
    assert r.sessions["a"].consistency(r.p, sorted(u3), r.ids.private["a"]) == sig  # a retry, not a second list
    assert r.sessions["a"].u3_signed == tuple(sorted(u3))
    with pytest.raises(
        CryptoError,
        match=_exactly("secure aggregation: this site already signed another survivor list this round"),
    ):
        r.sessions["a"].consistency(r.p, u3[:-1], r.ids.private["a"])


def test_survivor_signatures_count_only_members_of_the_list_with_pinned_keys_in_any_order():
    """verify_survivors: a signer outside U3, an unpinned signer or a bad signature is skipped, not fatal."""
    r = _round()
    u3 = list("abc")
    digest = _digest_u3(r, u3)
    good = {n: _sign.sign(r.ids.private[n], digest) for n in u3}
    outsider = {"h": _sign.sign(r.ids.private["h"], digest)}  # a genuine key, but h is not in U3
    forged = {"a": _sign.sign(identities(["a"]).private["a"], digest)}

    def check(sigs, ids=r.ids.public, need=3):
        verify_survivors(r.roster, u3, sigs, ids, run_id="r", round_id=1, need=need)

    check(good)
    check({"zz": b"\x00" * 64, **{k: good[k] for k in ("b", "c")}, "a": good["a"]})  # the bad one first
    check({**forged, "b": good["b"], "c": good["c"]}, need=2)
    with pytest.raises(
        SecAggAbandoned,
        match=_exactly(
            "secure aggregation: 2 valid survivor signatures over this survivor list, fewer than 3; refused "
            "(the coordinator may be showing different lists to different sites)"
        ),
    ):
        check({**outsider, "b": good["b"], "c": good["c"]})
    with pytest.raises(SecAggAbandoned, match=r"^secure aggregation: 2 valid"):
        check({**forged, "b": good["b"], "c": good["c"]})
    with pytest.raises(SecAggAbandoned, match=r"^secure aggregation: 2 valid"):
        check(good, ids={n: k for n, k in r.ids.public.items() if n != "a"})
    with pytest.raises(
        SecAggAbandoned, match=r"^secure aggregation: 3 valid survivor signatures over this survivor list, fewer than 4"
    ):
        check(good, need=4)
    with pytest.raises(SecAggAbandoned, match=r"^secure aggregation: 0 valid"):
        verify_survivors(r.roster, u3, good, r.ids.public, run_id="r", round_id=2, need=1)


# -- stage 2: sharing --------------------------------------------------------------------------------


def test_a_site_shares_with_exactly_its_neighbourhood_itself_included_in_the_documented_boxes():
    """Each box opens under HKDF(X25519(c), aad) bound to run, round, sender and holder; t boxes rebuild b and s^SK."""
    r = _round()
    a = r.sessions["a"]
    hood = r.hood("a")

    assert set(r.boxes["a"]) == hood
    assert len(hood) == r.p.k + 1
    assert hood != set(NAMES)
    b_shares, s_shares = [], []
    for holder in sorted(hood):
        h = r.sessions[holder]
        aad = f"fedinfra/secagg/v1/share\x00r\x001\x00a\x00{holder}".encode()
        key = _primitives.hkdf(_primitives.agree(h.c_sk, _primitives.public_of(a.c_sk)), aad)
        plain = _primitives.open_sealed(key, r.boxes["a"][holder], aad)
        assert len(plain) == 2 * shamir.SHARE_BYTES
        x = r.roster.index(holder) + 1
        b_shares.append((x, shamir.from_bytes(plain[: shamir.SHARE_BYTES])))
        s_shares.append((x, shamir.from_bytes(plain[shamir.SHARE_BYTES :])))

    assert shamir.combine(b_shares[:3]) == shamir.combine(b_shares[2:]) == int.from_bytes(a.b_seed, "big")
    assert shamir.combine(s_shares[1:4]) == int.from_bytes(a.s_sk, "big")
    assert r.commits["a"] == commitment(a.b_seed) == hashlib.sha256(b"fedinfra/secagg/v1/b\x00" + a.b_seed).digest()
    assert len(a.b_seed) == 32
    assert a.roster == r.roster


def test_a_site_refuses_to_share_under_a_roster_without_its_keys_or_of_the_wrong_size():
    """The coordinator cannot hand a site a roster that swaps its own keys or disagrees with the plan."""
    ids = identities(list("abcd"))
    p = SecAggPlan(n=4, k=3, t=3, max_dropouts=1, max_colluders=0, min_contributors=3)
    sessions = {n: SiteSession.start(n, run_id="r", round_id=1) for n in "abcd"}
    roster = Roster(tuple(sessions[n].advertise(ids.private[n]) for n in "abcd"))
    other = SiteSession.start("a", run_id="r", round_id=1).advertise(ids.private["a"])

    with pytest.raises(CryptoError, match=_exactly("secure aggregation: the roster does not carry this site's keys")):
        sessions["a"].share(p, Roster((other, *roster.entries[1:])), ids.public)
    with pytest.raises(CryptoError, match=_exactly("secure aggregation: roster size differs from the plan")):
        sessions["a"].share(replace(p, n=5), roster, ids.public)
    with pytest.raises(CryptoError, match=_exactly("secure aggregation: site 'a' is not in the round's roster")):
        sessions["a"].share(p, Roster(roster.entries[1:]), ids.public)
    assert sessions["a"].roster is None  # nothing kept from a refused roster
    assert set(sessions["a"].share(p, roster, ids.public)[0]) == set("abcd")


# -- stage 3: masking --------------------------------------------------------------------------------


def test_a_masked_input_is_the_input_plus_the_self_mask_and_signed_pairwise_masks_of_sharing_neighbours():
    """y_u = x_u + PRG(b_u) + sum over neighbours v in U2 of +PRG(s_uv) if u < v else -PRG(s_uv), per segment."""
    r = _round()
    silent = sorted(r.hood("d") - {"d"})[0]  # a neighbour of d that did not share
    u2 = [n for n in NAMES if n != silent]
    d = r.sessions["d"]
    x = [np.arange(64, dtype=np.uint64), np.arange(5, dtype=np.uint64) * np.uint64(2**40)]
    bits = [20, 48]

    y = d.mask(r.p, [s.copy() for s in x], bits, u2=u2, shares_for_me=r.mine("d", u2))

    peers = sorted(r.hood("d") & set(u2) - {"d"})
    assert len(peers) == 3
    for i, b in enumerate(bits):
        want = x[i].astype(object) + prg.expand(d.b_seed, f"self\x00r\x001\x00d\x00{i}", x[i].size, b).astype(object)
        for v in peers:
            seed = _primitives.agree(d.s_sk, r.roster.entries[r.roster.index(v)].s_pk)
            lo, hi = sorted(("d", v))
            m = prg.expand(seed, f"pair\x00r\x001\x00{lo}\x00{hi}\x00{i}", x[i].size, b).astype(object)
            want = want + m if v > "d" else want - m
        assert y[i].tolist() == [int(w) % 2**b for w in want]
    assert d.u2 == tuple(sorted(u2))
    assert d.received == r.mine("d", u2)


def test_a_value_wider_than_its_segment_or_a_wrong_segment_count_is_refused_by_name():
    """A value of 2^bits would be masked modulo 2^bits and silently wrapped in the sum: refused."""
    r = _round()
    a, mine = r.sessions["a"], r.mine("a")

    def mask(segs, bits):
        return a.mask(r.p, segs, bits, u2=list(NAMES), shares_for_me=mine)

    width = _exactly("secure aggregation: a value exceeds its segment's width")
    with pytest.raises(CryptoError, match=width):
        mask([np.array([0, 2**12], np.uint64)], [12])
    with pytest.raises(CryptoError, match=width):
        mask([np.array([1, 2], np.int64)], [12])
    with pytest.raises(CryptoError, match=_exactly("secure aggregation: segment count does not match the widths")):
        mask([np.zeros(2, np.uint64)], [12, 12])
    assert a.u2 == ()  # nothing recorded for a refused input
    out = mask(
        [np.array([2**12 - 1], np.uint64), np.array([2**64 - 1], np.uint64), np.zeros(0, np.uint64)], [12, 64, 8]
    )
    assert [s.size for s in out] == [1, 1, 0]


def test_masks_modulo_the_plain_modulus_are_the_documented_streams_and_refuse_values_outside_it():
    """secagg+he: mask_mod draws PRG_mod(seed, label + MOD_LABEL), never the stream of a 2^bits mask."""
    r = _round()
    e, t = r.sessions["e"], 65537
    values = np.array([0, 1, t - 1], np.uint64)

    out = e.mask_mod(r.p, values.copy(), t, u2=list(NAMES), shares_for_me=r.mine("e"))

    assert MOD_LABEL == "\x00mod"
    want = values.astype(object) + prg.expand_mod(e.b_seed, "self\x00r\x001\x00e\x00mod", 3, t).astype(object)
    for v in sorted(r.hood("e") - {"e"}):
        seed = _primitives.agree(e.s_sk, r.roster.entries[r.roster.index(v)].s_pk)
        lo, hi = sorted(("e", v))
        m = prg.expand_mod(seed, f"pair\x00r\x001\x00{lo}\x00{hi}\x00mod", 3, t).astype(object)
        want = want + m if v > "e" else want - m
    assert out.tolist() == [int(w) % t for w in want]
    for bad in (np.array([t], np.uint64), np.array([1], np.int64)):
        with pytest.raises(CryptoError, match=_exactly("secure aggregation: a value exceeds the plain modulus")):
            e.mask_mod(r.p, bad, t, u2=list(NAMES), shares_for_me=r.mine("e"))
    assert e.mask_mod(r.p, np.zeros(0, np.uint64), t, u2=list(NAMES), shares_for_me=r.mine("e")).size == 0


def test_a_mask_request_is_checked_against_the_roster_the_floor_and_the_neighbours_shares():
    """check_mask_request: refusals by name; the floor max(t, min_contributors) is reached exactly."""
    p = replace(SPARSE, min_contributors=5)
    r = _round(p)
    a = r.sessions["a"]
    inconsistent = _exactly("secure aggregation: the list of sharing sites is inconsistent with the roster")

    with pytest.raises(CryptoError, match=_exactly("secure aggregation: mask before share")):
        SiteSession.start("a", run_id="r", round_id=1).check_mask_request(p, list(NAMES), {})
    with pytest.raises(CryptoError, match=inconsistent):
        a.check_mask_request(p, list("bcdefgh"), r.mine("a", "bcdefgh"))
    with pytest.raises(CryptoError, match=inconsistent):
        a.check_mask_request(p, [*NAMES, "z"], r.mine("a"))
    four = ["a", *sorted(r.hood("a") - {"a"})[:3]]
    with pytest.raises(
        SecAggAbandoned,
        match=_exactly("secure aggregation: only 4 sites shared keys, fewer than max(t=3, min_contributors=5)"),
    ):
        a.check_mask_request(p, four + four, r.mine("a", four))
    five = [*four, next(n for n in NAMES if n not in four)]
    assert a.check_mask_request(p, five, r.mine("a", five)) == r.hood("a")
    with pytest.raises(CryptoError, match=r"^secure aggregation: only 4 sites shared keys, fewer than max\(t=5"):
        a.check_mask_request(replace(p, t=5, min_contributors=3), four, r.mine("a", four))
    not_from = _exactly("secure aggregation: shares received do not match the sharing neighbours")
    with pytest.raises(CryptoError, match=not_from):
        a.check_mask_request(p, list(NAMES), r.mine("a", four))  # a sharing neighbour's box is missing
    outsider = next(n for n in NAMES if n not in r.hood("a"))
    with pytest.raises(CryptoError, match=not_from):
        a.check_mask_request(p, list(NAMES), {**r.mine("a"), outsider: r.boxes[outsider][outsider]})
    assert a.u2 == ()
    assert a.received == {}


# -- stage 4: consistency and unmasking ---------------------------------------------------------------


def test_a_survivor_list_that_does_not_fit_the_round_is_refused_before_anything_is_signed():
    """_check_u3: unmask before mask, duplicates, sites that did not share, the site itself absent, the floor."""
    r = _round(replace(SPARSE, min_contributors=4))
    a = r.sessions["a"]
    inconsistent = _exactly("secure aggregation: the survivor list is inconsistent with this round")
    u2 = list("abcdefg")  # h never shared
    for n in u2:
        r.sessions[n].mask(r.p, [np.zeros(2, np.uint64)], [8], u2=u2, shares_for_me=r.mine(n, u2))

    with pytest.raises(CryptoError, match=_exactly("secure aggregation: unmask before mask")):
        r.sessions["h"].consistency(r.p, list("abcd"), r.ids.private["h"])
    fresh = _round(r.p)
    with pytest.raises(CryptoError, match=_exactly("secure aggregation: unmask before mask")):
        fresh.sessions["a"].unmask(r.p, list("abcd"), {}, r.ids.public)
    for u3 in (list("abcda"), list("abcdh"), list("bcdef")):
        with pytest.raises(CryptoError, match=inconsistent):
            a.consistency(r.p, u3, r.ids.private["a"])
    with pytest.raises(
        SecAggAbandoned,
        match=_exactly(
            "secure aggregation: 3 survivors, fewer than max(t=3, min_contributors=4); this site refuses to unmask"
        ),
    ):
        a.consistency(r.p, list("abc"), r.ids.private["a"])
    with pytest.raises(SecAggAbandoned, match=r"^secure aggregation: 4 survivors, fewer than max\(t=5"):
        a.consistency(replace(r.p, t=5), list("abcd"), r.ids.private["a"])
    assert a.u3_signed == ()
    a.consistency(r.p, list("abcd"), r.ids.private["a"])  # exactly the floor
    assert a.u3_signed == tuple("abcd")


def test_unmasking_reveals_self_mask_shares_of_survivors_and_mask_key_shares_of_dropped_sites_never_both():
    """The core safety rule: per neighbour v, b_v's share iff v survived, s_v^SK's share iff v dropped."""
    r = _round()
    dropped = sorted(r.hood("a") - {"a"})[0]
    u3 = [n for n in NAMES if n != dropped]
    _masked(r)
    sigs = {n: r.sessions[n].consistency(r.p, u3, r.ids.private[n]) for n in u3}

    answers = {h: r.sessions[h].unmask(r.p, u3, sigs, r.ids.public) for h in u3}

    for h, answer in answers.items():
        assert set(answer) == r.hood(h)  # one answer per neighbour that shared with h, h itself included
        for v, (kind, share) in answer.items():
            assert (kind, len(share)) == ("s" if v == dropped else "b", shamir.SHARE_BYTES)
    got = [(r.roster.index(h) + 1, shamir.from_bytes(a[dropped][1])) for h, a in answers.items() if dropped in a]
    assert len(got) == r.p.k
    assert shamir.combine(got[:3]) == int.from_bytes(r.sessions[dropped].s_sk, "big")
    for survivor in u3:
        got = [(r.roster.index(h) + 1, shamir.from_bytes(a[survivor][1])) for h, a in answers.items() if survivor in a]
        assert shamir.combine(got[-3:]) == int.from_bytes(r.sessions[survivor].b_seed, "big")
    assert all(s.unmasked for h, s in r.sessions.items() if h in answers)


def test_unmask_needs_t_signatures_over_the_list_this_site_signed_and_answers_once():
    """A coordinator cannot collect shares for a list the site did not sign, or with fewer than t signatures."""
    r = _round()
    _masked(r)
    u3 = list("abcdef")
    sigs = {n: r.sessions[n].consistency(r.p, u3, r.ids.private[n]) for n in u3}
    a = r.sessions["a"]

    with pytest.raises(
        CryptoError, match=_exactly("secure aggregation: unmask asked for a survivor list this site did not sign")
    ):
        a.unmask(r.p, list("abcdeg"), sigs, r.ids.public)
    with pytest.raises(
        SecAggAbandoned,
        match=r"^secure aggregation: 2 valid survivor signatures over this survivor list, fewer than 3;",
    ):
        a.unmask(r.p, u3, {n: sigs[n] for n in "ab"}, r.ids.public)
    with pytest.raises(
        SecAggAbandoned,
        match=r"^secure aggregation: 3 valid survivor signatures over this survivor list, fewer than 4;",
    ):
        a.unmask(replace(r.p, t=4, min_contributors=3), u3, {n: sigs[n] for n in "abc"}, r.ids.public)
    assert not a.unmasked
    a.unmask(r.p, u3, {n: sigs[n] for n in "abc"}, r.ids.public)
    with pytest.raises(
        CryptoError, match=_exactly("secure aggregation: this site already answered the unmask request")
    ):
        a.unmask(r.p, u3, sigs, r.ids.public)


def test_a_share_box_from_another_run_or_round_is_refused_when_opened():
    """Boxes are bound to run and round (their aad): a coordinator replaying last round's boxes gets nothing."""
    p = SecAggPlan(n=4, k=3, t=3, max_dropouts=1, max_colluders=0, min_contributors=3)
    ids = identities(list("abcd"))
    for run_id, round_id in (("r", 2), ("q", 1)):
        one = {n: SiteSession.start(n, run_id="r", round_id=1) for n in "abcd"}
        # The same keys in another round (the worst case: only the aad differs).
        two = {n: replace(s, run_id=run_id, round_id=round_id) for n, s in one.items()}
        roster1 = Roster(tuple(one[n].advertise(ids.private[n]) for n in "abcd"))
        roster2 = Roster(tuple(two[n].advertise(ids.private[n]) for n in "abcd"))
        old = {n: s.share(p, roster1, ids.public)[0] for n, s in one.items()}
        for s in two.values():
            s.share(p, roster2, ids.public)
        for n, s in two.items():
            s.mask(p, [np.zeros(2, np.uint64)], [8], u2=list("abcd"), shares_for_me={m: b[n] for m, b in old.items()})
        sigs = {n: s.consistency(p, list("abcd"), ids.private[n]) for n, s in two.items()}

        with pytest.raises(
            CryptoError,
            match=_exactly("secure aggregation: share rejected (not sealed for this site, run and round)"),
        ):
            two["a"].unmask(p, list("abcd"), sigs, ids.public)


def test_a_sessions_state_round_trips_after_every_stage_and_old_state_loads_with_defaults():
    """The site keeps its session on disk between stages: every field, the signed list and the answer flag."""
    r = _round()
    _masked(r)
    a = r.sessions["a"]
    a.sampled = 9
    a.consistency(r.p, list(NAMES), r.ids.private["a"])
    a.unmask(
        r.p,
        list(NAMES),
        {n: r.sessions[n].consistency(r.p, list(NAMES), r.ids.private[n]) for n in "bcd"},
        r.ids.public,
    )

    back = SiteSession.from_bytes(a.to_bytes())

    assert back == a
    assert (back.unmasked, back.sampled, back.u3_signed, back.roster) == (True, 9, tuple(NAMES), r.roster)
    import json

    doc = json.loads(a.to_bytes())
    del doc["sampled"], doc["u3_signed"]
    old = SiteSession.from_bytes(json.dumps(doc).encode())
    assert (old.sampled, old.u3_signed, old.received) == (0, (), a.received)
    fresh = SiteSession.start("z", run_id="r", round_id=3)
    assert SiteSession.from_bytes(fresh.to_bytes()) == fresh
    assert fresh.roster is None


# -- the coordinator: summing and unmasking -----------------------------------------------------------

BITS = [30, 8, 32, 64]  # 30 and 8 are summed in uint32 and reduced; 32 wraps exactly; 64 in uint64


def _inputs4(names, seed=0):
    rng = np.random.default_rng(seed)
    return {
        n: [rng.integers(0, 2**b, size=sz, dtype=np.uint64) for b, sz in zip(BITS, (40, 3, 5, 4), strict=True)]
        for n in names
    }


@pytest.mark.parametrize("dropped", [(), ("c",), ("a", "h")], ids=["none", "one", "two"])
def test_the_sum_of_survivors_is_exact_and_the_pairwise_masks_of_dropped_sites_are_removed_exactly(dropped):
    """On a SecAgg+ graph (k < n - 1): dropped sites' masks are removed only toward their neighbours."""
    r = _round()
    inputs = _inputs4(NAMES, seed=len(dropped))
    u3 = [n for n in NAMES if n not in dropped]
    unmasker, responses = _run(r, inputs, BITS, u3=u3)

    total = unmasker.finish(responses)

    assert [s.dtype for s in total] == [np.uint32, np.uint32, np.uint32, np.uint64]
    assert [s.tolist() for s in total] == _plain(inputs, u3, BITS)


def test_a_survivor_silent_at_unmasking_is_unmasked_from_its_neighbours_answers():
    """Dropping after sending the input (Bonawitz et al., section 4): b_u is rebuilt from t other holders."""
    r = _round()
    inputs = _inputs4(NAMES, seed=4)
    dropped = sorted(r.hood("a") - {"a"})[0]
    u3 = [n for n in NAMES if n != dropped]
    # a sent its input, then went quiet: with `dropped`, two of the k + 1 = 5 holders of `dropped`'s
    # shares are missing (max_dropouts = 2), and exactly t = 3 answer
    unmasker, responses = _run(r, inputs, BITS, u3=u3, answering=[n for n in u3 if n != "a"])

    assert [s.tolist() for s in unmasker.finish(responses)] == _plain(inputs, u3, BITS)


def test_the_sum_needs_only_t_answers_per_secret_and_ignores_shares_from_outside_the_graph():
    """recover_masks uses t answers per secret, never a response from outside the owner's neighbourhood."""
    r = _round()
    inputs = _inputs4(NAMES, seed=5)
    dropped = sorted(set(NAMES) - r.hood("a"))[0]  # a is not its neighbour and answers first
    u3 = [n for n in NAMES if n != dropped]
    outsiders = sorted(set(NAMES) - r.hood(dropped))
    assert outsiders[0] == "a"
    bogus = ("s", shamir.to_bytes(12345))

    def tamper(responses):
        for o in outsiders:  # not holders of d's shares: anything they claim about d must be ignored
            responses[o][dropped] = bogus

    unmasker, responses = _run(r, inputs, BITS, u3=u3, tamper=tamper)

    assert [s.tolist() for s in unmasker.finish(responses)] == _plain(inputs, u3, BITS)


def test_a_lying_or_malformed_holder_beyond_the_first_t_is_not_used_and_one_among_them_abandons():
    """Only the first t usable shares are combined; a wrong kind or malformed share is skipped, not fatal."""
    r = _round()
    inputs = _inputs4(NAMES, seed=6)
    u3 = list(NAMES)
    holders = sorted(r.hood("a"))

    def lie_last(responses):  # the holders after the first three lie about a's self-mask
        for h in holders[3:]:
            responses[h]["a"] = ("b", shamir.to_bytes(7))

    unmasker, responses = _run(r, inputs, BITS, u3=u3, tamper=lie_last)
    assert [s.tolist() for s in unmasker.finish(responses)] == _plain(inputs, u3, BITS)

    def skip_two(responses):  # two unusable answers first: the next three holders fill in
        first = sorted(r2.hood("a"))
        responses[first[0]]["a"] = ("s", responses[first[0]]["a"][1])  # the wrong kind
        responses[first[1]]["a"] = ("b", b"\x00" * 65)  # malformed: wrong length

    r2 = _round()
    unmasker, responses = _run(r2, inputs, BITS, u3=u3, tamper=skip_two)
    assert [s.tolist() for s in unmasker.finish(responses)] == _plain(inputs, u3, BITS)

    def skip_three(responses):  # and one holder does not answer for a: two shares are left
        skip_two(responses)
        del responses[sorted(r2.hood("a"))[2]]["a"]

    r2 = _round()
    unmasker, responses = _run(r2, inputs, BITS, u3=u3, tamper=skip_three)
    with pytest.raises(
        SecAggAbandoned, match=_exactly("secure aggregation: 2 shares of 'a', fewer than t=3; round abandoned")
    ):
        unmasker.finish(responses)

    def corrupt_first(responses):
        responses[sorted(r2.hood("a"))[0]]["a"] = ("b", shamir.to_bytes(7))

    r2 = _round()
    unmasker, responses = _run(r2, inputs, BITS, u3=u3, tamper=corrupt_first)
    with pytest.raises(SecAggAbandoned, match=_exactly("secure aggregation: shares of 'a' are inconsistent")):
        unmasker.finish(responses)


def test_rebuilt_secrets_must_match_the_commitment_or_the_advertised_mask_key():
    """A rebuilt b_u is checked against u's commitment and a rebuilt s_v^SK against v's roster key."""
    r = _round()
    inputs = _inputs4(NAMES, seed=7)
    u3 = [n for n in NAMES if n != "e"]
    unmasker, responses = _run(r, inputs, BITS, u3=u3)
    commits = dict(r.commits)

    unmasker.commitments = {**commits, "b": commits["c"]}
    with pytest.raises(
        SecAggAbandoned, match=_exactly("secure aggregation: the self-mask of 'b' does not match its commitment")
    ):
        unmasker.finish(responses)
    unmasker.commitments = {n: c for n, c in commits.items() if n != "a"}
    with pytest.raises(SecAggAbandoned, match="the self-mask of 'a' does not match its commitment"):
        unmasker.finish(responses)
    unmasker.commitments = commits
    fake = shamir.split(int.from_bytes(r.sessions["e"].b_seed, "big"), threshold=3, count=8)
    forged = {h: dict(a) for h, a in responses.items()}
    for h, a in forged.items():
        if "e" in a:
            a["e"] = ("s", shamir.to_bytes(fake[r.roster.index(h)][1]))
    with pytest.raises(
        SecAggAbandoned, match=_exactly("secure aggregation: the mask key of dropped site 'e' does not match its key")
    ):
        unmasker.finish(forged)

    assert [s.tolist() for s in unmasker.finish(responses)] == _plain(inputs, u3, BITS)  # nothing was spent


def test_recovery_refuses_too_few_survivors_or_lists_outside_the_roster():
    """recover_masks (coordinator and secagg+he sites): the floor and U3 <= U2 <= roster, refused by name."""
    r = _round(replace(SPARSE, min_contributors=4))

    def recover(u2, u3, p=r.p):
        return recover_masks(p, r.roster, run_id="r", round_id=1, u2=u2, u3=u3, commitments=r.commits, responses={})

    with pytest.raises(
        SecAggAbandoned,
        match=_exactly("secure aggregation: 3 survivors, fewer than max(t=3, min_contributors=4); round abandoned"),
    ):
        recover(list(NAMES), list("abcc"))
    with pytest.raises(SecAggAbandoned, match=r"^secure aggregation: 4 survivors, fewer than max\(t=5"):
        recover(list(NAMES), list("abcd"), p=replace(r.p, t=5))
    inconsistent = _exactly("secure aggregation: the survivor list is inconsistent with the roster")
    with pytest.raises(SecAggAbandoned, match=inconsistent):
        recover(list("abcde"), list("abcdf"))
    with pytest.raises(SecAggAbandoned, match=inconsistent):
        recover([*NAMES, "z"], list("abcd"))
    with pytest.raises(
        SecAggAbandoned, match=_exactly("secure aggregation: 0 shares of 'a', fewer than t=3; round abandoned")
    ):
        recover(list(NAMES), list("abcd"))


def test_a_masked_input_is_checked_completely_before_it_is_added_and_refusals_are_named():
    """Unmasker.add: only sites of U2, once each, the exact segment count and lengths, unsigned integers."""
    r = _round()
    sizes, bits = [3, 2], [32, 33]
    unmasker = Unmasker(
        r.p, r.roster, run_id="r", round_id=1, u2=list("abcdef"), commitments=r.commits, sizes=sizes, bits=bits
    )
    ok = [np.array([1, 2, 3], np.uint64), np.array([4, 5], np.uint32)]
    wrong_length = _exactly("secure aggregation: masked input has the wrong length")

    assert [s.dtype for s in unmasker.sum] == [np.uint32, np.uint64]
    with pytest.raises(
        CryptoError, match=_exactly("secure aggregation: site 'g' did not share keys or already sent its input")
    ):
        unmasker.add("g", ok)
    for bad in ([ok[0]], [*ok, ok[1]], [ok[0], np.array([4, 5, 6], np.uint64)], [np.array([1, 2], np.uint64), ok[1]]):
        with pytest.raises(CryptoError, match=wrong_length):
            unmasker.add("a", bad)
    with pytest.raises(CryptoError, match=_exactly("secure aggregation: masked input is not unsigned integers")):
        unmasker.add("a", [ok[0], np.array([4, 5], np.int64)])
    unmasker.add("a", ok)
    with pytest.raises(
        CryptoError, match=r"^secure aggregation: site 'a' did not share keys or already sent its input$"
    ):
        unmasker.add("a", ok)
    unmasker.add("b", [np.array([2**32 + 1, 0, 0], np.uint64), np.array([2**33, 1], np.uint64)])

    assert unmasker.u3 == ["a", "b"]
    assert [s.tolist() for s in unmasker.sum] == [[2, 2, 3], [4 + 2**33, 6]]
    assert unmasker.holders("a") == r.hood("a")


def test_an_unmasker_finishes_once_and_takes_no_input_after_it_but_may_retry_a_short_finish():
    """SecAggAbandoned leaves the sums untouched (retry allowed); a finished sum is handed over, never reused."""
    r = _round()
    inputs = _inputs4(NAMES, seed=8)
    u3 = list(NAMES)
    unmasker, responses = _run(r, inputs, BITS, u3=u3)

    with pytest.raises(SecAggAbandoned):
        unmasker.finish({h: responses[h] for h in "ab"})
    total = unmasker.finish(responses)

    assert [s.tolist() for s in total] == _plain(inputs, u3, BITS)
    assert unmasker.sum == []
    with pytest.raises(CryptoError, match=_exactly("secure aggregation: this sum was already unmasked")):
        unmasker.finish(responses)
    with pytest.raises(
        CryptoError,
        match=_exactly("secure aggregation: this sum was already unmasked; no input is added after it"),
    ):
        unmasker.add("a", inputs["a"])


def test_masks_and_sums_refuse_segment_and_width_lists_of_different_lengths():
    """add_masks and Unmasker pair each segment with its width: a missing width is an error, never a dropped segment."""
    r = _round()
    seg = np.zeros(4, np.uint64)

    with pytest.raises(ValueError, match="zip"):
        add_masks([seg, seg.copy()], [8], seeds=[(bytes(32), "x", False)])
    with pytest.raises(ValueError, match="zip"):
        add_masks([seg], [8, 8], seeds=[(bytes(32), "x", False)])
    with pytest.raises(ValueError, match="zip"):
        Unmasker(r.p, r.roster, run_id="r", round_id=1, u2=NAMES, commitments=r.commits, sizes=[4, 4], bits=[8])
    seg = np.zeros(4, np.uint64)
    add_masks([seg], [8], seeds=[(bytes(32), "x", False)])
    assert seg.tolist() == prg.expand(bytes(32), "x\x000", 4, 8).tolist()


@pytest.mark.parametrize("kind", ["b", "s"])
def test_consistent_shares_of_a_value_wider_than_32_bytes_abandon_the_round_by_name(kind):
    """Holders agreeing on a secret of 2^256 or more (not a seed or key) get SecAggAbandoned, not a crash."""
    r = _round()
    inputs = _inputs4(NAMES, seed=9)
    owner = "c"
    u3 = list(NAMES) if kind == "b" else [n for n in NAMES if n != owner]
    wide = shamir.split(1 << 256, threshold=3, count=8)

    def forge(responses):
        for h, answer in responses.items():
            if owner in answer:
                answer[owner] = (kind, shamir.to_bytes(wide[r.roster.index(h)][1]))

    unmasker, responses = _run(r, inputs, BITS, u3=u3, tamper=forge)

    with pytest.raises(SecAggAbandoned, match=_exactly("secure aggregation: shares of 'c' are inconsistent")):
        unmasker.finish(responses)
