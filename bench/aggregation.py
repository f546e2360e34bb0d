"""Plaintext aggregation: fedinfra's streaming FedAvg vs Flower's FedAvg vs numpy.add.

Ten sites reply with a 1,000,000-parameter float32 model (three tensors, 4 MB) inside
real Flower ``Message`` / ``RecordDict`` / ``ArrayRecord`` replies, weighted by their
``num-examples``. Measured on the same replies, medians of repeated runs:

* floor - ``numpy.add`` folding the ten already-decoded updates into a preallocated
  accumulator: one read of every update byte, nothing else (memory-bandwidth floor);
* Flower - ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords``, the
  function ``flwr.serverapp.strategy.FedAvg.aggregate_train`` calls (replies -> ArrayRecord);
* fedinfra - ``arrays_from_record`` (zero-copy view of each reply) folded into
  ``StreamingFedAvg`` (BLAS saxpy in place), replies -> mean arrays, and the same plus
  packing the mean into an ArrayRecord (Flower's output form).

The candidates run round-robin so a busy period of a shared machine hits all of them.

Goal (issue 2): fedinfra within 2x of the floor and no slower than Flower.

Run: ``python bench/aggregation.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, parse_args, time_interleaved

NUM_SITES = 10
#: 900,000 + 1,000 + 99,000 = 1,000,000 float32 parameters.
LAYOUT = {"fc1.weight": (1000, 900), "fc1.bias": (1000,), "fc2.weight": (99, 1000)}
WEIGHT_KEY = "num-examples"


def make_replies(seed: int) -> tuple[list[Any], list[dict[str, np.ndarray]], list[int]]:
    """Build ten real Flower train replies; return them, the decoded updates and weights."""
    from flwr.app import (
        DEFAULT_TTL,
        Array,
        ArrayRecord,
        Message,
        MessageType,
        Metadata,
        MetricRecord,
        RecordDict,
    )

    rng = np.random.default_rng(seed)
    replies, updates, weights = [], [], []
    for node in range(NUM_SITES):
        update = {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in LAYOUT.items()}
        n = int(rng.integers(50, 500))
        arrays = ArrayRecord({k: Array(v) for k, v in update.items()})
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({WEIGHT_KEY: n})})
        # A train reply as the SuperLink hands it to the ServerApp (metadata set by the link).
        metadata = Metadata(
            run_id=1,
            message_id=f"reply-{node}",
            src_node_id=node + 1,
            dst_node_id=0,
            reply_to_message_id=f"instruction-{node}",
            group_id="1",
            created_at=time.time(),
            ttl=DEFAULT_TTL,
            message_type=MessageType.TRAIN,
        )
        replies.append(Message(content=content, metadata=metadata))
        updates.append(update)
        weights.append(n)
    return replies, updates, weights


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    import flwr
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
    from threadpoolctl import threadpool_info

    from fedinfra.aggregation import StreamingFedAvg, arrays_from_record

    repeats = 5 if args.quick else 21
    replies, updates, weights = make_replies(seed=0)
    params = sum(int(np.prod(s)) for s in LAYOUT.values())
    update_bytes = NUM_SITES * params * 4
    report = Report(
        name="aggregation",
        description=__doc__.splitlines()[0],
        params={
            "sites": NUM_SITES,
            "parameters": params,
            "dtype": "float32",
            "layout": {k: list(v) for k, v in LAYOUT.items()},
            "update_bytes": update_bytes,
            "repeats": repeats,
            "quick": args.quick,
            "flwr": flwr.__version__,
        },
    )

    acc = {k: np.zeros(shape, dtype=np.float32) for k, shape in LAYOUT.items()}

    def reset_floor() -> None:
        for a in acc.values():
            a.fill(0)

    def floor() -> None:
        for update in updates:
            for k, a in acc.items():
                np.add(a, update[k], out=a)

    def flower() -> Any:
        return aggregate_arrayrecords([m.content for m in replies], WEIGHT_KEY)

    def fedinfra() -> dict[str, np.ndarray]:
        agg = StreamingFedAvg()
        for m in replies:
            agg.add(arrays_from_record(m.content["arrays"]), float(m.content["metrics"][WEIGHT_KEY]))
        return agg.result()

    def fedinfra_record() -> Any:
        return ArrayRecord({k: Array(v) for k, v in fedinfra().items()})

    # Correctness first: fedinfra == Flower == float64 reference (float32 rounding only).
    pairs = list(zip(updates, weights, strict=True))
    ref = {k: sum(np.float64(w) * u[k].astype(np.float64) for u, w in pairs) / sum(weights) for k in LAYOUT}
    ours, theirs = fedinfra(), flower()
    max_err = 0.0
    for k in LAYOUT:
        max_err = max(max_err, float(np.max(np.abs(ours[k] - ref[k]))))
        np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=1e-5)
        np.testing.assert_allclose(ours[k], theirs[k].numpy(), rtol=0, atol=1e-5)
    report.params["max_abs_error_vs_float64"] = max_err
    # After the first fold, so scipy's BLAS (loaded lazily by StreamingFedAvg) is listed too.
    report.params["blas"] = [
        {k: i.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    print(f"{NUM_SITES} updates x {params:,} float32 ({update_bytes / 1e6:.0f} MB); fedinfra == Flower ==")
    print(f"float64 reference (max abs error {max_err:.2e}); {repeats} runs each, medians:")

    t = time_interleaved(
        {"floor": floor, "flower": flower, "fedinfra": fedinfra, "fedinfra_record": fedinfra_record},
        repeats=repeats,
        setups={"floor": reset_floor},
    )
    report.baseline("floor", t["floor"], label="numpy.add floor", unit_bytes=update_bytes)
    report.baseline("flower", t["flower"], label="Flower 1.41 FedAvg (aggregate_arrayrecords)", unit_bytes=update_bytes)
    report.figure(
        "fedinfra",
        t["fedinfra"],
        label="fedinfra StreamingFedAvg (replies -> arrays)",
        against=["floor", "flower"],
        unit_bytes=update_bytes,
    )
    report.figure(
        "fedinfra_record",
        t["fedinfra_record"],
        label="fedinfra StreamingFedAvg (replies -> ArrayRecord)",
        against=["floor", "flower"],
        unit_bytes=update_bytes,
    )
    report.goal("within_2x_of_floor", ratio="fedinfra/floor", at_most=2.0)
    report.goal("no_slower_than_flower", ratio="fedinfra_record/flower", at_most=1.0)
    report.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
