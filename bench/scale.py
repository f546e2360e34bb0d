"""Cross-device scale: coordinator rounds per minute and peak memory for 100 to 10,000 devices.

What each arm measures (all on this machine, in the same run):

* **device updates (real)** - the digits MLP (64-32-10) is trained for one local epoch on
  label-skewed Dirichlet(0.5) shards of scikit-learn's digits; each device's update is
  compressed with fedinfra's ``UpdateCompressor`` (clip 1.0, 8-bit stochastic quantization,
  top-10 % with error feedback) into real bytes. Digits has 1,437 training examples, so
  there are ``SHARDS`` distinct shards: device ``i`` trains shard ``i mod SHARDS`` but has
  its own compressor randomness, so every device sends different bytes.
* **fedinfra coordinator** - a separate process reads the devices' bytes one by one from a
  file (as they would arrive), decodes and validates each (grid, model, clip bound),
  folds it into ``StreamingFedAvg`` and applies the mean: every device takes part in every
  round (the worst case; sampling a fraction only shortens rounds). Peak RSS of that
  process is its ``getrusage`` maximum; "growth" subtracts the RSS after imports.
* **baseline: buffer-all FedAvg** - the same bytes, but decoded updates are all kept and
  averaged at the end (what an aggregator does when it is handed every reply of a round
  at once, like a strategy's ``aggregate_train(replies)``): O(devices x model) memory.
* **Flower simulation (real ClientApps)** - for the smaller sizes, Flower 1.41's simulation
  engine (Ray, loopback, 2 CPUs) runs N real fedinfra-style ClientApps that train and
  compress, and a ServerApp that decodes and folds; rounds are timed inside the ServerApp
  (Ray start-up excluded). This is end-to-end device + transport + coordinator time on 2
  cores, so it is far slower than the coordinator arm; its memory is the driver process's.

Anchors (published, not re-measured here): Flower's simulation docs run 1,000 clients on
one machine; NVIDIA FLARE's edge simulator targets 10,000+ devices. Goal (issue 9): 10,000
devices with coordinator memory under 2 GB.

Run: ``python bench/scale.py [--quick]``.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Report, machine_info

SIZES = (100, 1_000, 10_000)
SHARDS = 100
CLIP = 1.0
BITS = 8
TOPK = 0.1
HIDDEN = 32
GOAL_MB = 2048


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    """Peak RSS since the last :func:`_reset_peak` (Linux VmHWM), else since start."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (proc(5), /proc/pid/clear_refs value 5)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@functools.cache
def _digits() -> tuple[Any, Any, Any, Any]:
    from fedinfra.config import ModelSpec
    from fedinfra.data import dirichlet_partition, load_bundled
    from fedinfra.models import build_model, get_weights

    split = load_bundled("digits", test_fraction=0.2, seed=0)
    shards = dirichlet_partition(split.y_train, num_sites=SHARDS, alpha=0.5, seed=0)
    model = build_model(ModelSpec(kind="mlp", hidden=[HIDDEN]), num_features=64, num_classes=10, seed=0)
    return split, shards, model, get_weights(model)


def _shard_update(split: Any, idx: Any, global_w: dict[str, Any], seed: int) -> dict[str, Any]:
    from fedinfra.config import ModelSpec
    from fedinfra.models import build_model, get_weights, set_weights
    from fedinfra.site.training import train_local

    model = build_model(ModelSpec(kind="mlp", hidden=[HIDDEN]), num_features=64, num_classes=10, seed=0)
    set_weights(model, global_w)
    x, y = split.x_train[idx], split.y_train[idx]
    if len(y):
        train_local(model, x, y, epochs=1, batch_size=16, lr=0.1, seed=seed)
    local = get_weights(model)
    return {k: local[k] - global_w[k] for k in global_w}


def make_device_file(path: Path, n: int) -> dict[str, Any]:
    """Train the shards for real, compress one update per device, write length-prefixed bytes."""
    from fedinfra.aggregation.compression import UpdateCompressor, dense_bytes, encode, layout_of

    split, shards, _, global_w = _digits()
    np.savez(path.with_suffix(".npz"), **global_w)
    t0 = time.perf_counter()
    updates = [_shard_update(split, shards[s], global_w, s) for s in range(SHARDS)]
    train_s = time.perf_counter() - t0
    sizes: list[int] = []
    t0 = time.perf_counter()
    with path.open("wb") as fh:
        for d in range(n):
            shard = d % SHARDS
            comp = UpdateCompressor(clip=CLIP, bits=BITS, topk_fraction=TOPK, rng=np.random.default_rng(d))
            blob = encode(comp.compress(updates[shard]))
            weight = max(1, len(shards[shard]))
            fh.write(struct.pack("<II", len(blob), weight))
            fh.write(blob)
            sizes.append(len(blob))
    compress_s = time.perf_counter() - t0
    return {
        "devices": n,
        "bytes_per_device_mean": statistics.fmean(sizes),
        "dense_bytes_per_device": dense_bytes(layout_of(global_w)),
        "shard_train_s_each": train_s / SHARDS,
        "compress_s_each": compress_s / n,
    }


def _read_devices(path: Path) -> Any:
    with path.open("rb") as fh:
        while head := fh.read(8):
            size, weight = struct.unpack("<II", head)
            yield fh.read(size), weight


def coordinator(path: Path, rounds: int, mode: str) -> dict[str, Any]:
    """One coordinator process: ``rounds`` rounds over every device's bytes in ``path``."""
    from fedinfra.aggregation import StreamingFedAvg
    from fedinfra.aggregation.compression import decompress, layout_of

    # The coordinator needs only the model's shapes: no torch in this process.
    with np.load(path.with_suffix(".npz")) as init:
        weights = {k: init[k].copy() for k in init.files}
    layout = layout_of(weights)
    import scipy.linalg.blas  # noqa: F401 - StreamingFedAvg's saxpy, loaded before the baseline
    after_imports = _rss_mb()
    startup_peak = _peak_mb()
    reset = _reset_peak()
    times: list[float] = []
    count = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        if mode == "streaming":
            agg = StreamingFedAvg()
            for blob, w in _read_devices(path):
                agg.add(decompress(blob, layout, clip=CLIP, bits=BITS), w)
            mean = agg.result()
            count = agg.count
        else:  # buffer-all baseline
            kept = [(decompress(blob, layout, clip=CLIP, bits=BITS), w) for blob, w in _read_devices(path)]
            total = float(sum(w for _, w in kept))
            mean = {k: sum(u[k] * np.float32(w / total) for u, w in kept) for k in weights}
            count = len(kept)
            del kept
        for k in weights:
            weights[k] = weights[k] + mean[k]
        times.append(time.perf_counter() - t0)
    return {
        "mode": mode,
        "replies_per_round": count,
        "round_s_median": statistics.median(times),
        "round_s_min": min(times),
        "rounds": rounds,
        "rounds_per_minute": 60.0 / statistics.median(times),
        "peak_rss_mb": max(_peak_mb(), startup_peak),
        "rss_after_imports_mb": after_imports,
        "peak_during_rounds_mb": _peak_mb(),
        "growth_mb": _peak_mb() - after_imports if reset else None,
    }


def _run_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True, timeout=3600
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- Flower simulation arm -------------------------------------------------------------------
def flower_arm(n: int, rounds: int) -> dict[str, Any]:
    """Real ClientApps (train + compress) and a ServerApp (decode + fold) on Flower's simulation."""
    import logging

    from fedinfra.runtime.env import harden
    from fedinfra.runtime.simulation import backend_config

    tmp = Path(tempfile.mkdtemp(prefix="fedinfra-scale-"))
    harden(flwr_home=tmp / ".flwr")
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedinfra.aggregation import StreamingFedAvg
    from fedinfra.aggregation.compression import UpdateCompressor, decompress, encode, layout_of

    logging.getLogger("flwr").setLevel(logging.ERROR)
    client = ClientApp()
    server = ServerApp()
    result: dict[str, Any] = {}

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        split, shards, _, _ = _digits()
        pid = int(str(context.node_config["partition-id"]))
        blob_w = bytes(msg.content["config"]["weights"])  # type: ignore[arg-type]
        g = _unpack(blob_w)
        update = _shard_update(split, shards[pid % SHARDS], g, pid)
        comp = UpdateCompressor(clip=CLIP, bits=BITS, topk_fraction=TOPK, rng=np.random.default_rng(pid))
        reply = ConfigRecord({"update": encode(comp.compress(update)), "n": max(1, len(shards[pid % SHARDS]))})
        return Message(RecordDict({"config": reply}), reply_to=msg)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        weights = dict(_digits()[3])
        layout = layout_of(weights)
        while len(nodes := list(grid.get_node_ids())) < n:
            time.sleep(0.5)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            packed = _pack(weights)
            msgs = [
                Message(RecordDict({"config": ConfigRecord({"weights": packed})}), dst_node_id=node,
                        message_type=MessageType.TRAIN)
                for node in nodes
            ]
            agg = StreamingFedAvg()
            for reply in grid.send_and_receive(msgs, timeout=3600):
                if reply.has_error():
                    result["error"] = str(reply.error)
                    continue
                rec = reply.content["config"]
                agg.add(decompress(bytes(rec["update"]), layout, clip=CLIP, bits=BITS), int(rec["n"]))  # type: ignore[arg-type]
            if agg.count == 0:
                break
            mean = agg.result()
            for k in weights:
                weights[k] = weights[k] + mean[k]
            times.append(time.perf_counter() - t0)
            result["replies"] = agg.count
        result["times"] = times

    t0 = time.perf_counter()
    from fedinfra.runtime.env import ray_home

    with ray_home(tmp / ".ray-home"):
        run_simulation(server_app=server, client_app=client, num_supernodes=n, backend_config=backend_config())  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    times = result.get("times", [])
    return {
        "devices": n,
        "replies_per_round": result.get("replies", 0),
        "round_s_median": statistics.median(times) if times else None,
        "rounds_per_minute": 60.0 / statistics.median(times) if times else None,
        "wall_s_including_ray_start": wall,
        "driver_peak_rss_mb": _peak_mb(),
        "client_error": result.get("error"),
    }


def _pack(weights: dict[str, Any]) -> bytes:
    return b"".join(np.ascontiguousarray(v, dtype=np.float32).tobytes() for v in weights.values())


def _unpack(data: bytes) -> dict[str, Any]:
    _, _, _, template = _digits()
    out, at = {}, 0
    for k, v in template.items():
        out[k] = np.frombuffer(data, dtype=np.float32, count=v.size, offset=at).reshape(v.shape).copy()
        at += v.size * 4
    return out


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--coordinator":
        print(json.dumps(coordinator(Path(argv[1]), int(argv[2]), argv[3])))
        return 0
    if argv and argv[0] == "--flower":
        # Ray pickles the apps by module: run them from the importable module ``scale`` (not
        # ``__main__``), with bench/ and the repo on the workers' path.
        here = str(Path(__file__).resolve().parent)
        os.environ["PYTHONPATH"] = os.pathsep.join([here, str(Path(here).parent), os.environ.get("PYTHONPATH", "")])
        import scale as module

        print(json.dumps(module.flower_arm(int(argv[1]), int(argv[2]))))
        return 0
    quick = "--quick" in argv
    out_dir = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    rounds = 3 if quick else 5
    report = Report(name="scale", description=__doc__.splitlines()[0])
    report.params = {"sizes": list(SIZES), "rounds": rounds, "clip": CLIP, "bits": BITS, "topk": TOPK,
                     "model": f"digits MLP 64-{HIDDEN}-10", "shards": SHARDS, "quick": quick,
                     "goal_coordinator_mb": GOAL_MB}
    scale: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedinfra-scale-") as tmp:
        for n in SIZES:
            path = Path(tmp) / f"devices-{n}.bin"
            devices = make_device_file(path, n)
            ours = _run_child(["--coordinator", str(path), str(rounds), "streaming"])
            base = _run_child(["--coordinator", str(path), str(rounds), "buffer-all"])
            scale[str(n)] = {"devices": devices, "fedinfra_streaming": ours, "baseline_buffer_all": base}
            print(
                f"{n:>6} devices: {devices['bytes_per_device_mean']:.0f} B/device/round "
                f"(dense {devices['dense_bytes_per_device']} B, "
                f"{devices['dense_bytes_per_device'] / devices['bytes_per_device_mean']:.1f}x smaller)"
            )
            print(
                f"        fedinfra streaming: {ours['rounds_per_minute']:.1f} rounds/min, coordinator peak "
                f"{ours['peak_rss_mb']:.0f} MB (+{ours['growth_mb']:.1f} MB over imports)"
            )
            print(
                f"        baseline buffer-all: {base['rounds_per_minute']:.1f} rounds/min, peak "
                f"{base['peak_rss_mb']:.0f} MB (+{base['growth_mb']:.1f} MB); ratio time "
                f"{ours['round_s_median'] / base['round_s_median']:.2f}x, growth "
                f"{ours['growth_mb'] / max(base['growth_mb'], 1e-9):.2f}x"
            )
        flower_sizes = (100,) if quick else (100, 1_000)
        for n in flower_sizes:
            try:
                fl = _run_child(["--flower", str(n), "1" if n >= 1000 or quick else "2"])
            except subprocess.CalledProcessError as exc:  # recorded, not hidden
                fl = {"devices": n, "error": (exc.stderr or "")[-500:]}
            scale[f"flower_{n}"] = fl
            if fl.get("rounds_per_minute"):
                print(
                    f"Flower simulation, {n} real ClientApps: {fl['rounds_per_minute']:.2f} rounds/min "
                    f"({fl['round_s_median']:.1f} s/round on 2 cores), driver peak {fl['driver_peak_rss_mb']:.0f} MB"
                )
            else:
                print(f"Flower simulation, {n} ClientApps: failed ({fl.get('error', '')[-200:]})")
    big = scale[str(SIZES[-1])]["fedinfra_streaming"]
    met = big["peak_rss_mb"] < GOAL_MB
    print(f"goal: {SIZES[-1]} devices, coordinator peak {big['peak_rss_mb']:.0f} MB < {GOAL_MB} MB: "
          f"{'met' if met else 'NOT MET'}")
    report.figures = {"scale": scale}
    report.goals = {"coordinator_memory_10k": {"value_mb": big["peak_rss_mb"], "at_most_mb": GOAL_MB, "met": met}}
    report.params["machine"] = machine_info()
    report.save(out_dir) if out_dir else report.save()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1:]))
