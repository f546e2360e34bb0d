"""The robust rules as round aggregators (``fedinfra.aggregation.robust_rules``), case by case.

Each rule keeps exactly the sampled sites' rows in model order, reads compressed updates
when the job compresses them (validated against the job's grid and update bound like
plain tensors), and reports what it did in the round's details: which sites Krum chose,
how many values the trimmed mean cut, how many updates norm bounding clipped.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedinfra.aggregation import robust
from fedinfra.aggregation.compression import UpdateCompressor, decompress, encode
from fedinfra.aggregation.robust_rules import NormBoundedAggregator
from fedinfra.aggregation.rounds import Reply, RoundSpec, UpdateRejected, start_round
from fedinfra.config import JobSpec
from fedinfra.config.wire import COMPRESSED_UPDATE
from fedinfra.errors import ConfigError

LAYOUT = (("w", (2, 2)), ("b", (2,)), ("c", (3,)))  # three tensors of different sizes


def _job(rule: str, *, compression: dict[str, Any] | None = None, **aggregation: object) -> JobSpec:
    doc: dict[str, Any] = {"aggregation": {"rule": rule, **aggregation}, "sites": {"count": 7}}
    if compression is not None:
        doc["compression"] = compression
    return JobSpec.model_validate(doc)


def _spec(job: JobSpec, n: int) -> RoundSpec:
    return RoundSpec(run_id="r", round=1, layout=LAYOUT, job=job, sites=tuple(f"s{i}" for i in range(n)))


def _tensors(base: float) -> dict[str, np.ndarray]:
    """Distinct values per tensor and position: base + 0.01 * (0..8) in model order."""
    flat = base + 0.01 * np.arange(9, dtype=np.float32)
    return {"w": flat[:4].reshape(2, 2), "b": flat[4:6], "c": flat[6:9]}


def _reply(site: str, tensors: dict[str, np.ndarray], weight: float = 1.0) -> Reply:
    record = ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()})
    return Reply(site=site, weight=weight, config={}, arrays=record)


def _flat(mean: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(mean[name]).reshape(-1) for name, _ in LAYOUT])


# -- the stacked rules: rows in model order, one per sampled site --------------------------------------


def test_every_tensor_lands_in_its_place_in_the_row():
    agg = start_round(_spec(_job("median"), 3))
    for i, base in enumerate([0.1, 0.2, 0.3]):
        agg.accept(_reply(f"s{i}", _tensors(base)))

    out = agg.finish()

    assert out.mean is not None
    assert set(out.mean) == {"w", "b", "c"}
    for name, shape in LAYOUT:
        assert out.mean[name].shape == shape
        assert out.mean[name].dtype == np.float32
    np.testing.assert_allclose(_flat(out.mean), 0.2 + 0.01 * np.arange(9), rtol=1e-6)
    assert out.details == {"rule": "median"}
    assert out.sites == ("s0", "s1", "s2")


@pytest.mark.parametrize("sampled", [3, 0])
def test_no_more_replies_than_sites_sampled(sampled):
    agg = start_round(_spec(_job("median"), sampled))
    for i in range(max(sampled, 1)):
        agg.accept(_reply(f"s{i}", _tensors(0.1 * i)))

    with pytest.raises(UpdateRejected, match=r"^more replies than sites sampled for this round$") as info:
        agg.accept(_reply("late", _tensors(0.5)))
    assert info.value.check == "protocol"
    assert agg.count == max(sampled, 1)


def test_a_stacked_rule_without_replies_has_nothing_to_aggregate():
    with pytest.raises(ConfigError, match=r"^no replies to aggregate$"):
        start_round(_spec(_job("trimmed-mean"), 3)).finish()


def test_the_trimmed_mean_reports_how_many_it_cut_at_each_end():
    agg = start_round(_spec(_job("trimmed-mean", trim_fraction=0.2), 5))
    for i, base in enumerate([0.1, 0.2, 0.3, 0.4, 9.0]):
        agg.accept(_reply(f"s{i}", _tensors(base)))

    out = agg.finish()

    assert out.details == {"rule": "trimmed-mean", "trimmed_per_end": 1}
    assert out.mean is not None
    np.testing.assert_allclose(_flat(out.mean), 0.3 + 0.01 * np.arange(9), rtol=1e-6)


# Rows 9 (b_i - b_j)^2 apart; with f = 1 a score sums the 2 nearest: s1 0.18, s2 0.2925, s0 0.45, s3 0.765.
BASES = [0.0, 0.1, 0.2, 0.35, 50.0]


def test_krum_names_the_one_site_it_chose_and_its_f():
    agg = start_round(_spec(_job("krum", byzantine=1), 5))
    for i, base in enumerate(BASES):
        agg.accept(_reply(f"s{i}", _tensors(base)))

    out = agg.finish()

    assert out.details == {"rule": "krum", "selected": ["s1"], "byzantine": 1}
    assert out.mean is not None
    np.testing.assert_allclose(_flat(out.mean), 0.1 + 0.01 * np.arange(9), rtol=1e-6)


@pytest.mark.parametrize(("krum_select", "chosen"), [(0, ["s1", "s2", "s0", "s3"]), (2, ["s1", "s2"])])
def test_multi_krum_averages_n_minus_f_sites_or_the_configured_number(krum_select, chosen):
    bases = BASES
    agg = start_round(_spec(_job("multi-krum", byzantine=1, krum_select=krum_select), 5))
    for i, base in enumerate(bases):
        agg.accept(_reply(f"s{i}", _tensors(base)))

    out = agg.finish()

    assert out.details == {"rule": "multi-krum", "selected": chosen, "byzantine": 1}
    expect = np.mean([bases[int(s[1:])] for s in chosen]) + 0.01 * np.arange(9)
    assert out.mean is not None
    np.testing.assert_allclose(_flat(out.mean), expect, rtol=1e-6)


def test_an_update_beyond_the_jobs_norm_bound_is_refused():
    agg = start_round(_spec(_job("median", max_update_norm=1.0), 3))

    with pytest.raises(UpdateRejected) as info:
        agg.accept(_reply("s0", _tensors(0.5)))  # norm about 1.6
    assert info.value.check == "bound"
    assert agg.count == 0


# -- compressed updates under a robust rule ----------------------------------------------------------------


def _compressed(seed: int, *, clip: float = 1.0, bits: int = 8) -> bytes:
    update = {k: v * 0.3 for k, v in _tensors(0.1 * seed - 0.2).items()}
    return encode(UpdateCompressor(clip=clip, bits=bits, rng=np.random.default_rng(seed)).compress(update))


def _compressed_reply(site: str, blob: object) -> Reply:
    return Reply(site=site, weight=1.0, config={COMPRESSED_UPDATE: blob})


def test_a_robust_rule_reads_compressed_updates_on_the_jobs_grid():
    job = _job("median", compression={"bits": 8, "clip": 1.0})
    agg = start_round(_spec(job, 3))
    blobs = [_compressed(seed) for seed in range(3)]

    folded = [agg.accept(_compressed_reply(f"s{i}", blob)) for i, blob in enumerate(blobs)]
    out = agg.finish()

    for f, blob in zip(folded, blobs, strict=True):
        assert f.subject == ("update.compressed", hashlib.sha256(blob).hexdigest(), len(blob))
    rows = np.stack([_flat(decompress(b, LAYOUT, clip=1.0, bits=8)) for b in blobs]).astype(np.float32)
    assert out.mean is not None
    np.testing.assert_array_equal(_flat(out.mean), robust.coordinate_median(rows))


@pytest.mark.parametrize("blob", [None, "not bytes", 12], ids=["absent", "text", "number"])
def test_a_compressed_job_refuses_a_reply_without_compressed_bytes(blob):
    agg = start_round(_spec(_job("median", compression={"bits": 8, "clip": 1.0}), 3))
    reply = _reply("s0", _tensors(0.1)) if blob is None else _compressed_reply("s0", blob)  # plain tensors are not read

    with pytest.raises(UpdateRejected, match=r"^reply carries no compressed update$") as info:
        agg.accept(reply)
    assert info.value.check == "missing"


def test_a_compressed_update_on_another_grid_is_refused():
    agg = start_round(_spec(_job("median", compression={"bits": 8, "clip": 1.0}), 3))

    with pytest.raises(UpdateRejected, match="another quantization grid"):
        agg.accept(_compressed_reply("s0", _compressed(0, bits=6)))
    assert agg.count == 0


def test_a_compressed_update_beyond_the_jobs_norm_bound_is_refused():
    # Within the compression clip (1.0) but above aggregation.max_update_norm (0.05).
    agg = start_round(_spec(_job("median", max_update_norm=0.05, compression={"bits": 8, "clip": 1.0}), 3))

    with pytest.raises(UpdateRejected) as info:
        agg.accept(_compressed_reply("s0", _compressed(0)))
    assert info.value.check == "bound"


# -- norm bounding ------------------------------------------------------------------------------------------


def _single(value: float, at: int = 0) -> dict[str, np.ndarray]:
    flat = np.zeros(9, dtype=np.float32)
    flat[at] = value
    return {"w": flat[:4].reshape(2, 2), "b": flat[4:6], "c": flat[6:9]}


def test_norm_bounding_counts_only_the_updates_it_shortened():
    agg = start_round(_spec(_job("norm-bounded", clip=1.0), 5))
    agg.accept(_reply("s0", _single(1.0)))  # exactly at the bound: kept as is
    agg.accept(_reply("s1", _single(3.0, at=5)))  # clipped to 1
    agg.accept(_reply("s2", _single(-0.5, at=8)))
    agg.accept(_reply("s3", _single(-4.0, at=5)))  # clipped to -1

    out = agg.finish()

    assert out.details == {"rule": "norm-bounded", "clip": 1.0, "clipped": 2}
    assert out.sites == ("s0", "s1", "s2", "s3")
    assert out.mean is not None
    np.testing.assert_allclose(_flat(out.mean), [0.25, 0, 0, 0, 0, 0, 0, 0, -0.125], atol=1e-7)


def test_norm_bounding_returns_the_tensors_in_model_order_whatever_order_a_reply_sends():
    agg = start_round(_spec(_job("norm-bounded", clip=10.0), 2))
    tensors = _tensors(0.1)
    agg.accept(_reply("s0", {name: tensors[name] for name in ("c", "b", "w")}))

    out = agg.finish()

    assert out.mean is not None
    assert list(out.mean) == ["w", "b", "c"]
    np.testing.assert_allclose(_flat(out.mean), 0.1 + 0.01 * np.arange(9), rtol=1e-6)


def test_norm_bounding_sums_the_squares_in_float64():
    # |w|^2 = 4096^2 + 3 * 0.99^2: summed in float32 the small squares are lost and |w| is exactly
    # the clip; in float64 it is 4096.00036 and the update is (just) shortened.
    agg = start_round(_spec(_job("norm-bounded", clip=4096.0, max_update_norm=1e5), 2))
    update = _single(0.0)
    update["w"][:] = [[4096.0, 0.99], [0.99, 0.99]]
    agg.accept(_reply("s0", update))

    assert agg.finish().details["clipped"] == 1


def test_norm_bounding_without_a_clip_is_refused_when_the_job_skipped_validation():
    job = _job("norm-bounded", clip=1.0)
    unchecked = job.model_copy(update={"aggregation": job.aggregation.model_copy(update={"clip": None})})

    with pytest.raises(ConfigError, match=r"^aggregation.rule = 'norm-bounded' needs aggregation.clip$"):
        NormBoundedAggregator(_spec(unchecked, 3))


def test_the_stacked_rules_hold_each_sampled_update_as_float32():
    """The median, trimmed mean and Krum stack one row per sampled site: n * d * 4 bytes at the
    coordinator (bench/big_model.py budgets it), not float64's 8."""
    import tracemalloc

    job = _job("median")
    layout = (("w", (1000, 500)),)
    spec = RoundSpec(run_id="r", round=1, layout=layout, job=job, sites=tuple(f"s{i}" for i in range(8)))
    tracemalloc.start()
    try:
        agg = start_round(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rows = 8 * 1000 * 500 * 4
    assert rows <= peak < 1.25 * rows
    del agg
