"""SecAgg keys are authenticated: a coordinator can neither swap keys, add sybils, nor split U3.

Each site signs its advertised X25519 keys with the Ed25519 identity key the key ceremony
pinned; sites check every roster entry against their own kit's directory, sign the survivor
list once and unmask only for the list they signed, shown with t survivors' signatures
(Bonawitz et al., CCS 2017, section 6.2 and figure 4).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedinfra.crypto.secagg import Roster, SecAggAbandoned, SiteSession, plan
from fedinfra.crypto.secagg.local import identities
from fedinfra.errors import ConfigError, CryptoError

NAMES = ("a", "b", "c", "d")


def _round(p):
    ids = identities(list(NAMES))
    sessions = {n: SiteSession.start(n, run_id="r", round_id=1) for n in NAMES}
    roster = Roster(tuple(sessions[n].advertise(ids.private[n]) for n in NAMES))
    return ids, sessions, roster


def _p():
    return plan(4, max_dropouts=1, max_colluders=1, min_contributors=3)


def test_an_honest_signed_roster_is_accepted():
    p = _p()
    ids, sessions, roster = _round(p)

    boxes, _ = sessions["a"].share(p, roster, ids.public)

    assert set(boxes) == set(NAMES)


def test_keys_swapped_by_the_coordinator_are_refused():
    # The coordinator replaces b's keys with its own (man in the middle): it keeps b's
    # signature, which does not cover the new keys, and cannot make one.
    p = _p()
    ids, sessions, roster = _round(p)
    mitm = SiteSession.start("b", run_id="r", round_id=1).advertise()
    entries = list(roster.entries)
    entries[1] = replace(entries[1], c_pk=mitm.c_pk, s_pk=mitm.s_pk)
    forged = Roster(tuple(entries))

    with pytest.raises(CryptoError, match="not signed by its pinned identity key"):
        sessions["a"].share(p, forged, ids.public)
    assert sessions["a"].roster is None  # nothing shared


def test_keys_signed_by_the_coordinator_itself_are_refused():
    p = _p()
    ids, sessions, roster = _round(p)
    coordinator_key = identities(["coordinator"]).private["coordinator"]
    fake = SiteSession.start("b", run_id="r", round_id=1).advertise(coordinator_key)
    entries = list(roster.entries)
    entries[1] = fake

    with pytest.raises(CryptoError, match="swapped keys"):
        sessions["a"].share(p, Roster(tuple(entries)), ids.public)


def test_a_sybil_site_is_refused():
    # The coordinator adds a site of its own, validly self-signed, to reach the threshold
    # with sites it controls; it has no identity pinned in the site's kit.
    p = plan(5, max_dropouts=1, max_colluders=1, min_contributors=3)
    ids, sessions, roster = _round(p)
    sybil_key = identities(["e"]).private["e"]
    sybil = SiteSession.start("e", run_id="r", round_id=1).advertise(sybil_key)
    padded = Roster((*roster.entries, sybil))

    with pytest.raises(CryptoError, match="sybil"):
        sessions["a"].share(p, padded, ids.public)


def test_signed_keys_replayed_under_another_name_or_round_are_refused():
    p = _p()
    ids, sessions, roster = _round(p)
    later = SiteSession.start("b", run_id="r", round_id=2)
    other_round = later.advertise(ids.private["b"])  # b's genuine signature, for round 2
    entries = list(roster.entries)
    entries[1] = other_round

    with pytest.raises(CryptoError, match="swapped keys"):
        sessions["a"].share(p, Roster(tuple(entries)), ids.public)


def _masked(p, ids, sessions, roster):
    boxes = {n: s.share(p, roster, ids.public)[0] for n, s in sessions.items()}
    for n, s in sessions.items():
        s.mask(p, [np.zeros(8, np.uint64)], [24], u2=list(NAMES), shares_for_me={m: b[n] for m, b in boxes.items()})


def test_a_site_signs_one_survivor_list_per_round():
    p = _p()
    ids, sessions, roster = _round(p)
    _masked(p, ids, sessions, roster)
    sessions["a"].consistency(p, ["a", "b", "c", "d"], ids.private["a"])

    with pytest.raises(CryptoError, match="already signed another survivor list"):
        sessions["a"].consistency(p, ["a", "b", "c"], ids.private["a"])


def test_a_split_view_of_the_survivors_is_refused():
    # The coordinator tells a that d survived (to get a's share of d's self-mask seed) while
    # b and c were told d dropped (to get their shares of d's mask key). a signed {a,b,c,d};
    # the only signatures over that list are a's own: fewer than t = 3.
    p = _p()
    ids, sessions, roster = _round(p)
    _masked(p, ids, sessions, roster)
    full, short = ["a", "b", "c", "d"], ["a", "b", "c"]
    sig_a = sessions["a"].consistency(p, full, ids.private["a"])
    sigs_short = {n: sessions[n].consistency(p, short, ids.private[n]) for n in ("b", "c")}

    with pytest.raises(SecAggAbandoned, match="valid survivor signatures"):
        sessions["a"].unmask(p, full, {"a": sig_a, **sigs_short}, ids.public)
    with pytest.raises(CryptoError, match="did not sign"):
        sessions["a"].unmask(p, short, sigs_short, ids.public)
    assert not sessions["a"].unmasked


def test_t_signatures_over_the_signed_list_release_the_shares():
    p = _p()
    ids, sessions, roster = _round(p)
    _masked(p, ids, sessions, roster)
    sigs = {n: sessions[n].consistency(p, list(NAMES), ids.private[n]) for n in ("a", "b", "c")}

    shares = sessions["a"].unmask(p, list(NAMES), sigs, ids.public)

    assert {kind for kind, _ in shares.values()} == {"b"}


def test_forged_survivor_signatures_do_not_count():
    p = _p()
    ids, sessions, roster = _round(p)
    _masked(p, ids, sessions, roster)
    sig_a = sessions["a"].consistency(p, list(NAMES), ids.private["a"])
    fake = identities(["b", "c"]).private  # keys the coordinator made in b's and c's names
    from fedinfra.crypto import _sign
    from fedinfra.crypto.secagg.protocol import _survivors_digest

    digest = _survivors_digest("r", 1, roster, list(NAMES))
    forged = {n: _sign.sign(fake[n], digest) for n in ("b", "c")}

    with pytest.raises(SecAggAbandoned, match="1 valid survivor signatures"):
        sessions["a"].unmask(p, list(NAMES), {"a": sig_a, **forged}, ids.public)


# -- the site's kit: its identity key and the pinned directory --------------------------------------


def test_provisioned_site_kits_pin_every_sites_identity_key(tmp_path: Path):
    from fedinfra.config.consortium import ConsortiumConfig
    from fedinfra.crypto import _sign
    from fedinfra.runtime.provision import provision
    from fedinfra.site.secagg import _identity

    cfg = ConsortiumConfig(name="idtest", sites=["s1", "s2", "s3"], secure_aggregation={"mode": "secagg"})
    provision(cfg, tmp_path / "kits")

    key1, directory1 = _identity(str(tmp_path / "kits" / "sites" / "s1"), "s1")
    key2, directory2 = _identity(str(tmp_path / "kits" / "sites" / "s2"), "s2")

    assert directory1 == directory2
    assert dict(directory1)["s2"] == _sign.public_of(key2)
    assert dict(directory1)["s1"] == _sign.public_of(key1)
    with pytest.raises(ConfigError, match="not the identity key the kit pins for site 's3'"):
        _identity(str(tmp_path / "kits" / "sites" / "s1"), "s3")


def test_a_mask_request_below_the_floor_is_refused_by_the_check_alone_and_changes_nothing():
    # The site runs this check before it trains or charges its ledger (site.secagg.check_mask_stage).
    p = _p()
    ids, sessions, roster = _round(p)
    boxes = {n: s.share(p, roster, ids.public)[0] for n, s in sessions.items()}
    mine = {m: b["a"] for m, b in boxes.items()}
    before = sessions["a"].to_bytes()

    with pytest.raises(SecAggAbandoned, match=r"only 2 sites shared keys, fewer than max\(t=3"):
        sessions["a"].check_mask_request(p, ["a", "b"], {m: mine[m] for m in ("a", "b")})
    with pytest.raises(CryptoError, match="shares received do not match"):
        sessions["a"].check_mask_request(p, list(NAMES), {m: mine[m] for m in ("a", "b", "c")})

    assert sessions["a"].to_bytes() == before
    assert sessions["a"].check_mask_request(p, list(NAMES), mine) == set(NAMES)
    assert sessions["a"].to_bytes() == before
