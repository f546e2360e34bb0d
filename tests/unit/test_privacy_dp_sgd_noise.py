"""DP-SGD noise comes from the Philox CSPRNG in float64, not from torch's Mersenne Twister."""

from __future__ import annotations

import numpy as np
import torch

from fedinfra.privacy.dp_sgd import _install_secure_noise, train_dp_sgd
from fedinfra.privacy.noise import gaussian, secure_generator


def _optimizer(param: torch.nn.Parameter) -> object:
    from opacus.optimizers import DPOptimizer

    return DPOptimizer(
        torch.optim.SGD([param], lr=1.0), noise_multiplier=1.5, max_grad_norm=2.0, expected_batch_size=1
    )


def test_the_noise_is_the_float64_philox_draw_cast_once() -> None:
    param = torch.nn.Parameter(torch.zeros(5_000))
    opt = _optimizer(param)
    _install_secure_noise(opt, secure_generator(seed=11))
    param.summed_grad = torch.zeros(5_000)  # type: ignore[attr-defined]

    opt.add_noise()  # type: ignore[attr-defined]

    expected = gaussian(secure_generator(seed=11), 1.5 * 2.0, (5_000,)).astype(np.float32)
    assert param.grad is not None
    np.testing.assert_array_equal(param.grad.numpy(), expected)
    assert abs(float(param.grad.double().std()) - 3.0) < 0.15  # N(0, (z C)^2)


def test_torch_global_seed_does_not_change_the_noise_or_the_sample() -> None:
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    runs = []
    for torch_seed, seed in ((1, 5), (2, 5), (1, 6)):
        torch.manual_seed(torch_seed)
        model = torch.nn.Linear(4, 2)
        torch.nn.init.zeros_(model.weight)
        torch.nn.init.zeros_(model.bias)
        train_dp_sgd(model, x, y, epochs=1, batch_size=16, lr=0.5, noise_multiplier=1.0, max_grad_norm=1.0,
                     delta=1e-3, accountant="rdp", seed=seed)
        runs.append(model.weight.detach().numpy().copy())

    np.testing.assert_array_equal(runs[0], runs[1])  # only the Philox seed matters
    assert not np.array_equal(runs[0], runs[2])
