"""How a site's evaluation sums leave it: inside the secure aggregate when the mode gives one.

Issue 14, deliverable 4 (DESIGN.md: "losses, counts and metrics travel inside the secure
aggregate or with charged noise"). A test-set loss sum or correct count is a query on the
site's data like any other: a coordinator that chooses the model reads it exactly.

* ``secagg`` and ``secagg+he``: the sums are fixed-point encoded
  (:func:`~fedinfra.crypto.secagg.codec.encode_eval`) and masked with the round's SecAgg+
  masks as one more segment of the site's input (Bonawitz et al., CCS 2017; Bell et al.,
  CCS 2020), so the coordinator unmasks only their total over at least
  ``max(t, min_contributors)`` survivors - the same guarantee as the update's. The sums of
  round ``r``'s model ride in round ``r + 1``'s masked input (the sampled sites); the final
  model's in an evaluation-only secure sum of the close wave. The report carries no figure.
* a site contributes its evaluation of one model (by digest of the weights it evaluated) to
  at most one secure sum: asked again, it sends zeros. Two sums of the same model over
  survivor sets that differ by one site would otherwise give that site's figures by
  subtraction (the differencing attack SecAgg's one-unmask-per-round rule blocks for updates).
* ``bfv`` and ``ckks``: the coordinator cannot decrypt a sum, so the sums (and a count of
  one) travel under zero-sum masks keyed by the shared HE key
  (:mod:`fedinfra.crypto.secagg.group`): every site evaluating a model in one wave is on the
  instruction's ``eval_roster`` and the masks cancel only in the sum over exactly that roster
  (at least the contributor floor). A site already asked about these weights sends nothing:
  masking again under the same label would let the coordinator subtract the two.
* ``none`` sends the sums in the clear, as the report's release table says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import overload

import numpy as np
import numpy.typing as npt

from fedinfra.aggregation.digest import model_digest
from fedinfra.config.wire import TrainInstruction, close_sum_round
from fedinfra.site.context import SiteContext
from fedinfra.types import NDArrays

#: Per-run record of the models whose evaluation this site already put into a secure sum.
_EVALUATED_FILE = "evaluated.json"


def secure_evaluation(ctx: SiteContext) -> bool:
    """True when this job's evaluation sums travel inside the secure aggregate (masked modes)."""
    return bool(ctx.job.secure_aggregation.masked)


def close_sum(instruction: TrainInstruction) -> TrainInstruction:
    """The close instruction as the close wave's secure sum names it (:func:`close_sum_round`)."""
    return instruction.model_copy(update={"round": close_sum_round(instruction.round)})


@overload
def evaluation_lanes(
    ctx: SiteContext, run_id: str, weights: NDArrays, sums: Mapping[str, Sequence[float]]
) -> npt.NDArray[np.uint64]: ...


@overload
def evaluation_lanes(
    ctx: SiteContext, run_id: str, weights: NDArrays, sums: Mapping[str, Sequence[float]], *, zeros_if_repeated: bool
) -> npt.NDArray[np.uint64] | None: ...


def evaluation_lanes(
    ctx: SiteContext,
    run_id: str,
    weights: NDArrays,
    sums: Mapping[str, Sequence[float]],
    *,
    zeros_if_repeated: bool = True,
) -> npt.NDArray[np.uint64] | None:
    """The site's evaluation sums as fixed-point integers for a secure sum.

    Zeros when the site has no test shard; zeros (or ``None`` with ``zeros_if_repeated=False``)
    when it already contributed the evaluation of these exact weights to a secure sum of this
    run (module docstring). A sum outside the encoding's range is refused
    (:class:`~fedinfra.errors.ConfigError` naming it).
    """
    from fedinfra.crypto.secagg import codec as sa_codec
    from fedinfra.site.tasks import eval_layout
    from fedinfra.task.metrics import flatten_sums

    layout = eval_layout(ctx.job)
    size = sum(n for _, n in layout)
    names = [f"{name}[{i}]" if n > 1 else name for name, n in layout for i in range(n)]
    if not _first_evaluation(ctx, run_id, model_digest(weights)):
        return np.zeros(size, dtype=np.uint64) if zeros_if_repeated else None
    if not sums:
        return np.zeros(size, dtype=np.uint64)
    return sa_codec.encode_eval(flatten_sums(sums, layout), ctx.job.secure_aggregation, names)


def group_evaluation(ctx: SiteContext) -> bool:
    """True when this job's evaluation sums travel under HE-keyed zero-sum masks (``bfv``, ``ckks``)."""
    sa = ctx.job.secure_aggregation
    return bool(sa.encrypted and not sa.masked)


def group_masked(
    ctx: SiteContext,
    instruction: TrainInstruction,
    evaluated_round: int,
    weights: NDArrays,
    sums: Mapping[str, Sequence[float]],
) -> bytes | None:
    """The site's sums (and a count of one) masked for the instruction's roster; None: send nothing.

    Nothing when there is no roster, when the roster does not name this site or is below the
    contributor floor (``secure_aggregation.min_contributors``; a smaller sum is not released,
    and the round's training goes on), or when these weights were already evaluated into a
    secure sum (a second masking under the same label would reveal the difference).
    """
    from fedinfra.config.secagg_plan import contributor_floor
    from fedinfra.crypto.secagg import group

    sa = ctx.job.secure_aggregation
    floor = contributor_floor(
        sa.min_contributors, min_sites=ctx.job.sites.min_sites, distributed_noise=ctx.job.privacy.mechanism == "user-dp"
    )
    roster = set(instruction.eval_roster)
    if ctx.name not in roster or len(roster) < max(2, floor) or len(roster) != len(instruction.eval_roster):
        return None
    lanes = evaluation_lanes(ctx, instruction.run_id, weights, sums, zeros_if_repeated=False)
    if lanes is None:
        return None
    context = f"{instruction.run_id}\x00{evaluated_round}\x00{instruction.model_digest or ''}"
    values = np.concatenate([lanes, np.ones(1, dtype=np.uint64)])  # the trailer counts contributions
    key = group.group_key(ctx.he_keys().he_secret_key)
    masked = group.mask(values, key, context=context, me=ctx.name, roster=instruction.eval_roster, floor=floor)
    return group.to_wire(masked)


def _first_evaluation(ctx: SiteContext, run_id: str, digest: str) -> bool:
    """Record ``digest`` as evaluated into a secure sum; False if it already was (durably, before replying)."""
    path = ctx.home.run_dir(run_id) / _EVALUATED_FILE
    done: list[str] = json.loads(path.read_text()) if path.exists() else []
    if digest in done:
        return False
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump([*done, digest], fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return True


__all__ = ["close_sum", "evaluation_lanes", "group_evaluation", "group_masked", "secure_evaluation"]
