"""Utility of DP federated training on the task examples (issue 17): the CNN and Caravan.

Goals (issue 17, "Show it"): ``examples/digits_cnn`` federated at epsilon 8 within 3 points
of its non-private federated accuracy; ``examples/caravan`` ROC AUC at epsilon 3 within
0.03 of non-private. The baseline of each goal is the *same* job without DP
(``privacy.mechanism = "none"``), measured in the same run, same sites, partition, split,
initial model and rounds, per seed.

Code path. Each example is prepared as its test does (``prepare.py`` into a temporary
folder; the job's ``data.source`` made absolute, its folder importable), then every round
runs the site code of ``fedinfra simulate`` in this process: per simulated site
:func:`fedinfra.site.context.site_context` (the job's own partition of its data set
through the screen and the task's ``load_data``) and :func:`fedinfra.site.round.run_round`
(policy check, DP-SGD through Opacus with the site's noise plan, write-ahead ledger,
accounting - the round a ClientApp runs). The coordinator step is the one
``coordinator.server`` takes: the example-weighted mean of the updates
(:class:`~fedinfra.aggregation.StreamingFedAvg`) then
:class:`~fedinfra.aggregation.server_opt.ServerOptimizer` with the job's ``server_lr``
and ``server_momentum``. The model is scored the way a run's ``metrics.json`` is: every
site evaluates the final model on its held-out shard as additive sums
(:func:`fedinfra.site.app._test_counts`), the sums are added and
:func:`fedinfra.task.metrics.finalize` gives accuracy / ROC AUC. Not included: Flower and
Ray transport, and the secure aggregation's masking (secagg sums 20-bit fixed-point
updates exactly, so the mean differs from this float mean by the quantization only).
Sites train one after another, so the durations are those of one core.

Arms per example: ``federated`` (the example's job.toml without DP), ``dp`` (job.toml
exactly as shipped), a second non-private arm (``federated-tuned`` / ``federated-r10``)
and ``dp-tuned`` (same epsilon, delta, accountant, sites, partition, model; only rounds,
clip and training hyperparameters changed, chosen on seeds other than the reported ones -
see ``TUNING``). Every DP arm is printed against its matching non-private arm; the goal
is judged against the *strongest* non-private arm of the run (the shipped jobs'
non-private runs are weak: unclipped full-batch steps at lr 1 leave the CNN near chance
and Caravan's AUC unstable, so a gap to them says little).

What limits the DP arms (measured figures in ``bench/results/task_utility.json``). With
full-batch steps (q = 1, as both jobs ship) there is no amplification by sampling: epsilon
fixes sigma / sqrt(steps), so the noise summed over a run grows as fast as the signal and
more rounds buy optimisation progress, not signal-to-noise (the first-order picture of
the ``bench/utility.py`` docstring). Per step a site's noisy mean gradient carries noise of
norm ~ sigma * C * sqrt(d) / n against a signal of norm <= C:

* digits_cnn: d = 1,946 parameters, n ~ 360 images per site (1,437 training images over 4
  sites), sigma 4.1 for 40 steps at epsilon 8 (RDP): noise ~ 0.5 C per site and step, ~ 0.25 C
  after the 4-site mean - the CNN sees a noisy gradient on every step. Closing the gap
  needs less noise per parameter: more examples per site (noise ~ 1/n), fewer parameters
  (a narrower CNN; or frozen / public-pretrained features and a private linear head,
  Tramer & Boneh 2021), the PRV accountant (sigma 3.9 instead of 4.1 here) or noise added
  in shares under the secure sum (distributed DP: 1/sqrt(4) of the noise per site for the
  same guarantee against the coordinator; fedinfra does this for user-level DP only).
* caravan: d = 172, n ~ 1,165 rows per site of which ~6% buyers; the ranking signal is the
  buyers' share of the clipped mean gradient (~0.06 C), against noise ~ 0.027 C after the
  mean at epsilon 3 over 10 steps (sigma 4.75).

Run: ``python bench/task_utility.py [--quick]`` (quick: 2 seeds instead of 5).
"""

from __future__ import annotations

import os
import runpy
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, parse_args

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class Arm:
    """One configuration of an example's job: DP on or off, and what differs from job.toml."""

    private: bool
    rounds: int | None = None
    clip: float | None = None
    accountant: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    #: For a DP arm: the non-private arm it is compared with.
    baseline: str = ""
    note: str = ""


@dataclass(frozen=True)
class Example:
    """One example, its headline metric and the goal on the gap to its non-private run."""

    name: str
    metric: str
    max_gap: float
    arms: dict[str, Arm]
    #: DP arms whose gap is a goal (the others are reported only).
    goal_arms: tuple[str, ...]


EXAMPLES_RUN = [
    Example(
        "digits_cnn",
        "accuracy",
        0.03,
        arms={
            "federated": Arm(
                False,
                note="job.toml without DP: 10 full-batch steps at lr 1 leave the CNN near "
                "chance, so the shipped pair says nothing about DP's cost",
            ),
            "dp": Arm(True, baseline="federated", note="job.toml as shipped"),
            "federated-tuned": Arm(
                False,
                rounds=10,
                training={"local_epochs": 2, "batch_size": 32, "lr": 0.1},
                note="best non-private config tried (TUNING)",
            ),
            "dp-tuned": Arm(
                True,
                rounds=40,
                clip=0.1,
                training={"lr": 20.0, "server_momentum": 0.5},
                baseline="federated-tuned",
                note="full-batch steps (q = 1), clip 0.1, lr 20, server momentum 0.5, 40 rounds",
            ),
        },
        goal_arms=("dp-tuned",),
    ),
    Example(
        "caravan",
        "roc_auc",
        0.03,
        arms={
            "federated": Arm(False, note="job.toml without DP (5 rounds)"),
            "dp": Arm(True, baseline="federated", note="job.toml as shipped"),
            "federated-r10": Arm(False, rounds=10, note="job.toml without DP, 10 rounds"),
            "dp-tuned": Arm(
                True,
                rounds=10,
                clip=0.1,
                training={"lr": 10.0},
                baseline="federated-r10",
                note="10 rounds, clip 0.1, lr 10 (q = 1 as shipped)",
            ),
        },
        goal_arms=("dp", "dp-tuned"),
    ),
]
#: How the tuned arms were chosen (recorded in the results). Every grid point was run on
#: seeds 100-102 (other train/test splits, partitions and initial models of the same
#: public data), never on the reported seeds 0-4; the mean over those seeds picked the arm.
TUNING: dict[str, str] = {
    "digits_cnn/federated-tuned": "non-private: rounds 10, local SGD batch 32, (epochs 1, lr 0.1) 0.726, "
    "(epochs 2, lr 0.1) 0.827, (epochs 2, lr 0.05) 0.800 accuracy; more rounds not finished in the time box",
    "digits_cnn/dp-tuned": "epsilon 8, clip 0.1 (every per-example gradient clipped), q = 1: rounds 20 lr 10 0.332, "
    "rounds 20 lr 20 0.415, + server momentum 0.5 0.475, lr 40 0.451, rounds 40 lr 20 momentum 0.5 0.585; "
    "Poisson batches of 90 (q ~ 0.25, ~4 steps per round) 20 rounds lr 10 momentum 0.5 0.578, lr 20 0.531; "
    "PRV accountant (sigma 3.875 instead of 4.125) rounds 40 lr 20 momentum 0.5 0.554, rounds 80 (sigma 5.5) 0.555",
    "caravan/dp-tuned": "epsilon 3, q = 1: shipped (5 rounds, clip 1, lr 1) 0.623 ROC AUC, clip 0.1 lr 10 0.625, "
    "clip 0.1 lr 30 0.644, clip 0.1 lr 10 momentum 0.5 0.643, 10 rounds clip 0.1 lr 10 0.647; non-private "
    "5 rounds 0.675, 20 rounds 0.701, full-batch lr 5 0.632, local SGD batch 64 lr 0.01 0.623 / lr 0.003 0.537",
}


def prepare(name: str, into: Path) -> Any:
    """Copy ``examples/<name>``, run its ``prepare.py``; return its job with an absolute data path."""
    from fedinfra.config import load_job

    root = into / name
    shutil.copytree(EXAMPLES / name, root)
    runpy.run_path(str(root / "prepare.py"), run_name="example")["main"](root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    job = load_job(root / "job.toml")
    assert job.data.source is not None
    source = job.data.source.model_copy(update={"path": str(root / job.data.source.path)})
    return job.model_copy(update={"data": job.data.model_copy(update={"source": source})})


def variant(job: Any, arm: Arm, *, seed: int) -> Any:
    """``job`` with ``seed``, DP on or off, and the arm's rounds / training / clip (validated again)."""
    data = job.model_dump()
    data["seed"] = seed
    data["rounds"] = arm.rounds or job.rounds
    if not arm.private:
        data["privacy"] = {"mechanism": "none"}
    else:
        data["privacy"]["max_grad_norm"] = arm.clip or job.privacy.max_grad_norm
        data["privacy"]["accountant"] = arm.accountant or job.privacy.accountant
    data["training"].update(arm.training)
    return type(job).model_validate(data)


def federate(job: Any, home: Path, run_id: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Run ``job`` through the site rounds and the coordinator step; return (metrics, DP details)."""
    from fedinfra.aggregation import StreamingFedAvg
    from fedinfra.aggregation.server_opt import ServerOptimizer
    from fedinfra.config.wire import TrainInstruction
    from fedinfra.models import get_weights
    from fedinfra.site.app import _test_counts
    from fedinfra.site.context import site_context
    from fedinfra.site.round import run_round
    from fedinfra.site.tasks import job_model, job_task
    from fedinfra.task.metrics import finalize

    n = job.sites.count
    ctxs = [site_context({"partition-id": i, "num-partitions": n, "state-dir": str(home)}, job) for i in range(n)]
    weights = get_weights(job_model(job)[0])
    opt = ServerOptimizer(lr=job.training.server_lr, momentum=job.training.server_momentum)
    details: dict[str, Any] = {}
    for rnd in range(1, job.rounds + 1):
        instruction = TrainInstruction(run_id=run_id, round=rnd, phase="train", job=job.model_dump(mode="json"))
        agg = StreamingFedAvg()
        for ctx in ctxs:
            out = run_round(ctx, instruction, weights, tls=True, sampled=n)
            assert out.update is not None
            agg.add(out.update, weight=float(len(ctx.data.y)))
            if out.report.details.get("mechanism") == "dp-sgd":
                details = dict(out.report.details)
        weights = opt.step(weights, agg.result())
    sums: dict[str, Any] = {}
    for ctx in ctxs:
        _, _, _, site_sums = _test_counts(ctx, weights)
        for k, v in site_sums.items():
            sums[k] = [a + b for a, b in zip(sums[k], v, strict=True)] if k in sums else list(v)
    metrics = finalize(job_task(job).kind, sums)
    if job_task(job).kind == "binary":
        metrics["roc_auc_exact"] = _exact_auc(job, ctxs, weights)
    return metrics, details


def _exact_auc(job: Any, ctxs: list[Any], weights: Any) -> float:
    """ROC AUC of the pooled held-out shards from unbinned scores (sklearn), for comparison.

    fedinfra reports AUC from 100-bin score histograms summed across sites
    (:mod:`fedinfra.task.metrics`); scores crowded into a few bins tie there.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from fedinfra.models import set_weights
    from fedinfra.site.tasks import job_model, job_task
    from fedinfra.task.training import predict

    task = job_task(job)
    model, _ = job_model(job)
    set_weights(model, weights)
    scores, labels = [], []
    for ctx in ctxs:
        if ctx.data.test_x is not None and ctx.data.test_y is not None and len(ctx.data.test_y):
            scores.append(predict(task, model, ctx.data.test_x).softmax(1)[:, 1].numpy())
            labels.append(ctx.data.test_y)
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    report = Report(
        "task_utility",
        __doc__.splitlines()[0],
        params={
            "seeds": seeds,
            "quick": args.quick,
            "tuning": TUNING,
            "nice": os.nice(0),
            "path": "in-process: per simulated site fedinfra.site.context.site_context + fedinfra.site.round.run_round "
            "(the ClientApp's train round: screen, task load_data, policy check, DP-SGD via Opacus, ledger), "
            "coordinator step StreamingFedAvg (example-weighted) + ServerOptimizer; no Flower/Ray transport, "
            "no secagg masking (exact 20-bit fixed-point sum in a real run)",
            "examples": {
                ex.name: {
                    "metric": ex.metric,
                    "max_gap": ex.max_gap,
                    "arms": {k: {**vars(a), "training": dict(a.training)} for k, a in ex.arms.items()},
                }
                for ex in EXAMPLES_RUN
            },
        },
    )
    with tempfile.TemporaryDirectory(prefix="task-utility-") as tmp:
        for ex in EXAMPLES_RUN:
            run_example(ex, prepare(ex.name, Path(tmp)), seeds, Path(tmp), report)
    report.save(args.out)


def run_example(ex: Example, job: Any, seeds: list[int], tmp: Path, report: Report) -> None:
    """Run every arm of ``ex`` on every seed; record baselines, figures, differences and goals."""
    runs: dict[str, list[dict[str, float]]] = {a: [] for a in ex.arms}
    seconds: dict[str, list[float]] = {a: [] for a in ex.arms}
    dp_details: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        for name, arm in ex.arms.items():
            t0 = time.perf_counter()
            metrics, details = federate(
                variant(job, arm, seed=seed), tmp / f"home-{ex.name}-{name}-{seed}", f"{ex.name}-{name}-{seed}"
            )
            seconds[name].append(time.perf_counter() - t0)
            runs[name].append(metrics)
            dp_details[name] = details or dp_details.get(name, {})
            print(
                f"  {ex.name} {name} seed {seed}: {ex.metric} {metrics[ex.metric]:.4f} "
                f"({seconds[name][-1]:.1f} s, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    extra = [k for k in ("roc_auc_exact",) if k in runs["federated"][0]]
    means: dict[str, float] = {}
    for name, arm in ex.arms.items():
        vs = [m[ex.metric] for m in runs[name]]
        means[name] = mean = statistics.mean(vs)
        entry: dict[str, Any] = {
            "label": f"{ex.name} {name}",
            "metric": ex.metric,
            "mean": mean,
            "per_seed": vs,
            "seeds": seeds,
            "note": arm.note,
            "seconds_per_run_mean": statistics.mean(seconds[name]),
            "seconds_per_run": seconds[name],
            "rounds": arm.rounds or job.rounds,
            "training": {**job.training.model_dump(), **arm.training},
            **{f"{k}_mean": statistics.mean(m[k] for m in runs[name]) for k in extra},
            **{f"{k}_per_seed": [m[k] for m in runs[name]] for k in extra},
        }
        shown = f"{ex.metric} {mean:.4f} (seeds {', '.join(f'{v:.3f}' for v in vs)})" + "".join(
            f"; {k} {entry[k + '_mean']:.4f}" for k in extra
        )
        if not arm.private:
            report.baselines[f"{ex.name}/{name}"] = entry
            print(f"{ex.name} baseline {name} (no DP): {shown}; {entry['seconds_per_run_mean']:.1f} s/run")
            continue
        base = report.baselines[f"{ex.name}/{arm.baseline}"]
        gaps = [b - v for b, v in zip(base["per_seed"], vs, strict=True)]
        entry.update(
            baseline=arm.baseline,
            gap_vs_baseline=base["mean"] - mean,
            gap_per_seed=gaps,
            clip=arm.clip or job.privacy.max_grad_norm,
            **_dp_summary(dp_details.get(name, {})),
        )
        report.figures[f"{ex.name}/{name}"] = entry
        report.ratios[f"{ex.name}/{name}/{arm.baseline}"] = {
            "figure": f"{ex.name}/{name}",
            "baseline": f"{ex.name}/{arm.baseline}",
            "difference": mean - base["mean"],
            "ratio": mean / base["mean"],
            "meaning": f"{ex.metric} {mean:.4f} with DP vs {base['mean']:.4f} without: {mean - base['mean']:+.4f}",
        }
        print(
            f"{ex.name} {name}: {shown}; {entry['seconds_per_run_mean']:.1f} s/run; epsilon "
            f"{entry.get('epsilon_total', float('nan')):.3f} ({entry.get('accountant')}), noise multiplier "
            f"{entry.get('noise_multiplier')}, {entry.get('steps')} steps, {entry.get('clipping_mode')}\n"
            f"    vs {arm.baseline} (no DP) {base['mean']:.4f}: {mean - base['mean']:+.4f} "
            f"({mean / base['mean']:.3f}x; per seed {', '.join(f'{-g:+.3f}' for g in gaps)})"
        )
    # The goal's baseline is the strongest non-private arm measured, so a weak non-private
    # configuration (the shipped jobs': unclipped full-batch steps at lr 1) cannot make it easy.
    best = max((n for n, a in ex.arms.items() if not a.private), key=lambda n: means[n])
    for name in ex.goal_arms:
        gap = means[best] - means[name]
        met = gap <= ex.max_gap
        report.goals[f"{ex.name}/{name}"] = {
            "value_gap": gap,
            "at_most": ex.max_gap,
            "met": met,
            "figure": f"{ex.name}/{name}",
            "baseline": f"{ex.name}/{best}",
            "metric": ex.metric,
            "gap_vs_matching_baseline": means[ex.arms[name].baseline] - means[name],
        }
        print(
            f"goal {ex.name} {name}: {ex.metric} gap to the best non-private arm ({best}, {means[best]:.4f}) "
            f"{gap:.4f} <= {ex.max_gap}: {'met' if met else 'NOT MET'}"
        )


def _dp_summary(details: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "epsilon_total",
        "delta",
        "accountant",
        "noise_multiplier",
        "max_grad_norm",
        "sample_rate",
        "steps",
        "clipping_mode",
    )
    return {k: details[k] for k in keys if k in details}


if __name__ == "__main__":
    main()
