"""The secagg aggregator: four stages, exact mean of the survivors, nothing released below t."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedinfra.aggregation.rounds import Reply, RoundSpec, UpdateRejected, start_round
from fedinfra.config import JobSpec
from fedinfra.config.secagg_plan import plan_for_roster
from fedinfra.config.wire import SECAGG, SECAGG_UPDATE
from fedinfra.config.wire_secagg import StageReply, StageRequest
from fedinfra.crypto.quantize import flatten
from fedinfra.crypto.secagg import Roster, SecAggAbandoned, SiteSession
from fedinfra.crypto.secagg import codec as sa_codec
from fedinfra.crypto.secagg.local import identities

LAYOUT = (("w", (3, 50)), ("b", (3,)))
SITES = ("a", "b", "c", "d")


def _job() -> JobSpec:
    return JobSpec.model_validate(
        {
            "sites": {"count": 4},
            "secure_aggregation": {"mode": "secagg", "max_dropouts": 1, "max_colluders": 1, "example_cap": 10},
        }
    )


def _update(value: float) -> dict[str, np.ndarray]:
    return {n: np.full(s, value, dtype=np.float32) for n, s in LAYOUT}


IDS = identities(list(SITES))


class _Site:
    """A site answering the stage documents the way fedinfra.site.secagg does."""

    def __init__(self, name: str, job: JobSpec) -> None:
        self.name, self.job = name, job
        self.session = SiteSession.start(name, run_id="run", round_id=1)
        self.key, self.directory = IDS.private[name], IDS.public

    def _plan(self):
        sa = self.job.secure_aggregation
        return plan_for_roster(
            self.session.sampled,
            len(self.session.roster.entries),
            max_dropouts=sa.max_dropouts,
            max_colluders=sa.max_colluders,
            min_contributors=sa.min_contributors,
        )

    def answer(self, document: str) -> str:
        req = StageRequest.model_validate_json(document)
        if req.stage == "advertise":
            e = self.session.advertise(self.key)
            return StageReply(
                stage="advertise", site=self.name, c_pk=e.c_pk.hex(), s_pk=e.s_pk.hex(), signature=e.sig.hex()
            ).model_dump_json()
        if req.stage == "share":
            roster = Roster.from_json([list(r) for r in req.roster])
            self.session.sampled = req.n
            self.session.roster = roster
            p = self._plan()
            self.session.roster = None
            boxes, commit = self.session.share(p, roster, self.directory)
            return StageReply(
                stage="share", site=self.name, boxes={k: v.hex() for k, v in boxes.items()}, commitment=commit.hex()
            ).model_dump_json()
        if req.stage == "consistency":
            try:
                sig = self.session.consistency(self._plan(), req.u3, self.key)
            except SecAggAbandoned as exc:
                return StageReply(stage="consistency", site=self.name, refused=str(exc)[:240]).model_dump_json()
            return StageReply(stage="consistency", site=self.name, signature=sig.hex()).model_dump_json()
        try:
            sigs = {k: bytes.fromhex(v) for k, v in req.signatures.items()}
            shares = self.session.unmask(self._plan(), req.u3, sigs, self.directory)
        except SecAggAbandoned as exc:
            return StageReply(stage="unmask", site=self.name, refused=str(exc)[:240]).model_dump_json()
        return StageReply(
            stage="unmask", site=self.name, shares={k: (kind, v.hex()) for k, (kind, v) in shares.items()}
        ).model_dump_json()

    def masked(self, document: str, update, n_examples: int, evaluation=None, contributions: int = 1) -> bytes:
        req = StageRequest.model_validate_json(document)
        sa = self.job.secure_aggregation
        values, _ = flatten(update)
        segs = sa_codec.encode(values, n_examples, sa, np.random.default_rng(1))
        segs[1][1] = contributions  # the trailer's contribution count (1 for an honest site)
        n_eval = 0 if evaluation is None else len(evaluation)
        if evaluation is not None:
            segs.append(sa_codec.encode_eval(np.asarray(evaluation, dtype=np.float64), sa))
        bits = sa_codec.widths(sa, n_eval)
        self.session.mask(
            self._plan(), segs, bits, u2=req.u2, shares_for_me={k: bytes.fromhex(v) for k, v in req.shares.items()}
        )
        return sa_codec.to_wire(segs, bits)


def _round(drop_after_share=(), drop_before_unmask=(), bad_first=None, silent=()):
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    sites = {n: _Site(n, job) for n in SITES}
    for stage in agg.stages_before():
        for name, doc in stage.payloads.items():
            if name not in silent:
                stage.collect(name, sites[name].answer(doc))
        stage.close()
    rejected = None
    if bad_first is not None:
        try:
            agg.accept(Reply(site="a", weight=1.0, config={SECAGG_UPDATE: bad_first}))
        except UpdateRejected as exc:
            rejected = exc
    values = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    for name in SITES:
        extra = agg.train_extra(name)
        if name in drop_after_share or extra is None:
            continue
        blob = sites[name].masked(extra[SECAGG], _update(values[name]), 10)
        agg.accept(Reply(site=name, weight=1.0, config={SECAGG_UPDATE: blob}))
    for stage in agg.stages_after():
        for name, doc in stage.payloads.items():
            if name not in drop_before_unmask:
                try:
                    stage.collect(name, sites[name].answer(doc))
                except UpdateRejected:
                    continue  # the coordinator audits it and carries on
        stage.close()
    return agg, rejected


def test_the_mean_of_all_sites_is_exact_up_to_quantization():
    agg, _ = _round()

    out = agg.finish()

    assert out.mean is not None
    assert np.allclose(out.mean["w"], 0.25, atol=1e-3)
    assert out.details["t"] == 3
    assert out.details["dropped"] == []


def test_a_site_dropping_after_sharing_is_unmasked_and_named():
    agg, _ = _round(drop_after_share=("c",))

    out = agg.finish()

    assert out.mean is not None
    assert np.allclose(out.mean["b"], (0.1 + 0.2 + 0.4) / 3, atol=1e-3)
    assert out.details["dropped"] == ["c"]
    assert out.details["survivors"] == ["a", "b", "d"]


def test_a_site_that_never_advertised_counts_against_the_dropout_bound():
    agg, _ = _round(silent=("d",))

    out = agg.finish()

    assert out.mean is not None
    assert np.allclose(out.mean["w"], 0.2, atol=1e-3)
    assert out.details["n"] == 3
    assert out.details["t"] == 3  # the full sample's threshold is kept


def test_a_site_silent_at_unmasking_still_counts_once_t_others_answer():
    agg, _ = _round(drop_before_unmask=("a",))

    out = agg.finish()

    assert out.mean is not None
    assert np.allclose(out.mean["w"], 0.25, atol=1e-3)
    assert out.details["survivors"] == ["a", "b", "c", "d"]


def test_a_masked_input_for_another_model_is_rejected_and_leaves_no_trace():
    wrong = sa_codec.to_wire([np.zeros(10, np.uint64), np.zeros(2, np.uint64)], [24, 64])

    agg, rejected = _round(bad_first=wrong)

    assert rejected is not None
    assert rejected.check == "encoding"
    mean = agg.finish().mean
    assert mean is not None
    assert np.allclose(mean["w"], 0.25, atol=1e-3)


def test_an_oversized_masked_input_is_refused_before_it_is_copied():
    """A hostile 64 MiB ``SECAGG_UPDATE`` costs the coordinator no allocation of its size.

    The masked input's length is exact (from the model), so it is checked on the reply's
    own buffer. The old code copied it first (``bytes(bytearray)``: a 64 MiB peak under
    tracemalloc) and found the wrong length only while decoding.
    """
    import tracemalloc

    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    sites = {n: _Site(n, job) for n in SITES}
    for stage in agg.stages_before():
        for name, doc in stage.payloads.items():
            stage.collect(name, sites[name].answer(doc))
        stage.close()
    hostile = bytearray(64 << 20)

    tracemalloc.start()
    try:
        with pytest.raises(UpdateRejected, match=r"masked input of 67108864 bytes, expected \d+$") as info:
            agg.accept(Reply(site="a", weight=1.0, config={SECAGG_UPDATE: hostile}))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info.value.check == "encoding"
    assert peak < 1 << 20


def test_too_few_survivors_abandon_the_round_and_release_nothing():
    # The two survivors refuse to sign a survivor list below the floor: the round is
    # abandoned at the consistency wave, before any unmasking share is asked for.
    with pytest.raises(SecAggAbandoned, match="0 survivors signed the survivor list, fewer than t=3"):
        _round(drop_after_share=("c", "d"))


def test_bounds_the_sample_cannot_meet_are_refused_at_job_validation():
    with pytest.raises(ValueError, match="max_dropouts=2"):
        JobSpec.model_validate(
            {"sites": {"count": 4}, "secure_aggregation": {"mode": "secagg", "max_dropouts": 2, "max_colluders": 1}}
        )


def test_the_report_names_n_t_k_bounds_and_survivors_of_each_round():
    from fedinfra.report.collect import _secagg_rounds
    from fedinfra.report.records import AuditRecord

    agg, _ = _round(drop_after_share=("c",))
    details = {"mode": "secagg", **agg.finish().details}
    record = AuditRecord(
        index=1,
        seq=1,
        ts="t",
        run_id="run",
        round=1,
        type="aggregation.completed",
        actor_kind="coordinator",
        actor_id="coordinator",
        actor_key_id=None,
        outcome="success",
        subject=None,
        details=details,
    )

    (row,) = _secagg_rounds([record])

    assert (row.n, row.t, row.k, row.max_dropouts, row.max_colluders) == (4, 3, 3, 1, 1)
    assert row.survivors == ["a", "b", "d"]
    assert row.dropped == ["c"]


def _user_dp_job(count: int, min_sites: int, dropouts: int) -> dict:
    return {
        "sites": {"count": count, "min_sites": min_sites},
        "privacy": {"mechanism": "user-dp", "noise_multiplier": 2.0, "max_grad_norm": 1.0},
        "secure_aggregation": {"mode": "secagg", "example_cap": 1, "max_dropouts": dropouts, "max_colluders": 1},
    }


def test_under_distributed_noise_a_job_whose_survivors_may_fall_below_min_sites_is_refused():
    # Each share carries 1/sqrt(min_sites) of the noise: with 6 sites and 2 dropouts the
    # sites would otherwise unmask 4 < min_sites = 5 contributions (too little noise).
    with pytest.raises(ValueError, match=r"min_contributors=5; .*\(under user-level DP the floor is"):
        JobSpec.model_validate(_user_dp_job(6, 5, 2))
    JobSpec.model_validate({**_user_dp_job(6, 5, 2), "privacy": {"mechanism": "none"}})  # no noise split: fine
    JobSpec.model_validate(_user_dp_job(6, 4, 2))


def test_under_distributed_noise_sites_refuse_to_unmask_fewer_than_min_sites():
    # 40 sites (SecAgg+ graph, k = 13): t = 12, but with min_sites = 20 a sum of 15 shares
    # carries sqrt(15/20) of the noise; the site, not only the coordinator, refuses it.
    from types import SimpleNamespace

    from fedinfra.aggregation.secagg import plan_for
    from fedinfra.site.secagg import _plan

    secure = {"mode": "secagg", "example_cap": 1, "max_dropouts": 2, "max_colluders": 1, "max_sites": 40}
    job = JobSpec.model_validate(_user_dp_job(40, 20, 2) | {"secure_aggregation": secure})
    p = _plan(SimpleNamespace(job=job), 40, 40)  # the plan the site derives for itself
    assert plan_for(job, 40, 40) == p  # and the coordinator's, which abandons at the same floor
    names = [f"s{i:02d}" for i in range(40)]
    ids = identities(names)
    sessions = {n: SiteSession.start(n, run_id="r", round_id=1) for n in names}
    roster = Roster(tuple(sessions[n].advertise(ids.private[n]) for n in names))
    boxes = {n: s.share(p, roster, ids.public)[0] for n, s in sessions.items()}
    a = sessions["s00"]
    mine = {m: b["s00"] for m, b in boxes.items() if "s00" in b}
    a.mask(p, [np.zeros(4, np.uint64)], [24], u2=names, shares_for_me=mine)
    u3 = names[:15]

    assert (p.t, p.min_contributors) == (12, 20)
    with pytest.raises(SecAggAbandoned, match="15 survivors, fewer than max\\(t=12, min_contributors=20\\)"):
        a.consistency(p, u3, ids.private["s00"])


# -- each stage refuses a malformed reply by name, and the round goes on without that site -----------------


def _start(silent=()):
    """A round of SITES after the key stages (``silent`` sites never answer), with its sites."""
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    sites = {n: _Site(n, job) for n in SITES}
    for stage in agg.stages_before():
        for name, doc in stage.payloads.items():
            if name not in silent:
                stage.collect(name, sites[name].answer(doc))
        stage.close()
    return agg, sites


def _refused(collect, site: str, document: str) -> tuple[str, str]:
    with pytest.raises(UpdateRejected) as info:
        collect(site, document)
    return info.value.check, str(info.value)


def test_a_stage_reply_that_is_not_its_stages_or_its_sites_is_refused():
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    advertise = next(agg.stages_before())
    genuine = _Site("a", job).answer(advertise.payloads["a"])

    assert _refused(advertise.collect, "a", "{not json") == ("encoding", "malformed advertise reply")
    assert _refused(advertise.collect, "b", genuine) == ("protocol", "advertise reply names another stage or site")
    other_stage = StageReply(stage="share", site="a").model_dump_json()
    assert _refused(advertise.collect, "a", other_stage) == ("protocol", "advertise reply names another stage or site")


@pytest.mark.parametrize("blank", ["c_pk", "s_pk", "signature"])
def test_a_key_advertisement_needs_both_public_keys_and_the_signature(blank):
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    advertise = next(agg.stages_before())
    reply = StageReply.model_validate_json(_Site("a", job).answer(advertise.payloads["a"]))
    partial = reply.model_copy(update={blank: ""}).model_dump_json()

    check, message = _refused(advertise.collect, "a", partial)

    assert check == "protocol"
    assert message == "key advertisement without both public keys and the identity signature"


def test_too_few_advertised_keys_abandon_the_round_before_any_share_is_asked_for():
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    stages = agg.stages_before()
    advertise = next(stages)
    for name in ("a", "b"):
        advertise.collect(name, _Site(name, job).answer(advertise.payloads[name]))

    with pytest.raises(SecAggAbandoned, match=r"^secure aggregation: only 2 sites advertised keys: .*max_dropouts=1"):
        advertise.close()
    assert agg.roster is None


def test_shares_must_stay_inside_the_roster_carry_a_commitment_and_have_the_sealed_length():
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    sites = {n: _Site(n, job) for n in SITES}
    stages = agg.stages_before()
    advertise = next(stages)
    for name in ("a", "b", "c"):  # d never advertises
        advertise.collect(name, sites[name].answer(advertise.payloads[name]))
    advertise.close()
    share = next(stages)
    reply = StageReply.model_validate_json(sites["a"].answer(share.payloads["a"]))
    box = next(iter(reply.boxes.values()))
    outside = "protocol", "shares addressed outside the roster, or no commitment"

    assert _refused(share.collect, "a", reply.model_copy(update={"commitment": ""}).model_dump_json()) == outside
    to_d = reply.model_copy(update={"boxes": {**reply.boxes, "d": box}}).model_dump_json()
    assert _refused(share.collect, "a", to_d) == outside
    from_d = reply.model_copy(update={"site": "d"}).model_dump_json()
    assert _refused(share.collect, "d", from_d) == outside
    for cut in (box[:-2], box + "00"):
        wrong = reply.model_copy(update={"boxes": {**reply.boxes, "b": cut}}).model_dump_json()
        assert _refused(share.collect, "a", wrong) == ("protocol", "a sealed share has the wrong length")
    assert agg.train_extra("a") is None  # nothing was collected: the key stages are not over
    share.collect("a", reply.model_dump_json())


def test_the_train_wave_asks_only_sites_that_shared_and_hands_each_the_shares_addressed_to_it():
    agg, _ = _start(silent=("d",))

    extra = agg.train_extra("a")
    assert set(extra) == {SECAGG}
    req = StageRequest.model_validate_json(extra[SECAGG])
    assert req.stage == "mask"
    assert req.u2 == ["a", "b", "c"]
    assert set(req.shares) == {"a", "b", "c"}  # the share each sharing site sealed to a (its own included)
    assert agg.train_extra("d") is None


def test_a_masked_input_is_refused_before_the_key_stages_and_without_its_bytes():
    job = _job()
    early = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    with pytest.raises(UpdateRejected, match=r"^masked input before the key stages completed$") as info:
        early.accept(Reply(site="a", weight=1.0, config={SECAGG_UPDATE: b"\0" * 8}))
    assert info.value.check == "protocol"
    with pytest.raises(
        SecAggAbandoned, match=r"^secure aggregation: the key stages did not complete; round abandoned$"
    ):
        early.finish()
    assert list(early.stages_after()) == []
    assert early.audit_details() == {"mode": "secagg", "sampled": 4, "survivors": [], "dropped": []}

    agg, _ = _start()
    for missing in ({}, {SECAGG_UPDATE: "text"}):
        with pytest.raises(UpdateRejected, match=r"^reply carries no masked update$") as info:
            agg.accept(Reply(site="a", weight=1.0, config=missing))
        assert info.value.check == "missing"
    assert agg.count == 0


def _trained(agg, sites):
    values = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    for name in SITES:
        extra = agg.train_extra(name)
        if extra is not None:
            agg.accept(
                Reply(
                    site=name,
                    weight=1.0,
                    config={SECAGG_UPDATE: sites[name].masked(extra[SECAGG], _update(values[name]), 10)},
                )
            )


def test_a_consistency_reply_must_carry_a_signature_and_a_refusal_is_named():
    agg, sites = _start()
    _trained(agg, sites)
    consistency = next(agg.stages_after())
    genuine = StageReply.model_validate_json(sites["a"].answer(consistency.payloads["a"]))

    refused = StageReply(stage="consistency", site="a", refused="too few survivors").model_dump_json()
    assert _refused(consistency.collect, "a", refused) == (
        "protocol",
        "site refused to sign the survivor list: too few survivors",
    )
    unsigned = genuine.model_copy(update={"signature": ""}).model_dump_json()
    assert _refused(consistency.collect, "a", unsigned) == ("protocol", "consistency reply without a signature")
    assert agg._signatures == {}
    consistency.collect("a", genuine.model_dump_json())
    assert agg._signatures == {"a": genuine.signature}


def test_fewer_signers_than_t_abandon_the_round_and_exactly_t_go_on():
    for signers, abandoned in ((("a", "b"), True), (("a", "b", "c"), False)):
        agg, sites = _start()
        _trained(agg, sites)
        stages = agg.stages_after()
        consistency = next(stages)
        for name in signers:
            consistency.collect(name, sites[name].answer(consistency.payloads[name]))
        if abandoned:
            with pytest.raises(
                SecAggAbandoned,
                match=r"^secure aggregation: 2 survivors signed the survivor list, fewer than t=3; round abandoned$",
            ):
                consistency.close()
        else:
            consistency.close()
            unmask = next(stages)
            assert sorted(unmask.payloads) == list(signers)
            assert StageRequest.model_validate_json(unmask.payloads["a"]).signatures.keys() == set(signers)


def test_an_unmasking_reply_that_refuses_or_is_not_hex_is_refused_by_name():
    agg, sites = _start()
    _trained(agg, sites)
    stages = agg.stages_after()
    consistency = next(stages)
    for name in SITES:
        consistency.collect(name, sites[name].answer(consistency.payloads[name]))
    consistency.close()
    unmask = next(stages)
    genuine = StageReply.model_validate_json(sites["a"].answer(unmask.payloads["a"]))
    owner, (kind, _) = next(iter(genuine.shares.items()))

    refused = StageReply(stage="unmask", site="a", refused="no").model_dump_json()
    assert _refused(unmask.collect, "a", refused) == ("protocol", "site refused to unmask: no")
    not_hex = genuine.model_copy(update={"shares": {**genuine.shares, owner: (kind, "zz")}}).model_dump_json()
    assert _refused(unmask.collect, "a", not_hex) == ("encoding", "unmasking share is not hex")
    unmask.collect("a", genuine.model_dump_json())  # a site answers the unmask request once
    for name in ("b", "c", "d"):
        unmask.collect(name, sites[name].answer(unmask.payloads[name]))
    out = agg.finish()
    assert out.mean is not None
    assert np.allclose(out.mean["w"], 0.25, atol=1e-3)
    assert out.sites == SITES
    assert out.evaluation is None


def _full_round(eval_size=0, evaluations=None, contributions=None, record=None):
    """A round of SITES where everyone answers; ``record`` collects the stage names in order."""
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES, eval_size=eval_size))
    sites = {n: _Site(n, job) for n in SITES}
    record = [] if record is None else record
    for stage in agg.stages_before():
        record.append(stage.name)
        for name, doc in stage.payloads.items():
            stage.collect(name, sites[name].answer(doc))
        stage.close()
    values = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    for name in SITES:
        doc = agg.train_extra(name)[SECAGG]
        evaluation = None if evaluations is None else evaluations[name]
        claim = 1 if contributions is None else contributions.get(name, 1)
        blob = sites[name].masked(doc, _update(values[name]), 10, evaluation=evaluation, contributions=claim)
        agg.accept(Reply(site=name, weight=1.0, config={SECAGG_UPDATE: blob}))
    for stage in agg.stages_after():
        record.append(stage.name)
        for name, doc in stage.payloads.items():
            stage.collect(name, sites[name].answer(doc))
        stage.close()
    return agg


def test_the_four_waves_are_named_in_protocol_order():
    names = []
    out = _full_round(record=names).finish()
    assert names == ["advertise", "share", "consistency", "unmask"]
    assert out.sites == SITES
    assert out.evaluation is None


def test_the_survivors_evaluation_sums_are_unmasked_with_the_update():
    evaluations = {n: [1.5 * (i + 1), 0.25 * i, 7.0] for i, n in enumerate(SITES)}

    out = _full_round(eval_size=3, evaluations=evaluations).finish()

    assert out.mean is not None
    assert np.allclose(out.mean["w"], 0.25, atol=1e-3)
    assert out.evaluation is not None
    np.testing.assert_allclose(out.evaluation, np.sum([evaluations[n] for n in SITES], axis=0))


def test_a_site_claiming_two_contributions_makes_the_round_abandoned_without_a_result():
    agg = _full_round(contributions={"b": 2})
    with pytest.raises(
        SecAggAbandoned, match=r"^secure aggregation: the unmasked contribution count disagrees with the survivors$"
    ):
        agg.finish()


def test_the_round_cannot_finish_between_the_key_stages():
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    sites = {n: _Site(n, job) for n in SITES}
    advertise = next(agg.stages_before())
    for name, doc in advertise.payloads.items():
        advertise.collect(name, sites[name].answer(doc))
    advertise.close()  # a plan and a roster, but no shares yet

    assert agg.plan is not None
    with pytest.raises(
        SecAggAbandoned, match=r"^secure aggregation: the key stages did not complete; round abandoned$"
    ):
        agg.finish()


def test_too_few_sites_sharing_their_secrets_abandon_the_round():
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    sites = {n: _Site(n, job) for n in SITES}
    stages = agg.stages_before()
    advertise = next(stages)
    for name, doc in advertise.payloads.items():
        advertise.collect(name, sites[name].answer(doc))
    advertise.close()
    share = next(stages)
    for name in ("a", "b"):
        share.collect(name, sites[name].answer(share.payloads[name]))

    with pytest.raises(SecAggAbandoned, match=r"^secure aggregation: only 2 sites shared their secrets"):
        share.close()
    assert agg.train_extra("a") is None


def test_a_site_replaying_another_sites_public_keys_abandons_the_round_before_any_share():
    job = _job()
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=SITES))
    advertise = next(agg.stages_before())
    genuine = _Site("a", job).answer(advertise.payloads["a"])
    advertise.collect("a", genuine)
    for name in ("c", "d"):
        advertise.collect(name, _Site(name, job).answer(advertise.payloads[name]))
    copied = StageReply.model_validate_json(genuine).model_copy(update={"site": "b"})
    advertise.collect("b", copied.model_dump_json())  # a's keys under b's name

    with pytest.raises(SecAggAbandoned, match=r"^secure aggregation: .*keys must be distinct") as info:
        advertise.close()
    assert info.value.__cause__ is not None
    assert agg.roster is None


def test_a_masked_input_from_a_site_that_did_not_share_is_refused_and_an_accepted_one_is_audited():
    agg, sites = _start(silent=("d",))
    doc = agg.train_extra("a")[SECAGG]
    blob = sites["a"].masked(doc, _update(0.1), 10)

    with pytest.raises(UpdateRejected) as info:
        agg.accept(Reply(site="d", weight=1.0, config={SECAGG_UPDATE: blob}))
    folded = agg.accept(Reply(site="a", weight=1.0, config={SECAGG_UPDATE: bytearray(blob)}))

    assert info.value.check == "encoding"
    assert str(info.value) == "secure aggregation: site 'd' did not share keys or already sent its input"
    assert folded.subject == ("update.masked", hashlib.sha256(blob).hexdigest(), len(blob))
    assert agg.sites == ("a",)


def test_the_sharing_count_is_held_to_the_rosters_threshold_not_the_full_samples():
    # 33 sampled, one never advertises: the 32 left may lose no one more (d' = 0, complete graph, t = 32),
    # while the full sample's SecAgg+ plan would have t = 14. 31 sharing sites are too few.
    names = [f"s{i:02d}" for i in range(33)]
    ids = identities(names)
    secure = {"mode": "secagg", "max_dropouts": 1, "max_colluders": 0, "example_cap": 10, "max_sites": 33}
    job = JobSpec.model_validate({"sites": {"count": 33}, "secure_aggregation": secure})
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=tuple(names)))
    sessions = {n: SiteSession.start(n, run_id="run", round_id=1) for n in names}
    stages = agg.stages_before()
    advertise = next(stages)
    for n in names[:32]:
        e = sessions[n].advertise(ids.private[n])
        reply = StageReply(stage="advertise", site=n, c_pk=e.c_pk.hex(), s_pk=e.s_pk.hex(), signature=e.sig.hex())
        advertise.collect(n, reply.model_dump_json())
    advertise.close()
    assert agg.plan is not None
    assert agg.plan.t == 32
    share = next(stages)
    for n in names[:31]:
        boxes, commit = sessions[n].share(agg.plan, agg.roster, ids.public)
        reply = StageReply(stage="share", site=n, boxes={k: v.hex() for k, v in boxes.items()}, commitment=commit.hex())
        share.collect(n, reply.model_dump_json())

    with pytest.raises(
        SecAggAbandoned, match=r"^secure aggregation: only 31 sites shared their secrets, fewer than max\(t=32"
    ):
        share.close()
