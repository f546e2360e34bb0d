"""HE parameters of one consortium kit: layout arithmetic, identity hash, error bound (pure).

The *parameter id* is SHA-256 over a canonical JSON rendering of every value that changes
what a ciphertext means (scheme, ring, moduli, quantization, clip, caps) **and** the kit
id drawn at ``fedinfra keys init``. Two kits with equal settings still differ by kit id,
so a ciphertext made under another consortium's key is refused before SEAL sees it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from fedinfra.config.secagg import (
    CKKS_SCALE_BITS,
    COEFF_MODULUS_BITS,
    POLY_MODULUS_DEGREE,
    SecureAggSpec,
)
from fedinfra.crypto.quantize import quant_max
from fedinfra.errors import ConfigError

#: Slots after the data that carry the encrypted example weight and the site count.
TRAILER_SLOTS = 2


@dataclass(frozen=True)
class HEParams:
    """Public parameters shared by the coordinator and every site of one kit."""

    spec: SecureAggSpec
    kit_id: str

    def __post_init__(self) -> None:
        if self.spec.mode not in ("bfv", "ckks", "secagg+he"):
            raise ConfigError("secure_aggregation.mode must be 'bfv', 'ckks' or 'secagg+he' for an HE kit")
        if len(self.kit_id) != 32 or any(c not in "0123456789abcdef" for c in self.kit_id):
            raise ConfigError("kit id must be 32 lower-case hex characters; re-run 'fedinfra keys init'")

    @property
    def scheme(self) -> str:
        """``"bfv"`` or ``"ckks"`` (``secagg+he`` encrypts with BFV)."""
        return self.spec.he_scheme

    @property
    def slots(self) -> int:
        """Batching slots per ciphertext (complex slots in CKKS)."""
        return POLY_MODULUS_DEGREE if self.scheme == "bfv" else POLY_MODULUS_DEGREE // 2

    @property
    def values_per_slot(self) -> int:
        """Update values one slot carries: k lanes (BFV) or a real and an imaginary part (CKKS)."""
        return self.spec.lanes_per_slot if self.scheme == "bfv" else 2

    def data_slots(self, n_values: int) -> int:
        """Slots holding ``n_values`` update values."""
        return math.ceil(n_values / self.values_per_slot)

    def ciphertext_count(self, n_values: int) -> int:
        """Ciphertexts one update of ``n_values`` values takes (trailer slots included)."""
        return math.ceil((self.data_slots(n_values) + TRAILER_SLOTS) / self.slots)

    @property
    def canonical(self) -> dict[str, object]:
        """Every value that defines what a ciphertext of this kit means."""
        s = self.spec
        return {
            "format": "fedinfra-he/1",
            "scheme": s.mode,
            "poly_modulus_degree": POLY_MODULUS_DEGREE,
            "coeff_modulus_bits": [COEFF_MODULUS_BITS],
            "plain_modulus_bits": s.plain_bits if self.scheme == "bfv" else None,
            "ckks_scale_bits": CKKS_SCALE_BITS if self.scheme == "ckks" else None,
            "quant_bits": s.quant_bits if self.scheme == "bfv" else None,
            "clip": s.clip if self.scheme == "bfv" else None,
            "ckks_max_abs": s.ckks_max_abs if self.scheme == "ckks" else None,
            "max_sites": s.max_sites,
            "example_cap": s.example_cap,
            "kit_id": self.kit_id,
        }

    @property
    def param_id(self) -> bytes:
        """SHA-256 of :attr:`canonical` (sorted-key compact JSON)."""
        text = json.dumps(self.canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).digest()

    def mean_error_bound(self, *, sites: int, total_examples: int) -> float:
        """Worst-case ``|decrypted mean - exact weighted mean of the clipped updates|`` (BFV).

        Each site sends ``w_i * x_i`` with ``w_i = n_i / example_cap <= 1`` and
        ``|x_i| <= clip``; stochastic rounding errs by less than ``delta = clip / M`` per site,
        so the summed error is below ``sites * delta``; dividing by ``total / example_cap``
        scales it by ``example_cap / total``. The float32 result adds at most
        ``clip * 2^-23`` (two roundings of a value below ``clip``)::

            bound = sites * (clip / M) * example_cap / total_examples + clip * 2^-23

        Clipping itself changes values above ``clip`` (by design: the agreed bound, and for
        distributed DP the sensitivity); the bound is relative to the clipped update.
        For CKKS the same form holds with ``delta = 2^-30`` (encoding plus fresh-noise error
        at scale 2^40 is about 2^-40 per value, Cheon et al., ASIACRYPT 2017, lemma 1;
        measured below 4e-13) and ``magnitude = ckks_max_abs``.
        """
        if sites < 1 or total_examples < 1:
            raise ConfigError("error bound needs at least one site and one example")
        if self.scheme == "bfv":
            delta = self.spec.clip / quant_max(self.spec.quant_bits)
            magnitude = self.spec.clip
        else:
            delta = 2.0**-30
            magnitude = self.spec.ckks_max_abs
        return sites * delta * self.spec.example_cap / total_examples + magnitude * 2.0**-23
