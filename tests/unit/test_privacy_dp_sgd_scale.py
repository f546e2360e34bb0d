"""DP-SGD adds Gaussian noise of the planned scale and clips every example to C (Abadi et al. 2016, Alg. 1).

The model is ``w . x`` with loss ``mean_i (w . x_i) * y_i``, so example i's gradient is exactly
``y_i x_i``. Every example is ``x = 10 e_1`` with ``y = 1`` (gradient norm 10, far above the clip
norm C) and the sampling rate is 1, so one step of plain SGD at learning rate ``lr`` moves

* coordinate 1 by ``-lr * C`` (each example clipped to C, averaged over the batch of n), and
* every other coordinate by ``-lr * sigma * C / n * z`` with ``z ~ N(0, 1)``:

the noise standard deviation is ``sigma * C / batch``. Without clipping coordinate 1 would
move by ``-lr * 10``; without noise the others would not move at all.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedinfra.privacy import train_dp_sgd

N, D, CLIP, SIGMA, LR = 200, 1201, 0.5, 2.0, 1.0


class _Linear(nn.Module):
    """``mean_i out_i * y_i`` with the ``reduction`` switch Opacus' ghost clipping uses."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per = out.squeeze(-1) * y
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()


def _one_step(mode: str, seed: int) -> np.ndarray:
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x = np.zeros((N, D), dtype=np.float32)
    x[:, 0] = 10.0
    y = np.ones(N, dtype=np.float32)
    train_dp_sgd(
        model,
        x,
        y,
        epochs=1,
        batch_size=N,
        lr=LR,
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        delta=1e-3,
        accountant="rdp",
        mode=mode,
        seed=seed,
        criterion=_Linear(),  # type: ignore[arg-type]
    )
    return model.weight.detach().numpy().ravel().astype(np.float64)


@pytest.mark.parametrize("mode", ["fused", "ghost", "hooks"])
def test_each_example_is_clipped_to_c_and_the_noise_has_std_sigma_c_over_batch(mode: str) -> None:
    w = _one_step(mode, seed=2)
    planned = SIGMA * CLIP / N

    assert w[0] == pytest.approx(-LR * CLIP, abs=6 * planned)  # clipped: not -LR * 10
    noise = w[1:] / -LR
    # The sample std of 1200 normal draws is within 10% of the true one with probability
    # > 0.9999 (its relative standard error is 1/sqrt(2 * 1200) = 2%).
    assert np.std(noise) == pytest.approx(planned, rel=0.10)
    assert abs(np.mean(noise)) < 5 * planned / math.sqrt(D - 1)
    # Gaussian, not some other zero-mean noise of that scale: kurtosis near 3.
    kurtosis = float(np.mean((noise - noise.mean()) ** 4) / np.var(noise) ** 2)
    assert kurtosis == pytest.approx(3.0, abs=0.6)
