"""Keeping a site's copy of the global model in HE mode.

Under HE secure aggregation the coordinator never sees the aggregate, so the global model
exists only at the sites: each decrypts every round's encrypted weighted sum, divides
(after decryption, as the HE notes require) and applies the same deterministic server step.
Under ``secagg+he`` the decrypted slots are still masked: the site checks the unmasking
material that came with the aggregate and removes the masks before decoding
(:func:`fedinfra.site.secagg.open_masked_aggregate`).
The copy lives in the site's private home with the round it reflects.
"""

from __future__ import annotations

import numpy as np

from fedinfra.aggregation.server_opt import ServerOptimizer
from fedinfra.config.wire import TrainInstruction
from fedinfra.errors import ConfigError
from fedinfra.site.context import SiteContext
from fedinfra.types import NDArrays

_NAME = "global"


def _optimizer(ctx: SiteContext) -> ServerOptimizer:
    t = ctx.job.training
    return ServerOptimizer(lr=t.server_lr, momentum=t.server_momentum)


def current_model(
    ctx: SiteContext, instruction: TrainInstruction, base: NDArrays | None, aggregates: list[bytes]
) -> NDArrays:
    """Bring the site's model copy up to date and return it.

    ``base`` (the initial model) comes with ``sync_from == 1``; otherwise the site's stored
    copy must be at round ``sync_from - 1``. Each aggregate is opened for its own round, so
    a stale, replayed or foreign aggregate is refused by the codec.
    """
    from fedinfra.crypto import open_sum, unflatten
    from fedinfra.site.views import check_mean_bound

    run_id = instruction.run_id
    start = (instruction.sync_from or 1) - 1
    opt = _optimizer(ctx)
    if start == 0 and base is not None:
        weights, at = {k: np.asarray(v, dtype=np.float32) for k, v in base.items()}, 0
    else:
        # Copies are kept per round, so a coordinator that resumes from an earlier round
        # (after a crash) finds the copy it expects.
        stored = ctx.home.load_weights(run_id, f"{_NAME}-{start}")
        if stored is None:
            raise ConfigError(f"site {ctx.name}: no model copy at round {start} of run {run_id}")
        opt.load_state({k: v for k, v in stored.items() if k.startswith("velocity/")})
        weights = {k: v for k, v in stored.items() if not k.startswith("velocity/")}
        at = start
    layout = [(k, v.shape) for k, v in weights.items()]
    for i, agg in enumerate(aggregates):
        rnd = at + 1 + i
        if ctx.job.secure_aggregation.masked:  # secagg+he: decrypt, check, unmask, decode
            from fedinfra.site.secagg import open_masked_aggregate

            mean, total = open_masked_aggregate(ctx, agg, run_id=run_id, round_id=rnd)
        else:
            mean, total = open_sum(agg, ctx.he_keys(), run_id=run_id, round_id=rnd)
        # Sites clipped before encrypting: the mean lies within the clip up to the codec's error.
        check_mean_bound(mean, ctx.he_keys().params, total_examples=total)
        if ctx.job.privacy.mechanism == "user-dp":  # one weight per site: total = contributions
            from fedinfra.privacy.claims import check_survivors

            check_survivors(total, min_sites=ctx.job.sites.min_sites)
        weights = opt.step(weights, {k: np.asarray(v, dtype=np.float32) for k, v in unflatten(mean, layout).items()})
        at = rnd
    if aggregates:
        ctx.home.save_weights(run_id, f"{_NAME}-{at}", {**weights, **opt.state()})
    return weights
