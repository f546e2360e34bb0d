"""DP-SGD cost: samples/s and peak memory of DP training (fused / Opacus) vs non-private training.

Same model, same data, same number of steps and the same expected batch size:

* baseline - plain ``torch.optim.SGD`` on shuffled fixed-size batches (non-private);
* ``fedinfra.privacy.train_dp_sgd`` in the mode it picks (``mode="auto"``): for the Linear
  MLPs the fused per-sample clipping path (no Opacus; ``fedinfra.privacy.dp_sgd_fused``),
  and, for comparison, Opacus ghost clipping and Opacus hooks (per-sample gradients).

Models: the digits MLP (64-32-10, what ``fedinfra.models.build_model`` makes for the
digits scenario), a 784-512-512-10 MLP, and the GroupNorm CNN of ``examples/digits_cnn``
(1x8x8 images; convolutions: ``choose_mode`` picks Opacus hooks, and ghost clipping, which
Opacus 1.6 also accepts for Conv2d/GroupNorm, is timed too; the goal is judged on the
faster of the two), on seeded
synthetic data (n = 8192, batch 256).
Throughput: medians of interleaved runs of 2 epochs each (the one RDP accounting call
per run included). Peak memory: each configuration runs in a fresh
subprocess that samples its RSS every millisecond and reports the peak growth over the
state right before training (imports, data and model already loaded).

Goal (issue 4): DP >= 0.4x non-private throughput and <= +100 MiB peak memory (Linear models);
issue 17: >= 0.33x on the CNN.

Run: ``python bench/dp_sgd.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, parse_args, time_interleaved

N = 8192
BATCH = 256
MODELS: dict[str, tuple[int, list[int], int]] = {
    "digits_mlp": (64, [32], 10),
    "mlp_784_512_512": (784, [512, 512], 10),
    "digits_cnn": (64, [], 10),  # input 1x8x8; the layers are the example's DigitsCNN
}
#: Which private modes each model is timed in, fastest expected first (the goal's mode).
#: ``fused`` is timed as ``mode="auto"`` and checked to be what train_dp_sgd picked.
MODES = {
    "digits_mlp": ("fused", "ghost", "hooks"),
    "mlp_784_512_512": ("fused", "ghost", "hooks"),
    "digits_cnn": ("hooks", "ghost"),
}
#: Throughput goal of the fastest mode, as a share of non-private.
GOALS = {"digits_mlp": 0.4, "mlp_784_512_512": 0.4, "digits_cnn": 0.33}


def _cnn() -> Any:
    from torch import nn

    width = 8
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.GroupNorm(2, width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(2, 2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 2 * 2, 10),
    )


def _setup(model_name: str) -> tuple[Any, np.ndarray, np.ndarray]:
    import torch
    from torch import nn

    d, hidden, k = MODELS[model_name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, d), dtype=np.float32)
    y = rng.integers(0, k, N).astype(np.int64)
    torch.manual_seed(0)
    if model_name == "digits_cnn":
        return _cnn(), x.reshape(N, 1, 8, 8), y
    layers: list[nn.Module] = []
    width = d
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, k))
    return nn.Sequential(*layers), x, y


def _nonprivate(model: Any, x: np.ndarray, y: np.ndarray, steps: int) -> None:
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(N, generator=g)
    for s in range(steps):
        idx = perm[(s * BATCH) % N : (s * BATCH) % N + BATCH]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xt[idx]), yt[idx]).backward()
        opt.step()


def _dp(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, mode: str) -> None:
    from fedinfra.privacy import train_dp_sgd

    result = train_dp_sgd(model, x, y, epochs=epochs, batch_size=BATCH, lr=0.05, noise_multiplier=1.0,
                          max_grad_norm=1.0, delta=1e-5, accountant="rdp", seed=1,
                          mode="auto" if mode == "fused" else mode)  # type: ignore[arg-type]
    if result.mode != mode:
        raise RuntimeError(f"train_dp_sgd ran mode {result.mode!r}, the bench asked for {mode!r}")


def _floor(model: Any, epochs: int) -> None:
    """The data-independent work of every DP-SGD run here: Poisson masks, noise, accounting.

    Exactly what ``train_dp_sgd`` draws (one Philox generator, a mask then a float64
    ``gaussian`` per parameter each step) and its one accounting call, without the model:
    non-private time / this time bounds the throughput ratio any clipping method can reach.
    """
    from fedinfra.privacy.accounting import compute_epsilon
    from fedinfra.privacy.noise import gaussian, secure_generator

    rng = secure_generator(1)
    shapes = [tuple(p.shape) for p in model.parameters()]
    q = BATCH / N
    steps = epochs * round(1 / q)
    for _ in range(steps):
        np.flatnonzero(rng.random(N) < q)
        for shape in shapes:
            gaussian(rng, 1.0, shape)
    compute_epsilon(noise_multiplier=1.0, sample_rate=q, steps=steps, delta=1e-5, accountant="rdp")


def _run_one(model_name: str, kind: str, epochs: int) -> dict[str, float]:
    """Child process: train once, report peak-RSS growth in MiB (RSS sampled every 1 ms)."""
    import threading

    import psutil

    model, x, y = _setup(model_name)
    import opacus  # noqa: F401

    import fedinfra.privacy  # noqa: F401  (imports before the baseline reading)

    steps = epochs * (N // BATCH)
    _nonprivate(model, x, y, 1)  # same warm-up for every kind: autograd and allocator paths loaded
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if kind == "nonprivate":
        _nonprivate(model, x, y, steps)
    else:
        _dp(model, x, y, epochs, kind)
    done.set()
    sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return {"peak_growth_mib": (peak[0] - before) / 2**20}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    epochs = 2  # a site trains a few epochs per call; the accounting at the end is amortised
    repeats = 3 if args.quick else 5
    load: dict[str, list[float]] = {"start": list(os.getloadavg())}
    report = Report("dp_sgd", __doc__.splitlines()[0],
                    params={"n": N, "batch": BATCH, "epochs_per_run": epochs, "repeats": repeats,
                            "load_average_1_5_15_min": load})
    steps = epochs * (N // BATCH)
    samples = steps * BATCH
    for name in MODELS:
        models = {k: _setup(name) for k in ("nonprivate", *MODES[name])}
        fns = {"nonprivate": lambda m=models["nonprivate"]: _nonprivate(m[0], m[1], m[2], steps)}
        for mode in MODES[name]:
            fns[mode] = lambda m=models[mode], mode=mode: _dp(m[0], m[1], m[2], epochs, mode)
        fns["floor"] = lambda m=models["nonprivate"]: _floor(m[0], epochs)
        timings = time_interleaved(fns, repeats=repeats, warmup=1)
        load[name] = list(os.getloadavg())
        mem = {}
        for kind in (k for k in fns if k != "floor"):
            out = subprocess.run([sys.executable, __file__, "--child", name, kind, str(epochs)],
                                 capture_output=True, text=True, check=True)
            mem[kind] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"]
        report.baseline(f"{name}/nonprivate", timings["nonprivate"], label=f"{name} non-private SGD")
        base_sps = samples / timings["nonprivate"]["median_s"]
        report.baselines[f"{name}/nonprivate"].update(samples_per_s=base_sps, peak_growth_mib=mem["nonprivate"])
        print(f"    {base_sps:,.0f} samples/s, peak +{mem['nonprivate']:.1f} MiB")
        report.figure(f"{name}/dp_floor", timings["floor"], against=[f"{name}/nonprivate"],
                      label=f"{name} DP-SGD data-independent work only (masks, float64 noise, accounting)")
        report.figures[f"{name}/dp_floor"].update(
            max_throughput_ratio=timings["nonprivate"]["median_s"] / timings["floor"]["median_s"])
        for kind in MODES[name]:
            key = f"{name}/dp_{kind}"
            report.figure(key, timings[kind], label=f"{name} DP-SGD ({kind})", against=[f"{name}/nonprivate"])
            sps = samples / timings[kind]["median_s"]
            extra = mem[kind] - mem["nonprivate"]
            report.figures[key].update(samples_per_s=sps, peak_growth_mib=mem[kind], extra_mib_vs_nonprivate=extra,
                                       throughput_ratio=sps / base_sps)
            print(f"    {sps:,.0f} samples/s = {sps / base_sps:.2f}x non-private; peak +{mem[kind]:.1f} MiB "
                  f"({extra:+.1f} MiB vs non-private)")
            best = max(MODES[name], key=lambda k: samples / timings[k]["median_s"])
            if kind == best:
                goal = GOALS[name]
                ok_t = sps / base_sps >= goal
                ok_m = extra <= 100
                report.goals[f"{name}/throughput"] = {"value": sps / base_sps, "at_least": goal, "met": ok_t}
                report.goals[f"{name}/memory"] = {"value_mib": extra, "at_most_mib": 100, "met": ok_m}
                print(f"goal {name}: throughput {sps / base_sps:.2f}x >= {goal}x: {'met' if ok_t else 'NOT MET'}; "
                      f"memory {extra:+.1f} MiB <= +100 MiB: {'met' if ok_m else 'NOT MET'}")
    load["end"] = list(os.getloadavg())
    report.save(args.out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_run_one(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        main()
