"""A ClientApp for Flower's simulation engine in which simulated site 3 is malicious.

Sites 0-2 run fedinfra's ClientApp unchanged; site 3 runs it too and then rewrites its
train reply's ``num_examples`` to 10**15 (issue 16's weighted-mean poisoning).
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedinfra.site.app import app as fedinfra_app

app = ClientApp()
EVIL_PARTITION = 3


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Admission: honest."""
    return fedinfra_app(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluation: honest."""
    return fedinfra_app(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train honestly; site 3 then claims 10**15 examples."""
    reply = fedinfra_app(msg, context)
    if int(str(context.node_config.get("partition-id", -1))) != EVIL_PARTITION:
        return reply
    cfg = dict(reply.content.config_records["config"])
    doc = json.loads(str(cfg["doc"]))
    doc["num_examples"] = 10**15
    cfg["doc"] = json.dumps(doc)
    return Message(RecordDict({**dict(reply.content.array_records), "config": ConfigRecord(cfg)}), reply_to=msg)


def main(run_dir: str) -> None:
    """Run the small job of ``test_simulation.py`` with this ClientApp (in its own process)."""
    from pathlib import Path

    from fedinfra.config import JobSpec
    from fedinfra.runtime.simulation import run_simulated

    job = JobSpec.model_validate(
        {
            "name": "adversarial-sim",
            "scenario": "edge",
            "purpose": "on-device-model-improvement",
            "rounds": 2,
            "sites": {"count": 4, "min_sites": 2},
            "training": {"local_epochs": 1},
        }
    )
    state = run_simulated(job, run_id="sim-1", run_dir=Path(run_dir), report_formats=(), client_app=app)
    print(f"rounds={state.round}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
