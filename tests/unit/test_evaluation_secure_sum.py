"""Evaluation sums travel inside the secure aggregate: the coordinator learns only their total.

Issue 14, deliverable 4 (and issue 17's "metric sums combined inside the secure aggregate").
A whole run goes through the real coordinator (:class:`Coordinator.run`) and the real
ClientApp of in-process sites (provisioned kits, SecAgg+ masks, SEAL under ``secagg+he``);
the grid between them delivers messages and keeps every reply, which is exactly what a
coordinator-side observer sees. Before this change each site's ``TrainReport.evaluation`` /
``EvalReport`` carried its loss sum, correct and example count as JSON numbers in every
mode, so the first assertion of each run test failed on the old code (the site's figures
were in its reply) and the coordinator's ``evaluation.completed`` was their sum *because*
it read them one by one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import runpy
import shutil
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from fedinfra.aggregation.digest import model_digest
from fedinfra.config import JobSpec, load_job
from fedinfra.config.wire import CONFIG, DOC, SECAGG
from fedinfra.coordinator.server import Coordinator
from fedinfra.crypto.secagg import codec as sa_codec
from fedinfra.errors import ConfigError, CryptoError
from fedinfra.runtime.coordinator_kit import settings_from_kit
from fedinfra.runtime.simulation import provision_simulation, site_names
from fedinfra.site.app import _test_counts
from fedinfra.site.app import app as client_app
from fedinfra.site.context import site_context
from fedinfra.site.home import HOME_ENV, KIT_ROOT_ENV

pytestmark = pytest.mark.usefixtures("flower_run")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class SiteGrid:
    """A Flower grid over in-process sites running fedinfra's ClientApp; keeps every reply."""

    def __init__(self, contexts: dict[int, Context], tamper: Callable[[Message], None] | None = None) -> None:
        self.contexts = contexts
        self.tamper = tamper  # a dishonest coordinator's edit of a message before the site gets it
        self.replies: dict[str, Message] = {}
        self.observed: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self) -> Iterable[Any]:
        return [SimpleNamespace(node_id=n, name="", public_key=b"") for n in self.contexts]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # what Flower's grids do on push
            if self.tamper is not None:
                self.tamper(msg)
            reply = client_app(msg, self.contexts[msg.metadata.dst_node_id])
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            self.observed.append(reply)
            self.replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        # The coordinator gets its own copy, as over a real transport: it empties each train
        # reply once folded (coordinator.inbox.release), while ``observed`` is the wire tap.
        return [copy.deepcopy(self.replies.pop(i)) for i in list(message_ids) if i in self.replies]


def _run(
    job: JobSpec,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tamper: Callable[[Message], None] | None = None,
) -> tuple[SiteGrid, Coordinator]:
    run_id = "run-evalsum"
    kits = provision_simulation(job, run_id, tmp_path)
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "site-homes"))
    monkeypatch.setenv(KIT_ROOT_ENV, str(kits / "sites"))
    n = job.sites.count
    contexts = {
        i + 1: Context(
            run_id=4242,
            node_id=i + 1,
            node_config={"partition-id": i, "num-partitions": n},
            state=RecordDict(),
            run_config={},
        )
        for i in range(n)
    }
    settings = settings_from_kit(
        kits / "coordinator",
        store=str(tmp_path / "audit.sqlite"),
        tls=False,
        in_process=True,
        he=job.secure_aggregation.encrypted,
    )
    settings = dataclasses.replace(settings, node_wait_s=1)
    coordinator = Coordinator(job, run_id=run_id, run_dir=tmp_path / "run", settings=settings)
    grid = SiteGrid(contexts, tamper)
    coordinator.run(grid)  # type: ignore[arg-type]
    return grid, coordinator


def _site_figures(job: JobSpec, weights: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each site's own evaluation of ``weights`` (loss sum, correct, count, sums), as the site computes it."""
    out = {}
    for i, name in enumerate(site_names(job)):
        ctx = site_context({"partition-id": i, "num-partitions": job.sites.count}, job)
        assert ctx.name == name
        out[name] = _test_counts(ctx, weights)
    return out


def _evaluations(coordinator: Coordinator) -> dict[int, dict[str, Any]]:
    from fedinfra.audit import AuditLog

    log = AuditLog.open(coordinator.settings.store)
    try:
        entries = log.entries(run_id=coordinator.run_id, type="evaluation.completed")
        return {int(e.details["evaluated_round"]): dict(e.details) for e in entries}
    finally:
        log.close()


def _reply_bytes(reply: Message) -> bytes:
    if reply.has_error():
        return b""
    parts = []
    for record in reply.content.config_records.values():
        for value in record.values():
            parts.append(value if isinstance(value, bytes) else str(value).encode())
    for record in reply.content.array_records.values():
        for arr in record.values():
            parts.append(bytes(arr.data))
    return b"\x00".join(parts)


def _reports(grid: SiteGrid) -> list[dict[str, Any]]:
    out = []
    for reply in grid.observed:
        if reply.has_error() or CONFIG not in reply.content.config_records:
            continue
        doc = json.loads(str(reply.content.config_records[CONFIG][DOC]))
        out.append(doc)
    return out


def _assert_no_site_figure_in_replies(grid: SiteGrid, figures: dict[str, Any], job: JobSpec) -> None:
    """Not one reply names a site's loss sum, correct or count, in JSON or as encoded lanes."""
    for doc in _reports(grid):
        assert doc.get("evaluation") is None  # TrainReport: no figures beside the update
        assert doc.get("loss_sum", 0.0) == 0.0
        assert doc.get("count", 0) == 0
        assert doc.get("correct", 0) == 0
        assert not doc.get("sums")
    blobs = b"\x01".join(_reply_bytes(r) for r in grid.observed)
    for loss_sum, correct, count, _ in figures.values():
        assert count > 0
        lanes = sa_codec.encode_eval(np.array([loss_sum, float(count)]), job.secure_aggregation)
        for value in lanes:  # the fixed-point encodings of the site's own figures
            assert struct.pack("<Q", int(value)) not in blobs
        assert repr(float(loss_sum)).encode() not in blobs
        if correct > 1000:  # a short number may occur by chance in a ciphertext
            assert str(correct).encode() not in blobs


def _secagg_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobSpec:
    """The diabetes example (a user task, so the sites evaluate), 2 rounds, no DP: fast."""
    root = tmp_path / "diabetes"
    shutil.copytree(EXAMPLES / "diabetes", root)
    runpy.run_path(str(root / "prepare.py"), run_name="example")["main"](root)
    monkeypatch.syspath_prepend(str(root))
    job = load_job(root / "job.toml")
    assert job.data.source is not None
    source = job.data.source.model_copy(update={"path": str(root / job.data.source.path)})
    return job.model_copy(
        update={
            "rounds": 2,
            "data": job.data.model_copy(update={"source": source}),
            "privacy": job.privacy.model_copy(update={"mechanism": "none", "epsilon": None}),
        }
    )


def _fixed_point_tolerance(sites: int, count: int) -> float:
    """The encoding's own error on a mean: each site's sum is rounded to 1/EVAL_SCALE (half a step)."""
    return sites * 0.5 / sa_codec.EVAL_SCALE / count


def test_under_secagg_the_coordinator_sees_only_the_total_of_the_sites_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _secagg_job(tmp_path, monkeypatch)

    grid, coordinator = _run(job, tmp_path, monkeypatch)

    evaluations = _evaluations(coordinator)
    assert sorted(evaluations) == [1, 2]  # round 1 in round 2's masked inputs, round 2 in the close sum
    from fedinfra.coordinator.persist import load_state

    for rnd in (1, 2):
        figures = _site_figures(job, load_state(coordinator.state_dir, rnd).weights)
        _assert_no_site_figure_in_replies(grid, figures, job)
        total_loss = sum(f[0] for f in figures.values())
        total_count = sum(f[2] for f in figures.values())
        got = evaluations[rnd]
        assert got["examples"] == total_count
        quantum = _fixed_point_tolerance(len(figures), total_count)
        assert got["test_loss"] == pytest.approx(total_loss / total_count, rel=1e-6, abs=quantum)
        mse = sum(f[3]["sq_err"][0] for f in figures.values()) / total_count
        assert got["metrics"]["mse"] == pytest.approx(mse, rel=1e-6, abs=quantum)
        assert sorted(got["sites"]) == sorted(site_names(job))


def _close_u2_below_the_floor(node: int, site: str) -> Callable[[Message], None]:
    """Cut U2 of the close wave's mask stage sent to ``site`` (``node``) to it and one other site.

    What a dishonest coordinator would send to learn more from the unmasking; the shares are
    cut to match, so the floor ``max(t, min_contributors)`` is the check that fails.
    """

    def tamper(msg: Message) -> None:
        cfg = msg.content.config_records.get(CONFIG)
        if msg.metadata.dst_node_id != node or msg.metadata.message_type != "evaluate" or cfg is None:
            return
        raw = cfg.get(SECAGG)
        doc = json.loads(raw) if isinstance(raw, str) else {}
        if doc.get("stage") == "mask":
            doc["u2"] = sorted({site, next(n for n in doc["u2"] if n != site)})
            doc["shares"] = {k: v for k, v in doc["shares"].items() if k in doc["u2"]}
            cfg[SECAGG] = json.dumps(doc)

    return tamper


def test_a_refused_close_mask_stage_leaves_the_final_model_unmarked_as_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site checks the close wave's mask stage before it marks the final model evaluated.

    The marker (``runs/<id>/evaluated.json``) makes a site send zeros for weights it already
    put into a secure sum. On the old code the site wrote it before the mask-stage checks, so
    a close sum it refused (U2 below the floor) still cost it its evaluation of the final model.
    """
    job = _secagg_job(tmp_path, monkeypatch)
    names = site_names(job)

    _run(job, tmp_path, monkeypatch, tamper=_close_u2_below_the_floor(1, names[0]))

    def evaluated(site: str) -> list[str]:
        path = tmp_path / "site-homes" / site / "runs" / "run-evalsum" / "evaluated.json"
        return json.loads(path.read_text()) if path.exists() else []

    def final_model(site: str) -> str:  # saved by the close wave before the secure sum
        with np.load(tmp_path / "site-homes" / site / "runs" / "run-evalsum" / "final-model.npz") as data:
            return model_digest({k: np.asarray(data[k]) for k in data.files})

    final = final_model(names[0])
    assert final == final_model(names[1])
    assert final in evaluated(names[1])  # an honest site put it into the close sum
    assert final not in evaluated(names[0])  # the refusing site did not mark it
    assert len(evaluated(names[0])) == 1  # round 1's model, evaluated in round 2's masked input


def _he_job(mode: str, sites: int = 3) -> JobSpec:
    return JobSpec.model_validate(
        {
            "scenario": "hospital",
            "rounds": 2,
            "data": {"dataset": "breast_cancer"},
            "sites": {"count": sites, "min_sites": sites},
            "secure_aggregation": {"mode": mode, "max_sites": 3}
            | ({"max_dropouts": 0, "max_colluders": 1} if mode.startswith("secagg") else {}),
        }
    )


@pytest.mark.parametrize("mode", ["secagg+he", "bfv"])
def test_under_an_he_mode_the_coordinator_sees_only_the_total_of_the_sites_evaluation(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """secagg+he: masked beside the ciphertext; bfv: under zero-sum masks of the shared HE key."""
    job = _he_job(mode)

    grid, coordinator = _run(job, tmp_path, monkeypatch)

    evaluations = _evaluations(coordinator)
    assert sorted(evaluations) == [1, 2]
    # Under HE only the sites hold the model: each site's final model (saved by the close
    # wave) is the one the close sum evaluated; round 1's is not kept, its total is checked
    # for consistency (every site, every example) below.
    from fedinfra.site.home import resolve_home

    names = site_names(job)
    final = {}
    for i, name in enumerate(names):
        ctx = site_context({"partition-id": i, "num-partitions": 3}, job)
        weights = resolve_home({}, name).load_weights(coordinator.run_id, "final-model")
        assert weights is not None
        final[name] = _test_counts(ctx, weights)
    _assert_no_site_figure_in_replies(grid, final, job)
    got = evaluations[2]
    total_count = sum(f[2] for f in final.values())
    assert got["examples"] == total_count
    quantum = _fixed_point_tolerance(len(final), total_count)
    assert got["test_loss"] == pytest.approx(sum(f[0] for f in final.values()) / total_count, rel=1e-6, abs=quantum)
    assert got["test_accuracy"] == pytest.approx(sum(f[1] for f in final.values()) / total_count)
    assert evaluations[1]["examples"] == total_count  # the same test shards, summed once each
    assert sorted(got["sites"]) == sorted(names)


def test_in_mode_none_the_evaluation_stays_in_the_clear_as_the_report_says() -> None:
    from fedinfra.privacy.release import EVALUATION, releases

    def row(mode: str) -> str:
        return {value: mechanism for value, _, mechanism in releases(mode)}[EVALUATION]

    assert row("none").startswith("NOT covered: sent to the coordinator in the clear")
    assert row("bfv").startswith("masked: zero-sum masks keyed by the shared HE key")
    assert row("ckks") == row("bfv")
    assert row("secagg").startswith("inside the secure aggregate")
    assert row("secagg+he").startswith("inside the secure aggregate")


# -- the encoding's range ------------------------------------------------------------------------


def _spec(max_sites: int = 16) -> Any:
    return _he_job("secagg").secure_aggregation.model_copy(update={"max_sites": max_sites})


def test_an_evaluation_sum_beyond_the_range_is_refused_naming_it_not_wrapped() -> None:
    spec = _spec(16)
    limit = sa_codec.eval_limit(spec)

    with pytest.raises(ConfigError, match=r"evaluation sum loss = .* secure_aggregation.max_sites=16"):
        sa_codec.encode_eval(np.array([1.0, limit * 1.01]), spec, ["count", "loss"])
    with pytest.raises(ConfigError, match="evaluation sum count"):
        sa_codec.encode_eval(np.array([-1.0, 0.0]), spec, ["count", "loss"])
    with pytest.raises(ConfigError, match="evaluation sum count"):
        sa_codec.encode_eval(np.array([float("nan"), 0.0]), spec, ["count", "loss"])


def test_max_sites_sums_at_the_limit_decode_exactly_and_an_impossible_total_is_refused() -> None:
    spec = _spec(16)
    top = sa_codec.encode_eval(np.array([sa_codec.eval_limit(spec)]), spec)
    total = np.array([int(top[0]) * 16], dtype=np.uint64)  # no wrap modulo 2^64

    assert sa_codec.decode_eval(total, 16, spec)[0] == pytest.approx(16 * sa_codec.eval_limit(spec))
    with pytest.raises(CryptoError, match="evaluation sum is inconsistent"):
        sa_codec.decode_eval(total, 1, spec)


def test_a_site_puts_one_models_evaluation_into_one_secure_sum_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked again for the same weights it sends zeros (two sums would differ by one site)."""
    from fedinfra.site.evaluation import evaluation_lanes

    job = _he_job("secagg")
    ctx = site_context({"partition-id": 0, "num-partitions": 3, "state-dir": str(tmp_path / "home")}, job)
    from fedinfra.models import get_weights
    from fedinfra.site.tasks import job_model

    weights = get_weights(job_model(job)[0])
    _, _, _, sums = _test_counts(ctx, weights)

    first = evaluation_lanes(ctx, "run-x", weights, sums)
    again = evaluation_lanes(ctx, "run-x", weights, sums)
    other_run = evaluation_lanes(ctx, "run-y", weights, sums)

    assert first.any()
    assert not again.any()
    assert np.array_equal(first, other_run)


def test_under_bfv_a_roster_below_min_contributors_releases_no_evaluation_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _he_job("bfv", sites=2)  # min_contributors defaults to 3

    grid, coordinator = _run(job, tmp_path, monkeypatch)

    evaluations = _evaluations(coordinator)
    assert sorted(evaluations) == [1, 2]
    assert all(e["examples"] == 0 and e["test_loss"] is None for e in evaluations.values())
    assert all("eval.masked" not in r.content.config_records.get(CONFIG, {}) for r in grid.observed)
    assert [r["status"] for r in _reports(grid) if r.get("round") == 2 and "num_examples" in r] == ["ok", "ok"]


# -- bfv/ckks: zero-sum masks of the shared HE key ----------------------------------------------------


def _masked(values: dict[str, int], roster: list[str], context: str = "run\x001\x00ab") -> dict[str, bytes]:
    from fedinfra.crypto.secagg import group

    key = group.group_key(b"the consortium's shared HE secret key")
    return {
        name: group.to_wire(
            group.mask(np.array([v, 1], dtype=np.uint64), key, context=context, me=name, roster=roster, floor=2)
        )
        for name, v in values.items()
    }


def test_zero_sum_masks_hide_each_value_and_cancel_only_over_the_whole_roster() -> None:
    from fedinfra.crypto.secagg.group import GroupSum

    values = {"a": 11, "b": 22, "c": 33}
    blobs = _masked(values, ["a", "b", "c"])
    assert all(struct.pack("<Q", v) not in blob for v, blob in zip(values.values(), blobs.values(), strict=True))

    whole = GroupSum(["a", "b", "c"], 2)
    for name, blob in blobs.items():
        whole.add(name, blob)
    partial = GroupSum(["a", "b"], 2)  # the coordinator cannot unmask a sub-roster
    partial.add("a", blobs["a"])
    partial.add("b", blobs["b"])
    total = whole.total()

    assert total is not None
    assert total.tolist() == [66, 3]
    masked_pair = partial.total()
    assert masked_pair is not None
    assert masked_pair.tolist() != [33, 2]
    missing = GroupSum(["a", "b", "c"], 2)
    missing.add("a", blobs["a"])
    assert missing.total() is None  # a roster member missing: nothing is released


def test_a_site_refuses_a_roster_without_it_or_below_the_floor() -> None:
    with pytest.raises(CryptoError, match="does not name this site"):
        _masked({"a": 1}, ["b", "c"])
    with pytest.raises(CryptoError, match="fewer than the floor 2"):
        _masked({"a": 1}, ["a"])


# -- the layout both ends derive from the job ----------------------------------------------------------


def test_the_sums_layout_from_the_job_matches_a_real_evaluation_and_refuses_another_shape() -> None:
    from fedinfra.task.builtin import TabularTask
    from fedinfra.task.metrics import evaluate_sums, flatten_sums, sums_layout, unflatten_sums

    task = TabularTask({"features": 4, "classes": 3, "model": "logreg", "hidden": []})
    from fedinfra.task import new_model

    model = new_model(task, seed=1)
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    y = np.arange(20) % 3
    sums = evaluate_sums(task, model, x, y)

    layout = sums_layout(task, model)

    assert layout == tuple((k, v.size) for k, v in sums.items())
    back = unflatten_sums(flatten_sums(sums, layout), layout)
    assert all(np.array_equal(back[k], sums[k]) for k in sums)
    with pytest.raises(ValueError, match="evaluation sum 'tp' has 2 values, the task's layout 3"):
        flatten_sums({**sums, "tp": np.zeros(2)}, layout)


def test_a_task_without_an_input_shape_sums_count_loss_and_correct_only() -> None:
    from fedinfra.task import new_model
    from fedinfra.task.builtin import TabularTask
    from fedinfra.task.metrics import sums_layout

    class NoShape(TabularTask):
        def example_input(self, model: Any) -> None:
            return None

    task = NoShape({"features": 4, "classes": 3, "model": "logreg", "hidden": []})

    assert sums_layout(task, new_model(task, seed=1)) == (("count", 1), ("loss", 1), ("correct", 1))


def test_under_secagg_he_sites_accept_a_round_whose_updates_sit_at_the_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: in the loopback e2e every site refused round 1's ``secagg+he`` aggregate.

    The sites clip each coordinate to ``clip`` before encrypting; when all of them sit at the
    clip, the decrypted mean exceeds it by the codec's rounding error, which grows with
    ``example_cap / total examples`` (``HEParams.mean_error_bound``). The site's check
    allowed two quantization steps only, so in round 2 each site refused ("the decrypted
    aggregate exceeds the job's clip bound") and the run failed with 0 valid replies. A
    small clip makes every update saturate here; on the old code this run fails in round 2.
    """
    job = _he_job("secagg+he")
    job = job.model_copy(
        update={"secure_aggregation": job.secure_aggregation.model_copy(update={"clip": 0.01})}
    )

    _, coordinator = _run(job, tmp_path, monkeypatch)

    assert sorted(_evaluations(coordinator)) == [1, 2]  # round 2 trained on round 1's aggregate
