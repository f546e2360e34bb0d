"""Shamir t-of-n secret sharing over a prime field (pure; Shamir, CACM 22(11), 1979).

A secret ``s`` is the constant term of a random polynomial ``f`` of degree ``t - 1`` over
GF(p); share ``i`` is ``(i, f(i))`` for ``i = 1..n``. Any ``t`` shares give ``s`` by Lagrange
interpolation at 0; any ``t - 1`` shares are independent of ``s`` (perfect secrecy).

The default field is GF(2^521 - 1), a Mersenne prime larger than any 32-byte secret (seeds
and X25519 keys); a share is 66 bytes. Coefficients come from the caller's source of
randomness, by default the OS CSPRNG (``secrets``).

>>> p = 1613  # the worked example of Wikipedia's "Shamir's secret sharing"
>>> shares = split(1234, threshold=3, count=6, prime=p, coefficients=[166, 94])
>>> shares
[(1, 1494), (2, 329), (3, 965), (4, 176), (5, 1188), (6, 775)]
>>> combine([shares[1], shares[3], shares[4]], prime=p)
1234
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from fedinfra.errors import CryptoError

#: GF(2^521 - 1): a Mersenne prime above every 256-bit secret.
PRIME = (1 << 521) - 1
#: Bytes of one share value in :data:`PRIME`'s field.
SHARE_BYTES = 66

Share = tuple[int, int]


def split(
    secret: int,
    *,
    threshold: int,
    count: int,
    prime: int = PRIME,
    coefficients: Sequence[int] | None = None,
) -> list[Share]:
    """Split ``secret`` into ``count`` shares of which any ``threshold`` recover it.

    ``coefficients`` (``threshold - 1`` of them) are drawn from the OS CSPRNG unless given
    (known-answer tests only).
    """
    if not 1 <= threshold <= count:
        raise ValueError(f"threshold={threshold} must be between 1 and count={count}")
    if count >= prime:
        raise ValueError("more shares than field elements")
    if not 0 <= secret < prime:
        raise ValueError("secret does not fit the field")
    if coefficients is None:
        coefficients = [secrets.randbelow(prime) for _ in range(threshold - 1)]
    if len(coefficients) != threshold - 1:
        raise ValueError(f"need {threshold - 1} coefficients, got {len(coefficients)}")
    poly = [secret, *coefficients]
    shares = []
    for x in range(1, count + 1):
        y = 0
        for c in reversed(poly):  # Horner
            y = (y * x + c) % prime
        shares.append((x, y))
    return shares


def combine(shares: Sequence[Share], *, prime: int = PRIME) -> int:
    """Lagrange-interpolate ``shares`` at 0; the caller passes at least the threshold of them.

    Duplicate or zero x-coordinates are refused (:class:`CryptoError`): they would divide by
    zero or let one holder count twice.
    """
    xs = [x for x, _ in shares]
    if not shares or len(set(xs)) != len(xs) or any(not 0 < x < prime for x in xs):
        raise CryptoError("secret sharing: shares must have distinct non-zero indices")
    secret = 0
    for j, (xj, yj) in enumerate(shares):
        num, den = 1, 1
        for m, (xm, _) in enumerate(shares):
            if m != j:
                num = num * xm % prime
                den = den * (xm - xj) % prime
        secret = (secret + yj * num * pow(den, -1, prime)) % prime
    return secret


def to_bytes(value: int) -> bytes:
    """A field element as :data:`SHARE_BYTES` big-endian bytes."""
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    """Inverse of :func:`to_bytes`; refuses a value outside the field."""
    if len(data) != SHARE_BYTES:
        raise CryptoError("secret sharing: a share has the wrong length")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise CryptoError("secret sharing: a share is outside the field")
    return value
