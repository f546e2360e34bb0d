"""Noise sources: fresh CSPRNG keys, the hardened Gaussian (Holohan & Braghin 2021, §5.1), and the
discrete Gaussian sampler against its exact probabilities (Canonne, Kamath & Steinke 2020).

Statistical checks name their error rate; each uses a fixed seed, so it holds on every run.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fedinfra.errors import ConfigError
from fedinfra.privacy.noise import add_gaussian_noise, discrete_gaussian, gaussian, secure_generator, secure_seed


def _exactly(msg: str) -> str:
    return f"^{re.escape(msg)}$"


def test_unseeded_generators_are_keyed_with_fresh_random_keys_and_counters() -> None:
    # 128 key bits and 128 counter bits from the OS CSPRNG per generator. Two of 16 colliding, or a
    # counter of 0, has probability below 2^-100. (A 129-bit draw would be refused by Philox half the time.)
    states = [secure_generator().bit_generator.state["state"] for _ in range(16)]

    keys = {tuple(int(w) for w in s["key"]) for s in states}
    counters = {tuple(int(w) for w in s["counter"]) for s in states}
    assert len(keys) == len(counters) == 16
    assert all(any(c) for c in counters)


def test_fresh_seeds_are_distinct_non_negative_63_bit_integers() -> None:
    # torch.Generator.manual_seed takes at most 2^64 - 1 and numpy at least 0; 63 bits fit both signed
    # and unsigned int64. A 64-bit draw would exceed 2^63 - 1 in 64 draws with probability 1 - 2^-64.
    seeds = [secure_seed() for _ in range(64)]

    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)
    assert len(set(seeds)) == 64


def test_a_negative_seed_is_refused() -> None:
    with pytest.raises(ConfigError, match=_exactly("seed must be >= 0 (got -1)")):
        secure_generator(-1)


def test_the_hardened_draw_is_four_gaussian_draws_summed_and_halved() -> None:
    draws = secure_generator(seed=4)
    expected = np.zeros((3, 5), np.float64)
    for _ in range(4):
        expected += draws.normal(0.0, 1.5, size=(3, 5))
    expected *= 0.5

    out = gaussian(secure_generator(seed=4), 1.5, (3, 5))

    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, expected)


def test_the_hardened_draw_is_a_centred_gaussian_of_the_given_std() -> None:
    # 100,000 draws of N(0, 2^2): the sample mean has standard error 0.0063 (bound 6 SE: error rate
    # 2e-9), the sample std a relative one of 0.22 % (bound 2 %: > 9 SE), the kurtosis one of
    # sqrt(24/n) = 0.015 (bound 0.1: > 6 SE).
    x = gaussian(secure_generator(seed=8), 2.0, (100_000,))

    assert abs(float(x.mean())) < 6 * 2.0 / math.sqrt(x.size)
    assert float(x.std()) == pytest.approx(2.0, rel=0.02)
    kurtosis = float(np.mean((x - x.mean()) ** 4) / x.var() ** 2)
    assert kurtosis == pytest.approx(3.0, abs=0.1)


def test_zero_std_is_no_noise() -> None:
    np.testing.assert_array_equal(gaussian(secure_generator(seed=1), 0.0, (4,)), np.zeros(4))


@pytest.mark.parametrize("std", [-1.0, math.nan, math.inf])
def test_a_negative_or_non_finite_std_is_refused(std: float) -> None:
    with pytest.raises(ConfigError, match=_exactly(f"noise std must be a finite number >= 0 (got {std})")):
        gaussian(secure_generator(seed=1), std, (4,))


def test_adding_noise_adds_the_hardened_draw_in_float64_and_returns_float32() -> None:
    update = {"w": np.array([[1.0, -2.0], [3.0, 1e8]], np.float32), "b": np.arange(3, dtype=np.float32)}

    out = add_gaussian_noise(update, std=0.7, rng=secure_generator(seed=6))

    rng = secure_generator(seed=6)
    for name in ("w", "b"):
        expected = (update[name].astype(np.float64) + gaussian(rng, 0.7, update[name].shape)).astype(np.float32)
        assert out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name], expected)


def _discrete_gaussian_pmf(sigma: float, k: np.ndarray) -> np.ndarray:
    support = np.arange(-60, 61)
    z = float(np.exp(-(support**2) / (2 * sigma**2)).sum())
    return np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma**2)) / z


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_the_discrete_gaussian_matches_its_exact_probabilities(sigma: float) -> None:
    # 100,000 draws; each of the values 0..3 has frequency within 6 binomial standard errors of its
    # exact N_Z(0, sigma^2) probability (error rate < 1e-8 per value).
    n = 100_000
    x = discrete_gaussian(secure_generator(seed=12), sigma, (n,))

    assert x.dtype == np.int64
    ks = np.arange(0, 4)
    p = _discrete_gaussian_pmf(sigma, ks)
    freq = np.array([np.mean(x == k) for k in ks])
    assert np.all(np.abs(freq - p) < 6 * np.sqrt(p * (1 - p) / n))
    assert abs(float(np.mean(x))) < 6 * sigma / math.sqrt(n)


def test_the_discrete_gaussian_fills_a_small_shape_exactly() -> None:
    x = discrete_gaussian(secure_generator(seed=3), 1.0, (2, 3))

    assert x.shape == (2, 3)
    assert x.dtype == np.int64


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan, math.inf])
def test_a_non_positive_or_non_finite_discrete_sigma_is_refused(sigma: float) -> None:
    msg = f"discrete Gaussian sigma must be a positive finite number (got {sigma})"
    with pytest.raises(ConfigError, match=_exactly(msg)):
        discrete_gaussian(secure_generator(seed=1), sigma, (4,))


class _CountingGenerator:
    """Passes every draw on to a Generator, counting the discrete Laplace proposals and their batches."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.geometric_draws = 0
        self.geometric_calls = 0

    def geometric(self, p: float, size: int) -> np.ndarray:
        self.geometric_draws += size
        self.geometric_calls += 1
        return self._rng.geometric(p, size=size)

    def random(self, size: int) -> np.ndarray:
        return self._rng.random(size)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_the_discrete_gaussian_needs_under_two_proposals_per_value_in_a_few_batches(sigma: float) -> None:
    # With t = floor(sigma) + 1, Alg. 3 of Canonne et al. 2020 accepts a proposal with probability
    # 0.54 at sigma = 1 (the least for sigma >= 1) and 0.71 at sigma = 3: under 2 expected proposals
    # per value (1.85 and 1.42; over 100,000 values the ratio is within 0.01 of that). The sampler
    # draws about 1.3 proposals per missing value per batch, so about ten batches fill 100,000.
    counting = _CountingGenerator(secure_generator(seed=2))

    x = discrete_gaussian(counting, sigma, (100_000,))  # type: ignore[arg-type]

    np.testing.assert_array_equal(x, discrete_gaussian(secure_generator(seed=2), sigma, (100_000,)))
    proposals, batches = counting.geometric_draws // 2, counting.geometric_calls // 2  # two geometrics each
    assert proposals / x.size < 2.0
    assert batches <= 20
