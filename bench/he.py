"""Encrypted aggregation: fedinfra packed BFV vs NVIDIA FLARE's TenSEAL CKKS vs plaintext FedAvg.

Ten sites each send a 1,000,000-parameter float32 update (``--quick``: 100,000), weighted by
their example counts. Arms, all measured in this run on the same updates:

* plaintext - fedinfra's ``StreamingFedAvg`` over float32 (4 bytes per parameter);
* FLARE - NVIDIA FLARE's shipped HE configuration through TenSEAL: CKKS, N = 8192, coefficient
  moduli [60, 40, 40], scale 2^40, symmetric; sites ``ckks_vector(...).serialize()``, the server
  deserializes, adds and multiplies by 1/total (FLARE's ``IntimeAccumulateModelAggregator``
  with ``weigh_by_local_iter=False``; sites pre-multiply by their example count), sites
  deserialize and decrypt;
* fedinfra BFV 20-bit and 8-bit (and CKKS for reference): ``seal_update`` (clip, stochastic
  rounding, packing, seeded symmetric encryption, Ed25519 signature), ``EncryptedSum.add`` for
  every reply then ``to_bytes``, ``open_sum``.

Per arm: bytes per parameter on the wire, encrypt seconds per site (median over the sites),
coordinator aggregation seconds (all replies; median of repeats), decrypt seconds (median of
repeats) and max absolute error against the exact float64 weighted mean.

Goals (issue 5): 20-bit <= 4.2 bytes/param at <= 1e-7 max error; 8-bit <= 2.1 bytes/param;
encrypt >= 8x, aggregate >= 5x, decrypt >= 3x faster than the FLARE configuration.

Run: ``python bench/he.py [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, parse_args

NUM_SITES = 10
CLIP = 0.05  # agreed bound on |update value|; updates are N(0, 0.01), clipped at 5 sigma
EXAMPLE_CAP = 1000


def make_updates(n_params: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    updates = [np.clip(rng.normal(0.0, 0.01, n_params), -CLIP, CLIP).astype(np.float32) for _ in range(NUM_SITES)]
    counts = [int(c) for c in rng.integers(600, EXAMPLE_CAP + 1, NUM_SITES)]
    return updates, counts


def exact_mean(updates: list[np.ndarray], counts: list[int]) -> np.ndarray:
    acc = np.zeros(updates[0].shape[0], dtype=np.float64)
    for u, n in zip(updates, counts, strict=True):
        acc += u.astype(np.float64) * n
    return acc / sum(counts)


def _timing(samples: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": float(len(samples)),
    }


class Arm:
    """One way of aggregating: encrypt(site) -> bytes, aggregate() -> bytes, decrypt() -> mean."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []
        self.agg: bytes = b""
        self.mean: np.ndarray | None = None
        self.error_bound: float | None = None

    def encrypt(self, i: int) -> None:
        raise NotImplementedError

    def aggregate(self) -> None:
        raise NotImplementedError

    def decrypt(self) -> None:
        raise NotImplementedError


class Plaintext(Arm):
    def __init__(self, updates: list[np.ndarray], counts: list[int]) -> None:
        super().__init__()
        self.updates, self.counts = updates, counts

    def aggregate(self) -> None:
        from fedinfra.aggregation.fedavg import StreamingFedAvg

        agg = StreamingFedAvg()
        for u, n in zip(self.updates, self.counts, strict=True):
            agg.add({"w": u}, float(n))
        self.mean = agg.result()["w"]


class Flare(Arm):
    """NVIDIA FLARE's shipped HE configuration through TenSEAL."""

    def __init__(self, updates: list[np.ndarray], counts: list[int]) -> None:
        import tenseal as ts

        super().__init__()
        self.ts, self.updates, self.counts = ts, updates, counts
        self.ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=8192,
            coeff_mod_bit_sizes=[60, 40, 40],
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
        self.ctx.global_scale = 2**40
        # The server's context is serialized without the secret key (FLARE's server context file).
        self.server_ctx = ts.context_from(self.ctx.serialize(save_secret_key=False))

    def encrypt(self, i: int) -> None:
        # Sites pre-multiply by their example count (as fedinfra sites do); the server adds and
        # multiplies by 1/total: FLARE's aggregator with weigh_by_local_iter=False, the only
        # weighting [60, 40, 40] leaves room for (one multiplicative level).
        values = (self.updates[i] * np.float32(self.counts[i])).tolist()
        self.blobs.append(self.ts.ckks_vector(self.ctx, values).serialize())

    def aggregate(self) -> None:
        acc = None
        for blob in self.blobs:
            v = self.ts.ckks_vector_from(self.server_ctx, blob)
            acc = v if acc is None else acc + v
        assert acc is not None
        self.agg = (acc * (1.0 / float(sum(self.counts)))).serialize()

    def decrypt(self) -> None:
        self.mean = np.asarray(self.ts.ckks_vector_from(self.ctx, self.agg).decrypt(), dtype=np.float64)


class Fedinfra(Arm):
    def __init__(self, updates: list[np.ndarray], counts: list[int], *, mode: str, quant_bits: int) -> None:
        from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
        from fedinfra.crypto import generate_consortium, seal_update

        super().__init__()
        self.updates, self.counts = updates, counts
        spec = SecureAggSpec(
            mode=mode, quant_bits=quant_bits, clip=CLIP, max_sites=NUM_SITES, example_cap=EXAMPLE_CAP, ckks_max_abs=1.0
        )
        self.names = [f"site-{i}" for i in range(NUM_SITES)]
        self.public, self.keys = generate_consortium(
            ConsortiumSpec(name="bench", sites=self.names, secure_aggregation=spec)
        )
        for name in self.names:  # parse each site's key once, as a running site would have
            seal_update(updates[0][:10], 1, self.keys[name], run_id="warm", round_id=0)
        self.error_bound = self.public.params.mean_error_bound(sites=NUM_SITES, total_examples=sum(counts))

    def encrypt(self, i: int) -> None:
        from fedinfra.crypto import seal_update

        name = self.names[i]
        self.blobs.append(seal_update(self.updates[i], self.counts[i], self.keys[name], run_id="bench", round_id=1))

    def aggregate(self) -> None:
        from fedinfra.crypto import EncryptedSum

        agg = EncryptedSum(self.public, run_id="bench", round_id=1)
        for blob in self.blobs:
            agg.add(blob)
        self.agg = agg.to_bytes()

    def decrypt(self) -> None:
        from fedinfra.crypto import open_sum

        self.mean, total = open_sum(self.agg, self.keys[self.names[1]], run_id="bench", round_id=1)
        assert total == sum(self.counts)


def run_interleaved(arms: dict[str, Arm], stage: str, rounds: int) -> dict[str, dict[str, float]]:
    """Run ``stage`` of every arm round-robin, ``rounds`` times; per-arm timings.

    Besides wall time, the process CPU time (all threads: TenSEAL uses a thread pool) is
    recorded as ``cpu_median_s``; on a shared machine it is the steadier measure of work.
    """
    samples: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(rounds):
        for key, arm in arms.items():
            fn = getattr(arm, stage)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(r) if stage == "encrypt" else fn()
            samples[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    return {k: {**_timing(v), "cpu_median_s": statistics.median(cpu[k])} for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n_params = 100_000 if args.quick else 1_000_000
    repeats = 3
    updates, counts = make_updates(n_params, seed=7)
    exact = exact_mean(updates, counts)
    report = Report(
        name="he",
        description=__doc__.splitlines()[0],
        params={"n_params": n_params, "sites": NUM_SITES, "clip": CLIP, "example_cap": EXAMPLE_CAP, "counts": counts},
    )
    print(f"{n_params:,} parameters x {NUM_SITES} sites, clip {CLIP}, counts {counts}")

    plain = Plaintext(updates, counts)
    arms: dict[str, Arm] = {
        "flare": Flare(updates, counts),
        "bfv20": Fedinfra(updates, counts, mode="bfv", quant_bits=20),
        "bfv8": Fedinfra(updates, counts, mode="bfv", quant_bits=8),
        "ckks": Fedinfra(updates, counts, mode="ckks", quant_bits=20),
    }
    labels = {
        "plaintext": "plaintext FedAvg (float32)",
        "flare": "NVIDIA FLARE config (TenSEAL CKKS 8192 [60,40,40])",
        "bfv20": "fedinfra packed BFV 20-bit",
        "bfv8": "fedinfra packed BFV 8-bit",
        "ckks": "fedinfra CKKS 4096 [60] seeded",
    }
    # Stages run round-robin over the arms so a busy period of the shared machine hits all.
    timings: dict[str, dict[str, dict[str, float]]] = {}
    timings["encrypt"] = run_interleaved(arms, "encrypt", NUM_SITES)  # one sample per site
    timings["aggregate"] = run_interleaved({"plaintext": plain, **arms}, "aggregate", repeats)
    timings["decrypt"] = run_interleaved(arms, "decrypt", repeats)
    rows: dict[str, dict[str, Any]] = {"plaintext": {"bytes_per_param": 4.0, "mean": plain.mean}}
    for key, arm in arms.items():
        rows[key] = {
            "bytes_per_param": statistics.mean(len(b) for b in arm.blobs) / n_params,
            "aggregate_bytes_per_param": len(arm.agg) / n_params,
            "mean": arm.mean,
            "error_bound": arm.error_bound,
        }
    for key, row in rows.items():
        for stage in ("encrypt", "aggregate", "decrypt"):
            if key in timings[stage]:
                row[stage] = timings[stage][key]
        row["max_abs_error"] = float(np.max(np.abs(np.asarray(row["mean"], dtype=np.float64)[:n_params] - exact)))
    print()
    print(f"{'arm':52} {'B/param':>8} {'enc s/site':>11} {'agg s':>8} {'dec s':>8} {'max err':>9}")
    for key, arm in rows.items():
        enc = arm.get("encrypt", {}).get("median_s")
        dec = arm.get("decrypt", {}).get("median_s")
        print(
            f"{labels[key]:52} {arm['bytes_per_param']:8.3f} "
            f"{'-' if enc is None else f'{enc:.4f}':>11} {arm['aggregate']['median_s']:8.4f} "
            f"{'-' if dec is None else f'{dec:.4f}':>8} {arm['max_abs_error']:9.2e}"
        )
    print()
    print("speed-up vs FLARE (wall time | CPU time):")
    for key in ("bfv20", "bfv8", "ckks"):
        parts = []
        for stage in ("encrypt", "aggregate", "decrypt"):
            flare, ours = rows["flare"][stage], rows[key][stage]
            wall, cpu = flare["median_s"] / ours["median_s"], flare["cpu_median_s"] / ours["cpu_median_s"]
            report.params[f"{key}_{stage}_speedup_wall"] = wall
            report.params[f"{key}_{stage}_speedup_cpu"] = cpu
            parts.append(f"{stage} {wall:.1f}x | {cpu:.1f}x")
        print(f"  {labels[key]:34} " + ", ".join(parts))
    print()

    report.baseline("plaintext_aggregate", rows["plaintext"]["aggregate"], label=labels["plaintext"] + " aggregate")
    for stage in ("encrypt", "aggregate", "decrypt"):
        report.baseline(f"flare_{stage}", rows["flare"][stage], label=f"FLARE {stage}")
    for key in ("bfv20", "bfv8", "ckks"):
        arm = rows[key]
        for stage in ("encrypt", "aggregate", "decrypt"):
            against = [f"flare_{stage}"] + (["plaintext_aggregate"] if stage == "aggregate" else [])
            report.figure(f"{key}_{stage}", arm[stage], label=f"{labels[key]} {stage}", against=against)
        report.params[f"{key}_bytes_per_param"] = arm["bytes_per_param"]
        report.params[f"{key}_aggregate_bytes_per_param"] = arm["aggregate_bytes_per_param"]
        report.params[f"{key}_max_abs_error"] = arm["max_abs_error"]
        report.params[f"{key}_error_bound"] = arm["error_bound"]
    report.params["flare_bytes_per_param"] = rows["flare"]["bytes_per_param"]
    report.params["flare_max_abs_error"] = rows["flare"]["max_abs_error"]
    report.params["plaintext_max_abs_error"] = rows["plaintext"]["max_abs_error"]

    ok = True
    for key in ("bfv20", "bfv8"):
        ok &= report.goal(f"{key}_encrypt_8x_faster", ratio=f"{key}_encrypt/flare_encrypt", at_most=1 / 8)
        ok &= report.goal(f"{key}_aggregate_5x_faster", ratio=f"{key}_aggregate/flare_aggregate", at_most=1 / 5)
        ok &= report.goal(f"{key}_decrypt_3x_faster", ratio=f"{key}_decrypt/flare_decrypt", at_most=1 / 3)
    for key, limit in (("bfv20", 4.2), ("bfv8", 2.1)):
        value = rows[key]["bytes_per_param"]
        met = value <= limit
        report.goals[f"{key}_bytes_per_param"] = {"value": value, "at_most": limit, "met": met}
        print(f"goal {key}_bytes_per_param: {value:.3f} <= {limit}: {'met' if met else 'NOT MET'}")
        ok &= met
    err = rows["bfv20"]["max_abs_error"]
    report.goals["bfv20_max_abs_error"] = {"value": err, "at_most": 1e-7, "met": err <= 1e-7}
    print(f"goal bfv20_max_abs_error: {err:.2e} <= 1e-7: {'met' if err <= 1e-7 else 'NOT MET'}")
    ok &= err <= 1e-7
    report.save(args.out)
    # Goals are targets, not gates: a missed goal is reported (above and in the JSON), and
    # the benchmark still succeeds; only a crash fails `make bench`.
    if not ok:
        print("some goals are not met (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
