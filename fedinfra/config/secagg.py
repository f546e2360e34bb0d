"""Secure-aggregation settings of a job (:class:`SecureAggSpec`).

The validator refuses any combination that could make an encrypted sum wrong instead of
failing loudly later: a packed BFV sum must never wrap modulo the plaintext modulus, and
its decryption noise must stay below SEAL's correctness bound for the number of sites the
parameters were sized for.

Why these numbers (N = 4096 and one 60-bit coefficient prime):

* Security: the Homomorphic Encryption Standard (Albrecht et al., 2018, table 1; SEAL's
  ``CoeffModulus::MaxBitCount``) allows at most 109 coefficient-modulus bits at N = 4096
  for 128-bit classical security; one 60-bit prime is well inside. Addition-only
  aggregation needs no modulus chain, so a single prime suffices.
* Correctness: a fresh symmetric BFV ciphertext in SEAL carries noise of at most
  6 * 3.2 (clipped Gaussian) plus 1/2 (rounding of Delta * m), under 22. The sum of
  ``n`` ciphertexts decrypts correctly when its noise is below q / (2 t); with
  q > 2^59 that holds whenever ``t_bits <= 59 - ceil(log2(44 n))``
  (Fan and Vercauteren, 2012, "Somewhat Practical Fully Homomorphic Encryption", lemma 2).
* Packing (BatchCrypt, Zhang et al., USENIX ATC 2020): each value is quantized to
  ``b = quant_bits`` bits and offset to be non-negative; a lane of
  ``L = b + ceil(log2 n)`` bits holds the sum of ``n`` of them without carrying into the
  next lane; ``k = floor((t_bits - 1) / L)`` lanes share one slot, so a slot never
  reaches t.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, model_validator

from fedinfra.config._load import StrictModel

#: Ring dimension of both HE modes (SEAL ``poly_modulus_degree``).
POLY_MODULUS_DEGREE = 4096
#: Bits of the single coefficient prime.
COEFF_MODULUS_BITS = 60
#: SEAL's 128-bit-security ceiling on coefficient-modulus bits at N = 4096 (HE standard).
MAX_COEFF_BITS_128 = 109
#: Smallest plaintext modulus SEAL's ``PlainModulus.Batching`` can find a prime for at N=4096.
MIN_PLAIN_BITS = 14
#: CKKS encoding scale (bits); values times the scale stay far below q / 2 = 2^59.
CKKS_SCALE_BITS = 40


def max_plain_bits(max_sites: int) -> int:
    """Largest plaintext-modulus size whose sum of ``max_sites`` ciphertexts decrypts exactly.

    >>> max_plain_bits(10), max_plain_bits(16), max_plain_bits(100)
    (50, 49, 46)
    """
    return COEFF_MODULUS_BITS - 1 - math.ceil(math.log2(44 * max_sites))


def lane_bits(quant_bits: int, max_sites: int) -> int:
    """Bits of one packing lane: ``b + ceil(log2 n)`` (a sum of ``n`` b-bit values fits).

    >>> lane_bits(20, 10), lane_bits(8, 10), lane_bits(8, 1)
    (24, 12, 8)
    """
    return quant_bits + math.ceil(math.log2(max_sites))


def lanes_per_slot(plain_bits: int, quant_bits: int, max_sites: int) -> int:
    """Lanes in one batching slot: ``floor((t_bits - 1) / L)``.

    >>> lanes_per_slot(50, 20, 10), lanes_per_slot(50, 8, 10)
    (2, 4)
    """
    return (plain_bits - 1) // lane_bits(quant_bits, max_sites)


class SecureAggSpec(StrictModel):
    """How updates are hidden from the coordinator.

    ``mode``: ``none`` (plaintext aggregation), ``bfv`` (packed BFV, exact integer sums of
    quantized updates; the default for HE), ``ckks`` (approximate float sums, no clip) or
    ``secagg`` (SecAgg+ pairwise masks over the same quantized integers: the coordinator
    learns only the sum, with no shared secret; see :mod:`fedinfra.crypto.secagg`) or
    ``secagg+he`` (the same masks drawn per BFV slot modulo the plain modulus t, then packed
    BFV encryption: the coordinator sees neither an update nor the sum, and a coordinator
    colluding with a site that holds the HE key sees only masked slots; the sites remove the
    masks after decrypting, :mod:`fedinfra.crypto.secagg.he`).

    secagg fields: ``max_dropouts`` and ``max_colluders`` are the declared bounds that fix
    the threshold t and degree k (:func:`fedinfra.config.secagg_plan.plan`);
    ``min_contributors`` (at least 2) is the fewest sites whose sum a site helps to unmask.

    Fields (BFV unless noted):

    * ``quant_bits`` - quantization width b (8, 12, 16 or 20);
    * ``clip`` - agreed bound on ``|value|`` of every update coordinate; larger values are
      clipped by the site before quantization;
    * ``max_sites`` - most replies one sum may hold (sizes lanes and the noise bound);
    * ``example_cap`` - most examples one site may weigh in with (weights are
      ``num_examples / example_cap``, so a weighted value stays within ``clip``); set it
      near the largest site's count: the mean's quantization error grows with
      ``example_cap / total examples`` (:meth:`fedinfra.crypto.HEParams.mean_error_bound`);
    * ``plain_modulus_bits`` - t in bits; ``None`` picks the largest correct one;
    * ``ckks_max_abs`` (CKKS) - bound on ``|value|`` a site may encrypt; CKKS does not clip,
      a larger value is refused (it would wrap modulo q).
    """

    mode: Literal["none", "bfv", "ckks", "secagg", "secagg+he"] = "none"
    quant_bits: Literal[8, 12, 16, 20] = 20
    clip: float = Field(default=1.0, gt=0, le=1e6, description="bound on |update value| before quantization")
    max_sites: int = Field(default=16, ge=1, le=100_000, description="most replies one encrypted sum holds")
    example_cap: int = Field(default=10_000, ge=1, le=2**31, description="most examples one site weighs in")
    plain_modulus_bits: int | None = Field(default=None, ge=MIN_PLAIN_BITS, le=COEFF_MODULUS_BITS - 1)
    ckks_max_abs: float = Field(default=1024.0, gt=0, description="bound on |value| a site may encrypt (CKKS)")
    max_dropouts: int = Field(default=1, ge=0, le=100_000, description="sites that may drop out of a round (secagg)")
    max_colluders: int = Field(default=1, ge=0, le=100_000, description="sites that may collude with the coordinator")
    min_contributors: int = Field(
        default=3, ge=2, le=100_000, description="fewest sites whose sum the sites agree to unmask or decrypt"
    )

    @property
    def encrypted(self) -> bool:
        """The coordinator holds only a ciphertext of the aggregate (sites decrypt it)."""
        return self.mode in ("bfv", "ckks", "secagg+he")

    @property
    def masked(self) -> bool:
        """Updates are pairwise-masked (SecAgg / SecAgg+), alone or under BFV."""
        return self.mode in ("secagg", "secagg+he")

    @property
    def he_scheme(self) -> str:
        """The HE scheme of an encrypted mode (``secagg+he`` encrypts with packed BFV)."""
        return "bfv" if self.mode == "secagg+he" else self.mode

    @property
    def plain_bits(self) -> int:
        """The plaintext-modulus size in use (explicit or the largest correct one)."""
        if self.plain_modulus_bits is not None:
            return self.plain_modulus_bits
        return max_plain_bits(self.max_sites)

    @property
    def lane_bits(self) -> int:
        """Bits of one packing lane (BFV)."""
        return lane_bits(self.quant_bits, self.max_sites)

    @property
    def lanes_per_slot(self) -> int:
        """Quantized values per batching slot (BFV)."""
        return lanes_per_slot(self.plain_bits, self.quant_bits, self.max_sites)

    @model_validator(mode="after")
    def _no_overflow(self) -> SecureAggSpec:
        if COEFF_MODULUS_BITS > MAX_COEFF_BITS_128:  # pragma: no cover - constants guard
            raise ValueError("coefficient modulus exceeds the 128-bit security limit")
        if self.he_scheme == "bfv":
            self._check_bfv()
        elif self.mode == "ckks":
            self._check_ckks()
        if self.masked:
            self._check_secagg()
        return self

    def _check_secagg(self) -> None:
        # Masking is modulo 2^L with L = quant_bits + ceil(log2 max_sites): the integer sum of
        # max_sites updates never wraps (fedinfra.crypto.secagg.codec); the trailer is mod 2^64.
        if self.lane_bits > 62:
            raise ValueError(f"a {self.lane_bits}-bit lane is too wide for masking; lower max_sites or quant_bits")
        if self.max_sites * self.example_cap >= 2**62:
            raise ValueError("max_sites * example_cap is too large for the secagg trailer; lower example_cap")

    def _check_bfv(self) -> None:
        ceiling = max_plain_bits(self.max_sites)
        if ceiling < MIN_PLAIN_BITS:
            raise ValueError(f"max_sites={self.max_sites} is too many for one 60-bit prime; lower max_sites")
        t_bits = self.plain_bits
        if t_bits > ceiling:
            raise ValueError(
                f"plain_modulus_bits={t_bits} exceeds the decryption-noise bound {ceiling} for "
                f"max_sites={self.max_sites}; lower it or leave it unset"
            )
        if self.lanes_per_slot < 1:
            raise ValueError(
                f"a {self.lane_bits}-bit lane (quant_bits + log2 max_sites) does not fit a "
                f"{t_bits}-bit plaintext modulus; lower quant_bits or max_sites"
            )
        if self.max_sites * self.example_cap >= 2 ** (t_bits - 1):
            raise ValueError(
                f"max_sites * example_cap = {self.max_sites * self.example_cap} overflows the "
                f"{t_bits}-bit plaintext modulus; lower example_cap"
            )

    def _check_ckks(self) -> None:
        # Sites encrypt (num_examples / example_cap) * value, at most ckks_max_abs in size; the
        # decrypted polynomial's coefficients are at most twice the largest slot, so the sum of
        # max_sites of them times the scale 2^40 stays below q / 2 > 2^58 when
        # max_sites * ckks_max_abs < 2^(58 - 40 - 1) (one more bit of headroom for noise).
        limit = 2.0 ** (COEFF_MODULUS_BITS - 2 - CKKS_SCALE_BITS - 1)
        if self.max_sites * self.ckks_max_abs >= limit:
            raise ValueError(
                f"max_sites * ckks_max_abs = {self.max_sites * self.ckks_max_abs:g} reaches the CKKS "
                f"limit {limit:g}; lower ckks_max_abs or max_sites"
            )


#: Site identifiers: short, lower-case, safe as directory names and in audit entries.
SITE_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class ConsortiumSpec(StrictModel):
    """The consortium a set of provisioning kits is made for (``consortium.toml``).

    ``fedinfra keys init`` reads it; the HE part uses ``sites`` and ``secure_aggregation``.
    A consortium may name more sites than ``max_sites`` (rounds that sample a subset); each
    encrypted sum still refuses more than ``max_sites`` replies.
    Later parts (TLS, SuperNode authentication) add their own tables.
    """

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    sites: list[str] = Field(min_length=1, description="site identifiers, one kit each")
    secure_aggregation: SecureAggSpec = Field(default_factory=lambda: SecureAggSpec(mode="bfv"))

    @model_validator(mode="after")
    def _sites_fit(self) -> ConsortiumSpec:
        for site in self.sites:
            if not re.fullmatch(SITE_ID_PATTERN, site):
                raise ValueError(f"site id {site!r} must match {SITE_ID_PATTERN}")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError("site ids must be unique")
        return self
