"""One round at a site (fedinfra.site.round), path by path: what leaves, what is charged, what is kept.

Each test drives :func:`run_round` end to end on a small real data set and checks the reply
against an independent computation (the accountant, the HE decryption, the trainer run with
the documented seed); issue 20's mutation run found these paths without a unit test.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedinfra.config import JobSpec
from fedinfra.config.job import TaskSpec
from fedinfra.config.wire import TrainInstruction
from fedinfra.models import get_weights, set_weights
from fedinfra.privacy import PrivacyLedger
from fedinfra.privacy.release import bucket_count
from fedinfra.site.context import SiteContext, site_context
from fedinfra.site.round import _train_round, run_round
from fedinfra.site.tasks import job_model, job_task

SITES = ["hospital-0", "hospital-1"]


def _job(**overrides: Any) -> JobSpec:
    spec: dict[str, Any] = {
        "scenario": "hospital",
        "rounds": 3,
        "seed": 7,
        "data": {"dataset": "breast_cancer"},
        "sites": {"count": 4, "min_sites": 2},
        "training": {"local_epochs": 1},
    }
    spec.update(overrides)
    return JobSpec.model_validate(spec)


#: Kits provisioned once per secure-aggregation spec and process tree (BFV key generation takes seconds),
#: outside pytest's temporary directories: forked test runs (mutmut) inherit them, and pytest removes
#: an old session's tmp_path while a later session still uses it.
_KITS: dict[str, Path] = {}
_KIT_ROOT: list[Path] = []


def _remove_kits(owner: int) -> None:
    if os.getpid() == owner and _KIT_ROOT:
        shutil.rmtree(_KIT_ROOT[0], ignore_errors=True)


def _kit(job: JobSpec) -> Path:
    from fedinfra.config.consortium import ConsortiumConfig
    from fedinfra.runtime.provision import provision

    if not _KIT_ROOT:
        _KIT_ROOT.append(Path(tempfile.mkdtemp(prefix="fedinfra-test-kits-")))
        atexit.register(_remove_kits, os.getpid())
    key = job.secure_aggregation.model_dump_json()
    if key not in _KITS:
        out = _KIT_ROOT[0] / str(len(_KITS))
        provision(ConsortiumConfig(name="c", sites=SITES, secure_aggregation=job.secure_aggregation), out)
        _KITS[key] = out
    return _KITS[key]


def _ctx(tmp_path: Path, job: JobSpec, *, kit: bool = False) -> SiteContext:
    node: dict[str, object] = {"partition-id": 0, "num-partitions": 4, "state-dir": str(tmp_path / "home")}
    if kit:
        node["kit"] = str(_kit(job) / "sites" / SITES[0])
    return site_context(node, job)


def _instruction(job: JobSpec, rnd: int, run_id: str = "run-r") -> TrainInstruction:
    return TrainInstruction(run_id=run_id, round=rnd, job=job.model_dump(mode="json"), sampled=2, admitted=4)


def _global(ctx: SiteContext) -> dict[str, np.ndarray]:
    return get_weights(job_model(ctx.job)[0])


def _open(tmp_path: Path, ctx: SiteContext, ciphertext: bytes, rnd: int, run_id: str = "run-r") -> tuple[Any, int]:
    """Decrypt one site's sealed reply as the coordinator's one-reply sum: (mean, weight)."""
    from fedinfra.crypto import EncryptedSum, load_coordinator_kit, open_sum

    weights = _global(ctx)
    layout = [(k, tuple(v.shape)) for k, v in weights.items()]
    total = EncryptedSum(
        load_coordinator_kit(_kit(ctx.job) / "coordinator"), run_id=run_id, round_id=rnd, layout=layout
    )
    total.add(ciphertext)
    return open_sum(total.to_bytes(), ctx.he_keys(), run_id=run_id, round_id=rnd)


def _entries(ctx: SiteContext) -> list[Any]:
    ledger = PrivacyLedger(ctx.home.ledger)
    try:
        return list(ledger.entries())
    finally:
        ledger.close()


# -- user-level DP through the round (issue 20: "user-level epsilon with rounds = 1" survived) --------------


def _user_dp_job() -> JobSpec:
    return _job(
        privacy={"mechanism": "user-dp", "epsilon": 6.0, "noise_multiplier": 2.0, "max_grad_norm": 1.0},
        secure_aggregation={"mode": "bfv", "example_cap": 1},
    )


def test_a_user_level_round_charges_every_release_of_the_run_and_seals_with_weight_one(tmp_path: Path) -> None:
    from fedinfra.privacy.gaussian import gaussian_epsilon

    job = _user_dp_job()
    ctx = _ctx(tmp_path, job, kit=True)
    weights = _global(ctx)

    first = run_round(ctx, _instruction(job, 1), weights, tls=True, sampled=2)
    second = run_round(ctx, _instruction(job, 2), weights, tls=True, sampled=2)

    delta = job.privacy.delta
    assert first.report.details["epsilon_total"] == pytest.approx(
        gaussian_epsilon(noise_multiplier=2.0, releases=1, delta=delta)
    )
    assert second.report.details["epsilon_total"] == pytest.approx(
        gaussian_epsilon(noise_multiplier=2.0, releases=2, delta=delta)
    )
    assert second.report.details["mechanism"] == "user-dp"
    assert second.report.details["releases"] == 2
    assert [e.round for e in _entries(ctx)] == [1, 2]
    assert second.ciphertext is not None
    assert second.update is None
    assert second.compressed is None
    _mean, weight = _open(tmp_path, ctx, second.ciphertext, 2)
    assert weight == 1  # never the example count: the noise is calibrated to one clipped update per site


def test_a_user_level_round_releases_no_count_and_no_loss(tmp_path: Path) -> None:
    job = _user_dp_job()
    ctx = _ctx(tmp_path, job, kit=True)

    out = run_round(ctx, _instruction(job, 1), _global(ctx), tls=True, sampled=2)

    assert out.report.num_examples == 0
    assert out.report.train_loss == 0.0
    assert out.report.details["train_loss_withheld"] is True
    assert out.report.details["receipts_verified"] == 0
    assert out.report.site == ctx.name
    assert out.report.round == 1


# -- no DP, no secure aggregation ----------------------------------------------------------------
# No sector's own policy admits an unprotected job (the site refuses it in check_job), so the
# training step after the checks, _train_round, is driven directly for these paths.


def test_a_plain_round_sends_the_trained_difference_and_the_exact_count(tmp_path: Path) -> None:
    from fedinfra.task.training import train_plain

    job = _job()
    ctx = _ctx(tmp_path, job)
    weights = _global(ctx)

    out = _train_round(ctx, _instruction(job, 2), weights, verified=0, sampled=2)

    model = job_model(job)[0]
    set_weights(model, weights)
    loss = train_plain(
        job_task(job),
        model,
        ctx.data.x,
        ctx.data.y,
        epochs=1,
        batch_size=job.training.batch_size,
        lr=job.training.lr,
        seed=7 * 100_003 + 2,
    )  # the job's seed, per round
    local = get_weights(model)
    assert out.update is not None
    assert out.ciphertext is None
    assert out.compressed is None
    assert set(out.update) == set(weights)
    for name, value in out.update.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, (local[name] - weights[name]).astype(np.float32))
    assert out.report.num_examples == len(ctx.data.y)
    assert out.report.train_loss == pytest.approx(loss)
    assert math.isfinite(out.report.train_loss)
    assert out.report.train_loss > 0
    assert out.report.details == {"receipts_verified": 0}


def test_a_refused_job_trains_nothing_and_stores_no_reply(tmp_path: Path) -> None:
    from fedinfra.errors import PolicyViolation

    job = _job()
    ctx = _ctx(tmp_path, job)

    with pytest.raises(PolicyViolation, match=rf"^site {ctx.name} refuses the job: .*TLS is off"):
        run_round(ctx, _instruction(job, 1), _global(ctx), tls=False, sampled=2)

    assert not list((ctx.home.run_dir("run-r")).glob("replies/*"))


def test_receipts_the_site_cannot_check_refuse_the_round_before_training(tmp_path: Path) -> None:
    from fedinfra.errors import VerificationError

    job = _dp_sgd_job(epsilon=3.0)
    ctx = _ctx(tmp_path, job)  # no kit: no coordinator log key
    instruction = _instruction(job, 1).model_copy(update={"receipts": ["{}"]})

    with pytest.raises(VerificationError, match=r"^received audit receipts but the site kit holds no coordinator"):
        run_round(ctx, instruction, _global(ctx), tls=True, sampled=2)

    assert _entries(ctx) == []


def test_a_malformed_cosign_request_refuses_the_round_before_training(tmp_path: Path) -> None:
    from fedinfra.errors import VerificationError

    job = _dp_sgd_job(epsilon=3.0)
    ctx = _ctx(tmp_path, job)
    instruction = _instruction(job, 1).model_copy(update={"cosign": "not a request"})

    with pytest.raises(VerificationError):
        run_round(ctx, instruction, _global(ctx), tls=True, sampled=2)

    assert _entries(ctx) == []


def test_a_model_no_checkpoint_records_is_refused_at_a_site_holding_the_log_key(tmp_path: Path) -> None:
    from fedinfra.errors import VerificationError
    from fedinfra.site import replay

    job = _user_dp_job()
    ctx = _ctx(tmp_path, job, kit=True)
    assert ctx.audit_key() is not None
    weights = _global(ctx)
    instruction = _instruction(job, 1).model_copy(update={"model_digest": replay.model_digest(weights)})

    with pytest.raises(VerificationError, match=r"a model came without a checkpoint recording it \(run run-r\)"):
        run_round(ctx, instruction, weights, tls=True, sampled=2)

    assert _entries(ctx) == []


def _coordinator_log(tmp_path: Path, job: JobSpec) -> Any:
    """The coordinator's audit log, signed with the kit's audit key: two updates, one checkpoint."""
    from fedinfra.audit import Actor, AuditLog, Event, Signer, Subject

    signer = Signer.from_skey((_kit(job) / "coordinator" / "audit_signing.key").read_text().strip())
    log = AuditLog.open(tmp_path / "audit.db", origin=signer.name, signer=signer)
    events = [
        Event(
            run_id="run-r",
            round=1,
            type="update.received",
            actor=Actor(kind="site", id=site),
            outcome="success",
            subject=Subject(artifact="update", sha256=f"{i:064x}", size=1),
        )
        for i, site in enumerate(SITES)
    ]
    log.append_many(events, publish=True)
    return log


def _cosign_request(log: Any) -> str:
    from fedinfra.audit.cosign import CosignRequest

    return CosignRequest(checkpoint=log.latest_checkpoint.note, old_size=0, consistency=[]).model_dump_json()


def test_receipts_and_a_cosign_request_are_checked_and_answered_also_when_a_round_is_replayed(tmp_path: Path) -> None:
    from fedinfra.audit.cosign import CosignReply

    job = _user_dp_job()
    ctx = _ctx(tmp_path, job, kit=True)
    weights = _global(ctx)
    log = _coordinator_log(tmp_path, job)
    receipts = [log.receipt(0).to_json(), log.receipt(1).to_json()]
    asked = _instruction(job, 1).model_copy(update={"receipts": receipts, "cosign": _cosign_request(log)})

    first = run_round(ctx, _instruction(job, 1), weights, tls=True, sampled=2)  # nothing to check yet
    again = run_round(ctx, asked, weights, tls=True, sampled=2)  # the same round, asked again
    fresh = run_round(ctx, asked.model_copy(update={"round": 2}), weights, tls=True, sampled=2)

    assert first.report.details["receipts_verified"] == 0
    assert first.report.cosignature == ""
    assert again.report.details["replayed"] is True
    for out in (again, fresh):
        assert out.report.details["receipts_verified"] == 2
        assert CosignReply.model_validate_json(out.report.cosignature).tree_size == log.size
    log.close()


# -- DP-SGD: the plan, the write-ahead step count and the reported figures ------------------------


def _dp_sgd_job(**privacy: Any) -> JobSpec:
    return _job(privacy={"mechanism": "dp-sgd", "delta": 1e-5, "accountant": "rdp", **privacy})


def _dp_state(ctx: SiteContext, run_id: str = "run-r") -> dict[str, float]:
    data: dict[str, float] = json.loads((ctx.home.run_dir(run_id) / "dp_state.json").read_text())
    return data


def test_dp_sgd_plans_sigma_once_for_the_whole_run_and_counts_steps_across_rounds(tmp_path: Path) -> None:
    from fedinfra.privacy import compute_epsilon, plan_noise_multiplier, sample_rate_for, steps_for

    job = _dp_sgd_job(epsilon=3.0)
    ctx = _ctx(tmp_path, job)
    weights = _global(ctx)
    q = sample_rate_for(batch_size=job.training.batch_size, dataset_size=len(ctx.data.y))
    per_round = steps_for(epochs=1, sample_rate=q)

    first = run_round(ctx, _instruction(job, 1), weights, tls=True, sampled=2)
    after_first = _dp_state(ctx)
    second = run_round(ctx, _instruction(job, 2), weights, tls=True, sampled=2)

    sigma = plan_noise_multiplier(
        target_epsilon=3.0, delta=1e-5, sample_rate=q, steps=per_round * job.rounds, accountant="rdp", tolerance=0.05
    )
    assert after_first == {"sigma": pytest.approx(sigma), "steps": per_round}
    assert _dp_state(ctx) == {"sigma": pytest.approx(sigma), "steps": 2 * per_round}
    eps = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=2 * per_round, delta=1e-5, accountant="rdp")
    details = second.report.details
    assert details["epsilon_total"] == pytest.approx(eps)
    assert details["noise_multiplier"] == pytest.approx(sigma)
    assert details["sample_rate"] == pytest.approx(q)
    assert details["steps"] == 2 * per_round
    assert (details["mechanism"], details["delta"], details["accountant"]) == ("dp-sgd", 1e-5, "rdp")
    assert details["max_grad_norm"] == job.privacy.max_grad_norm
    assert details["epsilon_cap_run"] == ctx.manifest.budget.epsilon_per_run
    assert details["epsilon_cap_lifetime"] == ctx.manifest.budget.epsilon_lifetime
    assert details["clipping_mode"] == "fused"  # the built-in task's plain loss: ghost clipping, fused
    assert isinstance(details["model_changes"], list)
    assert float(first.report.details["epsilon_total"]) < eps
    entries = _entries(ctx)
    assert [e.mechanism for e in entries] == ["dp-sgd", "dp-sgd"]
    assert [e.epsilon for e in entries] == pytest.approx([first.report.details["epsilon_total"], eps])
    assert entries[-1].params == {
        "noise_multiplier": pytest.approx(sigma),
        "sample_rate": pytest.approx(q),
        "steps": 2 * per_round,
        "clip": job.privacy.max_grad_norm,
    }
    n = len(ctx.data.y)
    assert second.report.num_examples == bucket_count(n) != n
    assert second.report.train_loss == 0.0


def test_dp_sgd_with_a_given_noise_multiplier_uses_it_and_reports_what_it_spent(tmp_path: Path) -> None:
    from fedinfra.privacy import compute_epsilon, sample_rate_for, steps_for

    job = _dp_sgd_job(epsilon=3.0, noise_multiplier=3.0)
    ctx = _ctx(tmp_path, job)

    out = run_round(ctx, _instruction(job, 1), _global(ctx), tls=True, sampled=2)

    q = sample_rate_for(batch_size=job.training.batch_size, dataset_size=len(ctx.data.y))
    steps = steps_for(epochs=1, sample_rate=q)
    assert _dp_state(ctx) == {"sigma": 3.0, "steps": steps}
    assert out.report.details["epsilon_total"] == pytest.approx(
        compute_epsilon(noise_multiplier=3.0, sample_rate=q, steps=steps, delta=1e-5, accountant="rdp")
    )


def test_a_sigma_kept_in_the_sites_home_is_used_and_never_replanned(tmp_path: Path) -> None:
    from fedinfra.privacy import compute_epsilon, sample_rate_for, steps_for

    job = _dp_sgd_job(epsilon=3.0)
    ctx = _ctx(tmp_path, job)
    run_dir = ctx.home.run_dir("run-r")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "dp_state.json").write_text(json.dumps({"sigma": 5.0}))  # planned, no step taken yet

    out = run_round(ctx, _instruction(job, 1), _global(ctx), tls=True, sampled=2)

    q = sample_rate_for(batch_size=job.training.batch_size, dataset_size=len(ctx.data.y))
    steps = steps_for(epochs=1, sample_rate=q)
    assert out.report.details["noise_multiplier"] == 5.0
    assert _dp_state(ctx) == {"sigma": 5.0, "steps": steps}  # a missing step count is zero steps taken
    assert out.report.details["epsilon_total"] == pytest.approx(
        compute_epsilon(noise_multiplier=5.0, sample_rate=q, steps=steps, delta=1e-5, accountant="rdp")
    )


def test_a_given_noise_multiplier_too_small_for_the_jobs_epsilon_is_refused_before_any_spend(tmp_path: Path) -> None:
    from fedinfra.errors import ConfigError

    # sigma 2.0 over the run's 9 steps: epsilon 3.27 under RDP (the job's accountant), 2.94 under PRV.
    job = _dp_sgd_job(epsilon=3.0, noise_multiplier=2.0)
    ctx = _ctx(tmp_path, job)

    with pytest.raises(
        ConfigError, match=r"^noise_multiplier=2 reaches epsilon=3\.\d+ after 9 steps, above the target 3"
    ):
        run_round(ctx, _instruction(job, 1), _global(ctx), tls=True, sampled=2)

    assert _entries(ctx) == []
    assert not (ctx.home.run_dir("run-r") / "dp_state.json").exists()


def test_a_crash_during_dp_sgd_training_leaves_the_charge_and_the_step_count_written_ahead(tmp_path: Path) -> None:
    from dataclasses import replace

    from fedinfra.privacy import sample_rate_for, steps_for

    job = _dp_sgd_job(epsilon=3.0, noise_multiplier=3.0)
    ctx = _ctx(tmp_path, job)
    bad = ctx.data.y.copy()
    bad[:] = 99  # no such class: the loss raises inside training, after the reservation
    crashing = replace(ctx, data=replace(ctx.data, y=bad))

    with pytest.raises((IndexError, RuntimeError)):
        run_round(crashing, _instruction(job, 1), _global(ctx), tls=True, sampled=2)

    q = sample_rate_for(batch_size=job.training.batch_size, dataset_size=len(bad))
    assert _dp_state(ctx) == {"sigma": 3.0, "steps": steps_for(epochs=1, sample_rate=q)}
    [entry] = _entries(ctx)
    assert (entry.round, entry.mechanism) == (1, "dp-sgd")


def test_a_regression_task_trains_under_dp_sgd_with_its_own_loss_and_output(tmp_path: Path) -> None:
    job = _dp_sgd_job(epsilon=3.0, noise_multiplier=3.0)
    job = job.model_copy(
        update={"task": TaskSpec(ref="fedinfra.task.builtin:RegressionTabularTask", config={"features": 30})}
    )
    ctx = _ctx(tmp_path, job)
    weights = _global(ctx)

    # The task's squared error on its squeezed single output (cross-entropy, or an unsqueezed
    # output broadcast against the targets, would fail or warn, and warnings are errors here).
    out = run_round(ctx, _instruction(job, 1), weights, tls=True, sampled=2)

    assert out.update is not None
    assert {k: v.shape for k, v in out.update.items()} == {"0.weight": (1, 30), "0.bias": (1,)}
    assert all(np.isfinite(v).all() for v in out.update.values())


USER_TASKS = """
import torch
from torch import nn

from fedinfra.task.builtin import TabularTask

STEPS = []


class Stepping(TabularTask):
    def training_step(self, model, x, y, loss):
        STEPS.append(len(x))
        return super().training_step(model, x, y, loss)


class Normed(TabularTask):
    def build_model(self):
        return nn.Sequential(nn.Linear(30, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x):
        if self.training:
            self.seen += x.shape[0]  # a function of the data that no gradient covers
        return x


class Counting(TabularTask):
    def build_model(self):
        return nn.Sequential(Counter(), nn.Linear(30, 2))
"""


def _user_task_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: str) -> tuple[JobSpec, Any]:
    import importlib

    name = f"round_tasks_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(USER_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    job = _dp_sgd_job(epsilon=3.0, noise_multiplier=3.0)
    task = TaskSpec(ref=f"{name}:{cls}", config={"features": 30, "classes": 2})
    return job.model_copy(update={"task": task}), importlib.import_module(name)


def test_under_dp_sgd_a_tasks_own_training_step_computes_every_batch_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, module = _user_task_job(tmp_path, monkeypatch, "Stepping")
    ctx = _ctx(tmp_path, job)

    out = run_round(ctx, _instruction(job, 1), _global(ctx), tls=True, sampled=2)

    assert out.update is not None
    assert module.STEPS  # the task's step, not the framework's cross-entropy of the raw output


def test_under_dp_sgd_the_layers_changed_when_the_model_was_built_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _module = _user_task_job(tmp_path, monkeypatch, "Normed")
    ctx = _ctx(tmp_path, job)

    out = run_round(ctx, _instruction(job, 1), _global(ctx), tls=True, sampled=2)

    assert out.report.details["model_changes"] == ["1: BatchNorm1d -> GroupNorm"]


def test_under_dp_sgd_a_buffer_changed_by_training_is_withheld_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _module = _user_task_job(tmp_path, monkeypatch, "Counting")
    ctx = _ctx(tmp_path, job)

    out = run_round(ctx, _instruction(job, 1), _global(ctx), tls=True, sampled=2)

    assert out.update is not None
    assert out.report.details["buffers_withheld"] == ["0.seen"]
    assert not out.update["0.seen"].any()
    assert out.update["1.weight"].any()


def test_a_tasks_own_training_step_gets_the_batch_and_the_tasks_loss() -> None:
    import torch
    from torch import nn

    from fedinfra.site.round import _task_step
    from fedinfra.task import Task

    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module]] = []

    class Stepping(Task):
        kind = "regression"

        def build_model(self) -> nn.Module:
            return nn.Linear(3, 1)

        def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: nn.Module) -> torch.Tensor:
            calls.append((model, x, y, loss))
            return super().training_step(model, x, y, loss)

    task = Stepping({})
    model = nn.Linear(3, 1)
    x, y = torch.ones(4, 3), torch.zeros(4)

    value = _task_step(task)(model, x, y)

    [(got_model, got_x, got_y, loss)] = calls
    assert (got_model, got_x, got_y) == (model, x, y)
    assert isinstance(loss, nn.MSELoss)  # the task's loss, built once for the run
    assert value.item() == pytest.approx(nn.MSELoss()(model(x).squeeze(1), y).item())


# -- compression, in the clear and under BFV ------------------------------------------------------------


def test_compression_without_encryption_sends_only_the_compressed_blob_and_keeps_the_residual(tmp_path: Path) -> None:
    from fedinfra.aggregation.compression import decode, dense_bytes, layout_of

    job = _job(compression={"bits": 4, "clip": 1.0, "topk_fraction": 0.5})
    ctx = _ctx(tmp_path, job)
    weights = _global(ctx)

    out = _train_round(ctx, _instruction(job, 1), weights, verified=0, sampled=2)

    assert out.compressed is not None
    assert out.update is None
    assert out.ciphertext is None
    assert out.report.details["bytes_sent"] == len(out.compressed)
    assert out.report.details["bytes_dense"] == dense_bytes(layout_of(weights))
    assert out.report.num_examples == len(ctx.data.y)
    size = sum(v.size for v in weights.values())
    sent = decode(out.compressed)
    assert sent.indices is not None
    assert len(sent.indices) == math.ceil(0.5 * size)
    assert (sent.bits, sent.step) == (4, 1.0 / 7)  # the job's bits and clip: 7 levels of 1/7 each side
    residual = np.load(ctx.home.run_dir("run-r") / "residual.npy")
    assert residual.shape == (size,)
    assert np.any(residual != 0)  # the coordinates top-k dropped are carried to the next round


def test_a_compressed_round_starts_from_the_residual_kept_by_the_last_one(tmp_path: Path) -> None:
    from fedinfra.aggregation.compression import decode, flatten

    job = _job(compression={"bits": 8, "clip": 1.0, "topk_fraction": 0.05})
    weights = _global(_ctx(tmp_path / "plain", _job()))
    plain = _train_round(_ctx(tmp_path / "plain", _job()), _instruction(_job(), 1), weights, verified=0, sampled=2)
    assert plain.update is not None
    flat = flatten(plain.update)
    smallest = int(np.argmin(np.abs(flat)))  # never among the top 5 % on its own
    ctx = _ctx(tmp_path / "site", job)
    residual = np.zeros(flat.size)
    residual[smallest] = 10.0  # what a previous round left unsent at that coordinate
    ctx.home.run_dir("run-r").mkdir(parents=True, exist_ok=True)
    np.save(ctx.home.run_dir("run-r") / "residual.npy", residual)

    out = _train_round(ctx, _instruction(job, 1), weights, verified=0, sampled=2)

    assert out.compressed is not None
    sent = decode(out.compressed)
    assert sent.indices is not None
    assert smallest in sent.indices.tolist()


def test_compression_under_bfv_clips_here_lets_the_codec_quantize_and_weighs_by_examples(tmp_path: Path) -> None:
    from fedinfra.aggregation.compression import dense_bytes, layout_of

    job = _job(compression={"bits": 16, "clip": 0.5}, secure_aggregation={"mode": "bfv", "quant_bits": 16})
    ctx = _ctx(tmp_path, job, kit=True)
    weights = _global(ctx)

    out = run_round(ctx, _instruction(job, 1), weights, tls=True, sampled=2)

    assert out.ciphertext is not None
    assert out.update is None
    assert out.compressed is None
    details = out.report.details
    assert details["quantized_by"] == "bfv"
    assert details["bytes_sent"] == len(out.ciphertext)
    assert details["bytes_dense"] == dense_bytes(layout_of(weights))
    assert out.report.num_examples == 0  # the count travels inside the sum
    mean, weight = _open(tmp_path, ctx, out.ciphertext, 1)
    assert weight == len(ctx.data.y)
    assert float(np.linalg.norm(mean)) <= 0.5 * (1 + 1e-3)  # clipped to compression.clip, not the codec's clip


def test_bfv_without_compression_sends_the_update_sealed_with_the_example_count(tmp_path: Path) -> None:
    job = _job(secure_aggregation={"mode": "bfv"})
    ctx = _ctx(tmp_path, job, kit=True)

    out = run_round(ctx, _instruction(job, 1), _global(ctx), tls=True, sampled=2)

    assert out.ciphertext is not None
    assert "bytes_sent" not in out.report.details
    assert "quantized_by" not in out.report.details
    _mean, weight = _open(tmp_path, ctx, out.ciphertext, 1)
    assert weight == len(ctx.data.y)


# -- a retried round re-sends the stored reply of its kind ----------------------------------------------


def test_a_retried_encrypted_round_re_sends_the_same_ciphertext(tmp_path: Path) -> None:
    job = _user_dp_job()
    ctx = _ctx(tmp_path, job, kit=True)
    weights = _global(ctx)
    first = run_round(ctx, _instruction(job, 1), weights, tls=True, sampled=2)

    again = run_round(ctx, _instruction(job, 1), weights, tls=True, sampled=2)

    assert again.report.details["replayed"] is True
    assert again.ciphertext == first.ciphertext
    assert again.update is None
    assert again.compressed is None
    assert len(_entries(ctx)) == 1


def test_a_retried_compressed_round_re_sends_the_same_blob(tmp_path: Path) -> None:
    job = _job(compression={"bits": 8, "clip": 1.0}, privacy={"mechanism": "dp-sgd", "epsilon": 3.0})
    ctx = _ctx(tmp_path, job)
    weights = _global(ctx)
    first = run_round(ctx, _instruction(job, 1), weights, tls=True, sampled=2)

    again = run_round(ctx, _instruction(job, 1), weights, tls=True, sampled=2)

    assert again.report.details["replayed"] is True
    assert again.report.details["receipts_verified"] == 0
    assert again.compressed == first.compressed
    assert again.ciphertext is None
    assert again.update is None
