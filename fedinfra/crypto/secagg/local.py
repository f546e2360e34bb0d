"""An in-memory driver of the four stages (tests and benchmarks; the coordinator drives Flower).

It plays every site and the coordinator in one process, with sites dropping out before
sharing, before masking (after sharing) or before unmasking (after sending their input),
which are the three places SecAgg must survive (Bonawitz et al., CCS 2017, section 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedinfra.crypto.secagg.plan import SecAggPlan
from fedinfra.crypto.secagg.protocol import Roster, Segments, SiteSession, Unmasker


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
    sessions = {n: SiteSession.start(n, run_id=run_id, round_id=round_id) for n in names}
    roster = Roster(tuple(sessions[n].advertise() for n in names))
    sealed: dict[str, dict[str, bytes]] = {}
    commitments: dict[str, bytes] = {}
    for n in names:
        sealed[n], commitments[n] = sessions[n].share(p, roster)
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
    responses = {n: sessions[n].unmask(p, unmasker.u3) for n in unmasker.u3 if n not in drop_before_unmask}
    return unmasker.finish(responses)
