"""Zero-sum masks keyed by the consortium's shared HE key: evaluation sums under ``bfv``/``ckks``.

Under HE without SecAgg the coordinator cannot decrypt a sum, so an evaluation total cannot
travel inside the ciphertext and still reach it; and a site that decrypted a sum for it would
be a decryption oracle (the coordinator can forward one site's ciphertext, or a multiple of
it, as "the sum"). Instead each site ``u`` of a roster ``R`` adds pairwise masks to its
fixed-point sums, modulo ``2^64``::

    y_u = x_u + sum_{v in R, v > u} PRG(k_uv) - sum_{v in R, v < u} PRG(k_uv)

with ``k_uv`` derived from the shared HE secret key (which the coordinator never holds), the
sum's context (run, evaluated round, digest of the model) and the roster's digest - the
pairwise-cancelling masks of Bonawitz et al. (CCS 2017, section 3) and Ács & Castelluccia
("I have a DREAM!", IH 2011), with pair keys every key-holding site can derive. The masks
cancel only in the sum over *exactly* the roster each member was given, so the coordinator
learns the total over a whole roster of at least the contributor floor, never one site's
figures; a roster member that does not answer leaves the sum masked (nothing is released:
no dropout recovery here). Each site masks one evaluation of a model once (the caller's
rule, :mod:`fedinfra.site.evaluation`), so no label is used twice.

Trust, as for HE itself (DESIGN.md): any key-holding site colluding with the coordinator can
remove every mask; against the coordinator alone the values are uniform.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedinfra.crypto.secagg import _primitives, prg
from fedinfra.errors import CryptoError

#: Width of the masked values (the evaluation codec's 64-bit lanes).
BITS = 64
_INFO = b"fedinfra/eval-mask/v1"


def group_key(he_secret: bytes) -> bytes:
    """The evaluation mask key: HKDF-SHA256 of the shared HE secret key (RFC 5869)."""
    return _primitives.hkdf(he_secret, _INFO)


def roster_digest(roster: Sequence[str]) -> str:
    """SHA-256 of the sorted roster (names NUL-separated), hex."""
    return hashlib.sha256("\x00".join(sorted(roster)).encode()).hexdigest()


def _check_roster(roster: Sequence[str], floor: int) -> list[str]:
    names = sorted(roster)
    if len(set(names)) != len(names):
        raise CryptoError("evaluation roster names a site twice")
    if len(names) < max(2, floor):
        raise CryptoError(f"evaluation roster of {len(names)} sites, fewer than the floor {max(2, floor)}")
    return names


def mask(
    values: npt.NDArray[np.uint64], key: bytes, *, context: str, me: str, roster: Sequence[str], floor: int
) -> npt.NDArray[np.uint64]:
    """Return ``values`` masked for a sum over exactly ``roster`` (``me`` must be in it)."""
    names = _check_roster(roster, floor)
    if me not in names:
        raise CryptoError("evaluation roster does not name this site")
    digest = roster_digest(names)
    out = np.array(values, dtype=np.uint64, copy=True)
    masks = [
        (key, f"evalmask\x00{context}\x00{digest}\x00{min(me, v)}\x00{max(me, v)}", v < me) for v in names if v != me
    ]
    prg.apply_masks(out, BITS, masks)
    return out


class GroupSum:
    """The coordinator's side: add masked vectors of one roster; the total only when all are in."""

    def __init__(self, roster: Sequence[str], size: int) -> None:
        self.roster = sorted(roster)
        self.size = size
        self._acc = np.zeros(size, dtype=np.uint64)
        self._sites: set[str] = set()

    def add(self, site: str, blob: bytes) -> None:
        """Fold ``site``'s masked vector in; a stranger, a repeat or a wrong length is refused."""
        if site not in self.roster or site in self._sites:
            raise CryptoError("masked evaluation from a site outside the roster, or twice")
        if len(blob) != 8 * self.size:
            raise CryptoError(f"masked evaluation of {len(blob)} bytes, expected {8 * self.size}")
        np.add(self._acc, np.frombuffer(blob, dtype="<u8").astype(np.uint64), out=self._acc)  # modulo 2^64
        self._sites.add(site)

    def total(self) -> npt.NDArray[np.uint64] | None:
        """The unmasked total, or ``None`` unless every roster member contributed."""
        if self._sites != set(self.roster):
            return None
        return self._acc.copy()


def to_wire(values: npt.NDArray[np.uint64]) -> bytes:
    """Little-endian 64-bit values."""
    return np.ascontiguousarray(values, dtype="<u8").tobytes()


__all__ = ["BITS", "GroupSum", "group_key", "mask", "roster_digest", "to_wire"]
