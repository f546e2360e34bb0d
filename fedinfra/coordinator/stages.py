"""Extra message waves of multi-stage aggregators (SecAgg's key, share and unmask stages).

Each wave is a QUERY message per site carrying the stage's JSON document beside the usual
instruction; a reply that fails the stage's checks is audited as ``update.rejected`` with
the failing check (never the site's own text), and the site simply drops out of the
protocol (SecAgg tolerates that up to the declared bound). Sites that do not answer drop
out the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedinfra.aggregation.rounds import Stage, UpdateRejected
from fedinfra.config.wire import CONFIG, DOC, SECAGG

if TYPE_CHECKING:
    from fedinfra.coordinator.trail import AuditTrail


def run_stage(
    send: Callable[[list[Message]], Iterable[Message]],
    trail: AuditTrail,
    *,
    rnd: int,
    doc: str,
    nodes: dict[str, int],
    stage: Stage,
) -> list[str]:
    """Send ``stage`` to the named sites (``nodes``: site -> node id); return who answered validly."""
    names = {node: name for name, node in nodes.items()}
    messages = [
        Message(
            RecordDict({CONFIG: ConfigRecord({DOC: doc, SECAGG: payload})}),
            dst_node_id=nodes[site],
            message_type=MessageType.QUERY,
        )
        for site, payload in stage.payloads.items()
        if site in nodes
    ]
    answered: list[str] = []
    for reply in send(messages):
        site = names.get(reply.metadata.src_node_id)
        if site is None or site not in stage.payloads or site in answered:
            continue
        details: dict[str, str] = {"site": site, "code": "invalid", "stage": stage.name}
        try:
            if reply.has_error():
                # Flower's error reason is the site's exception text: the log keeps its code.
                if reply.error:
                    details["error_code"] = str(int(reply.error.code))
                raise UpdateRejected("missing", "site error")
            document = reply.content.config_records[CONFIG][SECAGG]
            if not isinstance(document, str):
                raise UpdateRejected("missing", "stage reply carries no document")
            stage.collect(site, document)
        except (UpdateRejected, KeyError) as exc:
            # The check only: a stage's message may quote the site (a refusal to unmask).
            check = exc.check if isinstance(exc, UpdateRejected) else "missing"
            trail.event(
                "update.rejected",
                round=rnd,
                site=site,
                outcome="denied",
                details={**details, "reason": check, "check": check},
            )
            continue
        answered.append(site)
    stage.close()
    return answered
