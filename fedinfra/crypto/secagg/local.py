"""An in-memory driver of the stages (tests and benchmarks; the coordinator drives Flower).

It plays every site and the coordinator in one process, with sites dropping out before
sharing, before masking (after sharing) or before unmasking (after sending their input),
which are the three places SecAgg must survive (Bonawitz et al., CCS 2017, section 4).
Each site signs its advertised keys and the survivor list with an Ed25519 identity key made
here (:func:`identities`), as a key ceremony would pin them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedinfra.crypto import _sign
from fedinfra.crypto.secagg.plan import SecAggPlan
from fedinfra.crypto.secagg.protocol import Roster, Segments, SiteSession, Unmasker


@dataclass(frozen=True)
class Identities:
    """Sites' Ed25519 identity keys: private (each site's own) and the pinned public directory."""

    private: Mapping[str, bytes]
    public: Mapping[str, bytes]


def identities(names: Sequence[str]) -> Identities:
    """Fresh identity keys for ``names`` (what the key ceremony gives every site)."""
    pairs = {n: _sign.new_signing_key() for n in names}
    return Identities({n: sk for n, (sk, _) in pairs.items()}, {n: pk for n, (_, pk) in pairs.items()})


def run_round(
    p: SecAggPlan,
    inputs: Mapping[str, Segments],
    bits: Sequence[int],
    *,
    run_id: str = "run",
    round_id: int = 1,
    drop_before_mask: Sequence[str] = (),
    drop_before_unmask: Sequence[str] = (),
) -> Segments:
    """Run one round over ``inputs`` (site name -> segments, masked in place); return the sum."""
    names = sorted(inputs)
    ids = identities(names)
    sessions = {n: SiteSession.start(n, run_id=run_id, round_id=round_id) for n in names}
    roster = Roster(tuple(sessions[n].advertise(ids.private[n]) for n in names))
    sealed: dict[str, dict[str, bytes]] = {}
    commitments: dict[str, bytes] = {}
    for n in names:
        sealed[n], commitments[n] = sessions[n].share(p, roster, ids.public)
    u2 = list(names)
    sizes = [s.shape[0] for s in next(iter(inputs.values()))]
    unmasker = Unmasker(
        p, roster, run_id=run_id, round_id=round_id, u2=u2, commitments=commitments, sizes=sizes, bits=bits
    )
    for n in names:
        if n in drop_before_mask:
            continue
        mine = {sender: box[n] for sender, box in sealed.items() if n in box}
        masked = sessions[n].mask(p, inputs[n], bits, u2=u2, shares_for_me=mine)
        unmasker.add(n, masked)
    u3 = list(unmasker.u3)
    answering = [n for n in u3 if n not in drop_before_unmask]
    signatures = {n: sessions[n].consistency(p, u3, ids.private[n]) for n in answering}
    responses = {n: sessions[n].unmask(p, u3, signatures, ids.public) for n in answering}
    return unmasker.finish(responses)
