"""The secagg aggregator: four stages, exact mean of the survivors, nothing released below t."""

from __future__ import annotations

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

    def masked(self, document: str, update, n_examples: int) -> bytes:
        req = StageRequest.model_validate_json(document)
        sa = self.job.secure_aggregation
        values, _ = flatten(update)
        segs = sa_codec.encode(values, n_examples, sa, np.random.default_rng(1))
        bits = sa_codec.widths(sa)
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
