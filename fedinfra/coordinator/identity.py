"""A site is the node key it authenticated with, not the name it declares.

Flower's SuperNode authentication (``--enable-supernode-auth``) proves which registered
key signed a node's requests, and the SuperLink records the name the operator registered
with that key (``flwr supernode register KEY --name SITE``, done by ``fedinfra server
start`` from the coordinator kit). A site's hello *declares* a name; trusting it let a
second node claim ``hospital-a`` and be admitted as ``hospital-a`` (spoofing, the "S" of
STRIDE). So the coordinator binds each node id to the name registered with its key and
refuses a hello whose declared name differs, whose key is not the one the coordinator kit
pins for that name, or that repeats a name already admitted. Every later message is
attributed through the node id, never through a name in the message body.

In simulation (no SuperLink, no keys) nodes carry no registered name; only the slug and
uniqueness checks apply there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedinfra.config.names import is_slug
from fedinfra.crypto.tls import public_key_der


@dataclass(frozen=True)
class NodeIdentity:
    """What the SuperLink knows of one node: the registered name and public key (PEM)."""

    name: str
    public_key: bytes


def node_identities(nodes: Iterable[object]) -> dict[int, NodeIdentity]:
    """Map node id to registered identity from ``grid.get_nodes()`` (Flower ``NodeInfo``)."""
    out: dict[int, NodeIdentity] = {}
    for info in nodes:
        node_id = int(getattr(info, "node_id", 0))
        name = str(getattr(info, "name", "") or "")
        key = bytes(getattr(info, "public_key", b"") or b"")
        out[node_id] = NodeIdentity(name=name, public_key=key)
    return out


def identity_refusal(
    declared: str,
    node: NodeIdentity | None,
    *,
    pinned: Mapping[str, bytes] | None,
    admitted: Iterable[str],
) -> str:
    """Why a hello declaring ``declared`` from ``node`` must be refused ("" if it may pass).

    ``pinned`` maps site name to the public key the coordinator kit holds for it (DER
    SPKI, :func:`fedinfra.crypto.tls.public_key_der`); ``None`` in simulation. Reasons name no
    declared value (it is the other side's input).
    """
    if not is_slug(declared):
        return "declared site name is not a plain name"
    if declared in set(admitted):
        return "another node already holds this site name"
    registered = node.name if node is not None else ""
    if pinned is None and not registered:
        return ""  # simulation: no registration exists
    if registered != declared:
        return "declared site name differs from the name registered with this node's key"
    if pinned is not None:
        expected = pinned.get(declared)
        if expected is None:
            return "site is not in the coordinator kit"
        if node is None or public_key_der(node.public_key) != expected:
            return "node key is not the key the coordinator kit pins for this site"
    return ""


__all__ = ["NodeIdentity", "identity_refusal", "node_identities"]
