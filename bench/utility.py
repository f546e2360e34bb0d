"""Utility of DP federated training: test accuracy against epsilon, mean over seeds.

An in-process federated loop (not Flower: this measures utility, not transport) built from
fedinfra's own pieces - ``load_bundled`` + ``dirichlet_partition`` for the sites,
``build_model``, ``train_dp_sgd`` at each site and ``StreamingFedAvg`` + server momentum
at the coordinator. References measured in the same run, same splits and seeds:

* centralized - non-private SGD on the pooled training data;
* federated - the same federated loop without DP.

Choices (why this beats a naive FedAvg + DP-SGD): every site uses the *same* Poisson
rate q (its batch is q x its size), so one noise multiplier, planned with the PRV
accountant for the whole run, serves all sites and is spent exactly; large batches
(q = 1, i.e. full-batch noisy gradient steps: noise / signal falls with the batch) with one
local step per round, few rounds (fewer steps = less noise per step), server momentum 0.9
to average the noise across rounds,
and clip bounds tuned per task. Each site's (epsilon, delta) covers all its steps.

Scenarios (issue 4): hospital - breast cancer, 4 sites, Dirichlet 0.5, logistic
regression, epsilon 1 and 3; digits - 10 sites, Dirichlet 0.5, MLP 64-32-10, epsilon 3
and 8. delta = 1e-5. Goals: hospital >= 0.95 at epsilon 1; digits >= 0.92 at epsilon 3
and >= 0.94 at epsilon 8.

Run: ``python bench/utility.py [--quick]`` (quick: 2 seeds instead of 5).
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, parse_args

DELTA = 1e-5


@dataclass(frozen=True)
class Scenario:
    name: str
    dataset: str
    sites: int
    kind: str
    hidden: tuple[int, ...]
    epsilons: tuple[float, ...]
    goals: dict[float, float]
    rounds: int
    clip: float
    lr: float
    server_lr: float
    momentum: float


SCENARIOS = [
    Scenario("hospital", "breast_cancer", 4, "logreg", (), (1.0, 3.0), {1.0: 0.95},
             rounds=10, clip=1.0, lr=1.0, server_lr=1.0, momentum=0.9),
    Scenario("digits", "digits", 10, "mlp", (32,), (3.0, 8.0), {3.0: 0.92, 8.0: 0.94},
             rounds=30, clip=0.25, lr=4.0, server_lr=1.0, momentum=0.9),
]
Q = 1.0  # Poisson rate at every site (full-batch steps)
LOCAL_EPOCHS = 1


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def _plain_sgd(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, batch: int, lr: float, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()


def _federated(sc: Scenario, data: Any, parts: list[np.ndarray], *, seed: int, rounds: int,
               sigma: float | None) -> tuple[float, float]:
    """Return (test accuracy, largest site epsilon; 0 without DP)."""
    from fedinfra.aggregation import StreamingFedAvg
    from fedinfra.config import ModelSpec
    from fedinfra.models import build_model, get_weights, set_weights
    from fedinfra.privacy import steps_for, train_dp_sgd

    spec = ModelSpec(kind=sc.kind, hidden=list(sc.hidden) or [32])  # type: ignore[arg-type]
    model = build_model(spec, num_features=data.num_features, num_classes=data.num_classes, seed=seed)
    weights = get_weights(model)
    velocity = {k: np.zeros_like(v) for k, v in weights.items()}
    steps_per_round = steps_for(epochs=LOCAL_EPOCHS, sample_rate=Q)
    max_eps = 0.0
    for rnd in range(rounds):
        agg = StreamingFedAvg()
        for i, idx in enumerate(parts):
            x, y = data.x_train[idx], data.y_train[idx]
            set_weights(model, weights)
            if sigma is None:
                _plain_sgd(model, x, y, epochs=1, batch=32, lr=0.05, seed=seed * 1000 + rnd * 50 + i)
            else:
                res = train_dp_sgd(model, x, y, epochs=LOCAL_EPOCHS, batch_size=len(idx), lr=sc.lr,
                                   noise_multiplier=sigma, max_grad_norm=sc.clip, delta=DELTA,
                                   steps_before=rnd * steps_per_round, accountant="rdp",
                                   seed=seed * 100_000 + rnd * 100 + i)
                if rnd == rounds - 1:
                    max_eps = max(max_eps, res.epsilon)
            new = get_weights(model)
            agg.add({k: new[k] - weights[k] for k in weights}, weight=float(len(idx)))
        mean = agg.result()
        for k in weights:
            velocity[k] = sc.momentum * velocity[k] + mean[k]
            weights[k] = weights[k] + sc.server_lr * velocity[k]
    set_weights(model, weights)
    return _accuracy(model, data.x_test, data.y_test), max_eps


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from fedinfra.config import ModelSpec
    from fedinfra.data import dirichlet_partition, load_bundled
    from fedinfra.models import build_model
    from fedinfra.privacy import compute_epsilon, plan_noise_multiplier, steps_for

    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    report = Report("utility", __doc__.splitlines()[0],
                    params={"seeds": seeds, "delta": DELTA, "q": Q, "local_epochs": LOCAL_EPOCHS,
                            "quick": args.quick})
    for sc in SCENARIOS:
        rounds = sc.rounds
        steps = rounds * steps_for(epochs=LOCAL_EPOCHS, sample_rate=Q)
        sigmas = {eps: plan_noise_multiplier(target_epsilon=eps, delta=DELTA, sample_rate=Q, steps=steps,
                                             accountant="prv") for eps in sc.epsilons}
        acc: dict[str, list[float]] = {"centralized": [], "federated": []}
        acc.update({f"eps{eps:g}": [] for eps in sc.epsilons})
        t0 = time.perf_counter()
        for seed in seeds:
            data = load_bundled(sc.dataset, test_fraction=0.2, seed=seed)
            parts = dirichlet_partition(data.y_train, num_sites=sc.sites, alpha=0.5, seed=seed)
            spec = ModelSpec(kind=sc.kind, hidden=list(sc.hidden) or [32])  # type: ignore[arg-type]
            central = build_model(spec, num_features=data.num_features, num_classes=data.num_classes, seed=seed)
            _plain_sgd(central, data.x_train, data.y_train, epochs=30, batch=32, lr=0.05, seed=seed)
            acc["centralized"].append(_accuracy(central, data.x_test, data.y_test))
            acc["federated"].append(_federated(sc, data, parts, seed=seed, rounds=max(10, rounds // 4),
                                               sigma=None)[0])
            for eps, sigma in sigmas.items():
                a, _ = _federated(sc, data, parts, seed=seed, rounds=rounds, sigma=sigma)
                prv = compute_epsilon(noise_multiplier=sigma, sample_rate=Q, steps=steps, delta=DELTA,
                                      accountant="prv")
                assert prv <= eps + 1e-9, (prv, eps)
                acc[f"eps{eps:g}"].append(a)
        print(f"{sc.name}: {len(seeds)} seeds in {time.perf_counter() - t0:.0f} s; rounds {rounds}, "
              f"q {Q}, clip {sc.clip}, server momentum {sc.momentum}")
        base = statistics.mean(acc["centralized"])
        for key, values in acc.items():
            mean = statistics.mean(values)
            entry: dict[str, Any] = {"mean_accuracy": mean, "per_seed": values,
                                     "ratio_vs_centralized": mean / base}
            if key.startswith("eps"):
                eps = float(key[3:])
                entry.update(epsilon=eps, delta=DELTA, noise_multiplier=sigmas[eps], accountant="prv",
                             steps=steps)
            (report.baselines if key in ("centralized", "federated") else report.figures)[f"{sc.name}/{key}"] = entry
            print(f"  {key:12s} accuracy {mean:.4f} (seeds {', '.join(f'{v:.3f}' for v in values)}) "
                  f"= {mean / base:.3f}x centralized"
                  + (f"; noise multiplier {sigmas[float(key[3:])]:.3f}" if key.startswith("eps") else ""))
        for eps, goal in sc.goals.items():
            value = statistics.mean(acc[f"eps{eps:g}"])
            met = value >= goal
            report.goals[f"{sc.name}/eps{eps:g}"] = {"value": value, "at_least": goal, "met": met}
            print(f"goal {sc.name} at epsilon {eps:g}: {value:.4f} >= {goal}: {'met' if met else 'NOT MET'}")
    report.save(args.out)


if __name__ == "__main__":
    main()
