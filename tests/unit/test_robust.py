"""Robust aggregation rules: known answers, the robustness each paper proves, the aggregators."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedinfra.aggregation import robust
from fedinfra.aggregation.rounds import Reply, RoundSpec, UpdateRejected, start_round
from fedinfra.config import JobSpec
from fedinfra.errors import ConfigError


def _rows(*rows: list[float]) -> robust.F32:
    return np.array(rows, dtype=np.float32)


def test_median_of_odd_and_even_counts() -> None:
    assert robust.coordinate_median(_rows([1, 5], [3, -1], [2, 100])).tolist() == [2, 5]
    assert robust.coordinate_median(_rows([1], [2], [3], [1000])).tolist() == [2.5]


def test_median_and_trimmed_mean_span_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 1000)).astype(np.float32)
    monkeypatch.setattr(robust, "BLOCK", 64)

    assert np.array_equal(robust.coordinate_median(x), np.median(x, axis=0).astype(np.float32))
    expect = np.sort(x, axis=0)[2:5].mean(axis=0)
    assert np.allclose(robust.trimmed_mean(x, 0.3), expect, atol=1e-6)


def test_trimmed_mean_without_trimming_is_the_mean() -> None:
    x = _rows([1, 2], [3, 4])
    assert robust.trimmed_mean(x, 0.0).tolist() == [2, 3]


@settings(max_examples=50, deadline=None)
@given(
    honest=arrays(np.float32, (5, 8), elements=st.floats(-1, 1, width=32)),
    evil=st.floats(-1e6, 1e6, width=32),
)
def test_two_of_seven_arbitrary_rows_keep_median_and_trimmed_mean_within_the_honest_range(
    honest: robust.F32, evil: float
) -> None:
    x = np.vstack([honest, np.full((2, 8), evil, dtype=np.float32)])
    lo, hi = honest.min(axis=0) - 1e-6, honest.max(axis=0) + 1e-6
    for agg in (robust.coordinate_median(x), robust.trimmed_mean(x, 2 / 7 + 1e-9)):
        assert np.all(agg >= lo)
        assert np.all(agg <= hi)


def test_krum_picks_an_honest_update_and_names_it() -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(0, 0.1, size=(6, 20)).astype(np.float32)
    evil = np.full((2, 20), 50.0, dtype=np.float32)
    x = np.vstack([evil[:1], honest, evil[1:]])

    mean, chosen = robust.multi_krum(x, byzantine=2, select=1)
    assert chosen[0] in range(1, 7)
    assert np.array_equal(mean, x[chosen[0]])
    _, many = robust.multi_krum(x, byzantine=2, select=6)
    assert sorted(many) == [1, 2, 3, 4, 5, 6]


def test_krum_refuses_too_few_updates_for_its_f() -> None:
    with pytest.raises(ConfigError, match="at least 5"):
        robust.krum_scores(np.zeros((4, 3), dtype=np.float32), 1)


def _job(rule: str, **extra: object) -> JobSpec:
    return JobSpec.model_validate({"aggregation": {"rule": rule, **extra}, "sites": {"count": 5}})


def _reply(site: str, value: float, weight: float = 1.0) -> Reply:
    arr = {"w": np.full((2, 2), value, dtype=np.float32), "b": np.full(2, value, dtype=np.float32)}
    return Reply(site=site, weight=weight, config={}, arrays=ArrayRecord({k: Array(v) for k, v in arr.items()}))


def _spec(job: JobSpec, n: int) -> RoundSpec:
    return RoundSpec(
        run_id="r", round=1, layout=(("w", (2, 2)), ("b", (2,))), job=job, sites=tuple(f"s{i}" for i in range(n))
    )


@pytest.mark.parametrize(
    ("rule", "extra", "expect"),
    [
        ("median", {}, 2.0),
        ("trimmed-mean", {"trim_fraction": 0.2}, 7 / 3),
        ("krum", {"byzantine": 1}, None),
        ("multi-krum", {"byzantine": 1, "krum_select": 3}, None),
        ("norm-bounded", {"clip": 1.0}, None),
    ],
)
def test_one_site_scaling_its_update_by_100_cannot_drag_a_robust_rule(
    rule: str, extra: dict[str, object], expect: float | None
) -> None:
    agg = start_round(_spec(_job(rule, **extra), 5))
    for i, v in enumerate([1.0, 2.0, 3.0, 2.0]):
        agg.accept(_reply(f"s{i}", v))
    agg.accept(_reply("s4", 200.0, weight=1e6))

    out = agg.finish()

    assert out.mean is not None
    assert out.details["rule"] == rule
    top = float(np.max(np.abs(out.mean["w"])))
    assert top <= 3.0
    if expect is not None:
        assert np.allclose(out.mean["w"], expect)
        assert np.allclose(out.mean["b"], expect)
    if rule == "krum":
        assert out.details["selected"] in (["s1"], ["s3"])


def test_a_robust_aggregator_rejects_a_bad_update_before_keeping_it() -> None:
    agg = start_round(_spec(_job("median"), 3))
    bad = Reply(site="s0", weight=1.0, config={}, arrays=ArrayRecord({"w": Array(np.zeros((2, 2), np.float64))}))
    with pytest.raises(UpdateRejected):
        agg.accept(bad)
    agg.accept(_reply("s1", 1.0))
    assert agg.finish().sites == ("s1",)


def test_robust_rules_need_visible_updates() -> None:
    with pytest.raises(ValueError, match="visible updates"):
        JobSpec.model_validate({"aggregation": {"rule": "median"}, "secure_aggregation": {"mode": "bfv"}})


def test_norm_bounded_needs_a_clip() -> None:
    with pytest.raises(ValueError, match=r"aggregation\.clip"):
        JobSpec.model_validate({"aggregation": {"rule": "norm-bounded"}})
