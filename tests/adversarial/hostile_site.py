"""A hostile site on loopback: a real SuperNode whose ClientApp is the attacker's own code.

A hostile site controls its own machine, so it need not run the consortium's signed
Flower App: it runs ``flower-supernode --isolation process`` (Flower 1.41 then leaves
ClientApp launching to "a separate independent process") and is that process itself. It
takes each task from the SuperNode's Runtime API exactly like fedinfra's warm launcher
(:mod:`fedinfra.runtime.warm`, same per-start SuperExec secret) and runs it with Flower's
own ``run_clientapp`` - but it never installs or verifies the FAB the coordinator sent
(no :func:`fedinfra.runtime.appcheck.guard_clientapp`): every message goes to
:data:`hostile`, a ClientApp that answers admission and evaluation honestly (it reuses
fedinfra's site code, to be admitted) and corrupts its train replies round by round:

* round 1: a float64 update of 1e300 (the poisoning of issue 16: inf in the aggregate);
* round 2: ``num_examples = 10**15`` (the weighted mean moved wherever the site likes);
* round 3: a refusal whose free text carries a kit path and a patient's name.

    python -m tests.adversarial.hostile_site --runtime-api-address 127.0.0.1:PORT \\
        --superexec-auth-secret-file SECRET -- flower-supernode ... --isolation process \\
        --superexec-auth-secret-file SECRET
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

#: Text a hostile refusal carries; it must never reach the consortium's audit log.
LEAK = "PolicyViolation: /srv/kits/sites/site2/data/patients.csv row 4711: John Doe, MRN 0042-4711"

hostile = ClientApp()


def _honest(msg: Message, context: Context) -> Message:
    from fedinfra.site.app import app

    reply: Message = app(msg, context)
    return reply


@hostile.query()
def query(msg: Message, context: Context) -> Message:
    """Admission (and SecAgg / cosign waves): answered as an honest site would."""
    return _honest(msg, context)


@hostile.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluation: honest."""
    return _honest(msg, context)


def _doc(reply: Message) -> dict[str, Any]:
    return dict(json.loads(str(reply.content.config_records["config"]["doc"])))


def _with(msg: Message, reply: Message, doc: dict[str, Any], arrays: ArrayRecord | None) -> Message:
    cfg = dict(reply.content.config_records["config"])
    cfg["doc"] = json.dumps(doc)
    content: dict[str, Any] = {"config": ConfigRecord(cfg)}
    if arrays is not None:
        content["arrays"] = arrays
    return Message(RecordDict(content), reply_to=msg)


@hostile.train()
def train(msg: Message, context: Context) -> Message:
    """Train honestly, then corrupt the reply the way this round's attack says."""
    reply = _honest(msg, context)
    doc = _doc(reply)
    arrays = reply.content.array_records.get("arrays")
    rnd = int(doc["round"])
    if rnd == 1 and arrays is not None:
        poisoned = {k: Array(np.full(v.numpy().shape, 1e300, dtype=np.float64)) for k, v in arrays.items()}
        return _with(msg, reply, doc, ArrayRecord(poisoned))
    if rnd == 2:
        return _with(msg, reply, {**doc, "num_examples": 10**15}, arrays)
    refused = {
        "site": doc["site"],
        "round": rnd,
        "status": "refused",
        "reason": LEAK,
        "code": "policy",
        "num_examples": 0,
        "run_id": doc.get("run_id"),
    }
    return _with(msg, reply, refused, None)


def _serve_with_the_hostile_app() -> None:
    """Every task runs :data:`hostile`; the coordinator's FAB is neither installed nor checked."""
    import flwr.supernode.runtime.run_clientapp as runtime

    runtime.install_from_fab = lambda *args, **kwargs: None  # type: ignore[assignment]
    runtime.get_load_client_app_fn = lambda **kwargs: (lambda *args: hostile)  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None) -> None:
    """Start the SuperNode given after ``--`` and serve its tasks with :data:`hostile`."""
    from fedinfra.runtime import warm

    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m tests.adversarial.hostile_site")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--superexec-auth-secret-file", required=True, type=Path)
    args = parser.parse_args(argv[:cut])
    launcher = warm._Launcher(args.runtime_api_address, args.superexec_auth_secret_file.read_bytes(),
                              argv[cut + 1 :], threads=1)
    launcher.preload(warm.PRELOAD)
    _serve_with_the_hostile_app()
    launcher.serve()


if __name__ == "__main__":
    main()
