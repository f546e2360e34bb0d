"""``secagg+he``: SecAgg+ masks modulo the BFV plain modulus, under packed BFV encryption.

A site quantizes and packs its update exactly as the packed-BFV codec does (same clip,
stochastic rounding, lanes of ``L = b + ceil(log2 max_sites)`` bits, ``floor((t_bits - 1) /
L)`` lanes per slot, the ``(examples, 1)`` trailer), so the plaintext sum of up to
``max_sites`` updates never reaches t in any slot. It then adds its SecAgg+ masks to *every
slot* modulo t (self-mask and pairwise masks, :meth:`SiteSession.mask_mod`; uniform modulo t
by rejection sampling, :func:`~fedinfra.crypto.secagg.prg.expand_mod`), encrypts and signs.

* The coordinator adds ciphertexts (:class:`~fedinfra.crypto.EncryptedSum`) and learns
  neither an update nor the sum (it has no HE key).
* A site holding the HE key that colludes with the coordinator decrypts single updates but
  sees ``x + PRG(b) + sum +-PRG(s_uv) mod t``: uniform slots while any pairwise mask with
  another honest survivor remains (Bonawitz et al., CCS 2017, theorem 6.3; the same bound
  as ``secagg``, of ``max_colluders`` sites).
* The unmasking material (the survivors' shares, the signed roster, the survivor list with
  its signatures, the commitments) travels with the aggregate (:func:`bundle`). Every site
  decrypts, checks the signatures against its own kit's directory, rebuilds the self-mask
  seeds of survivors and the mask keys of dropped sites from ``t`` shares
  (:func:`~fedinfra.crypto.secagg.protocol.recover_masks`), removes the masks modulo t and
  only then decodes (:func:`open_masked`). The masks cancel exactly, so the decoded sum is
  the plaintext integer sum.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedinfra.crypto.codec import open_sum, seal_update
from fedinfra.crypto.kits import SiteKeys
from fedinfra.crypto.secagg import prg
from fedinfra.crypto.secagg.plan import SecAggPlan
from fedinfra.crypto.secagg.protocol import (
    MOD_LABEL,
    Roster,
    SiteSession,
    recover_masks,
    verify_roster,
    verify_survivors,
)
from fedinfra.errors import CryptoError
from fedinfra.types import FloatVector

#: First bytes of an aggregate bundle (aggregate ciphertext + unmasking material).
MAGIC = b"fedinfra-secagg-he/1\n"
#: Bound on the material's JSON (shares of up to 10,000 sites' neighbourhoods stay far below).
MAX_MATERIAL_BYTES = 64 << 20


@dataclass(frozen=True)
class UnmaskMaterial:
    """What every site needs to remove the masks from a decrypted ``secagg+he`` sum."""

    sampled: int
    roster: Roster
    u2: tuple[str, ...]
    u3: tuple[str, ...]
    commitments: Mapping[str, bytes]
    signatures: Mapping[str, bytes]
    responses: Mapping[str, Mapping[str, tuple[str, bytes]]]

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, hex bytes)."""
        doc = {
            "sampled": self.sampled,
            "roster": self.roster.to_json(),
            "u2": list(self.u2),
            "u3": list(self.u3),
            "commitments": {k: v.hex() for k, v in self.commitments.items()},
            "signatures": {k: v.hex() for k, v in self.signatures.items()},
            "responses": {
                holder: {owner: [kind, share.hex()] for owner, (kind, share) in shares.items()}
                for holder, shares in self.responses.items()
            },
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> UnmaskMaterial:
        """Inverse of :meth:`to_json`; malformed material raises :class:`CryptoError`."""
        try:
            d = json.loads(data)
            responses: dict[str, dict[str, tuple[str, bytes]]] = {}
            for holder, shares in d["responses"].items():
                entry: dict[str, tuple[str, bytes]] = {}
                for owner, (kind, share) in shares.items():
                    if kind not in ("b", "s"):
                        raise ValueError(kind)
                    entry[str(owner)] = (str(kind), bytes.fromhex(share))
                responses[str(holder)] = entry
            return cls(
                sampled=int(d["sampled"]),
                roster=Roster.from_json(d["roster"]),
                u2=tuple(str(x) for x in d["u2"]),
                u3=tuple(str(x) for x in d["u3"]),
                commitments={str(k): bytes.fromhex(v) for k, v in d["commitments"].items()},
                signatures={str(k): bytes.fromhex(v) for k, v in d["signatures"].items()},
                responses=responses,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CryptoError("aggregate rejected: malformed unmasking material") from exc


def bundle(aggregate: bytes, material: UnmaskMaterial) -> bytes:
    """``MAGIC | len(material) (8 bytes, big-endian) | material JSON | aggregate``."""
    doc = material.to_json()
    return MAGIC + struct.pack(">Q", len(doc)) + doc + aggregate


def unbundle(data: bytes) -> tuple[bytes, UnmaskMaterial]:
    """Inverse of :func:`bundle`; anything else raises :class:`CryptoError`."""
    head = len(MAGIC) + 8
    if len(data) < head or not data.startswith(MAGIC):
        raise CryptoError("aggregate rejected: not a secagg+he aggregate (unmasking material missing)")
    (size,) = struct.unpack(">Q", data[len(MAGIC) : head])
    if size > MAX_MATERIAL_BYTES or head + size > len(data):
        raise CryptoError("aggregate rejected: unmasking material truncated or too large")
    return data[head + size :], UnmaskMaterial.from_json(data[head : head + size])


def seal_masked(
    update: Any,
    num_examples: int,
    keys: SiteKeys,
    session: SiteSession,
    p: SecAggPlan,
    *,
    u2: Sequence[str],
    shares_for_me: Mapping[str, bytes],
    run_id: str,
    round_id: int,
    rng: np.random.Generator | None = None,
) -> bytes:
    """Quantize and pack like BFV, mask every slot modulo t, encrypt and sign (the site's reply)."""

    def mask(rows: npt.NDArray[np.uint64], t: int) -> None:
        flat = rows.reshape(-1)  # a view: rows are contiguous
        session.mask_mod(p, flat, t, u2=u2, shares_for_me=shares_for_me)

    return seal_update(update, num_examples, keys, run_id=run_id, round_id=round_id, rng=rng, mask=mask)


def unmask_rows(
    rows: npt.NDArray[np.uint64],
    t: int,
    contributors: Sequence[str],
    material: UnmaskMaterial,
    identities: Mapping[str, bytes],
    plan_of: Callable[[int, int], SecAggPlan],
    *,
    run_id: str,
    round_id: int,
) -> None:
    """Remove every mask from decrypted slot ``rows`` in place (modulo ``t``), after checking.

    Checked first, each against this site's own kit (``identities``) and the job's bounds
    (``plan_of(sampled, roster size)``): every roster key is signed by its site's pinned
    identity; at least ``t`` survivors signed the survivor list ``u3``; the aggregate's
    contributors are exactly ``u3``; ``u3`` holds at least ``max(t, min_contributors)``
    sites; every rebuilt secret matches its commitment or public key. Any failure raises
    :class:`CryptoError` and nothing is decoded.
    """
    m = material
    verify_roster(m.roster, identities, run_id=run_id, round_id=round_id)
    p = plan_of(m.sampled, len(m.roster.entries))
    if sorted(contributors) != sorted(set(m.u3)) or len(set(m.u3)) != len(m.u3):
        raise CryptoError("aggregate rejected: its contributors are not the survivor list the sites signed")
    verify_survivors(m.roster, m.u3, m.signatures, identities, run_id=run_id, round_id=round_id, need=p.t)
    corrections = recover_masks(
        p,
        m.roster,
        run_id=run_id,
        round_id=round_id,
        u2=m.u2,
        u3=m.u3,
        commitments=m.commitments,
        responses=m.responses,
    )
    flat = rows.reshape(-1)
    prg.apply_masks_mod(flat, t, [(seed, label + MOD_LABEL, sub) for seed, label, sub in corrections])


def open_masked(
    data: bytes,
    keys: SiteKeys,
    identities: Mapping[str, bytes],
    plan_of: Callable[[int, int], SecAggPlan],
    *,
    run_id: str,
    round_id: int,
) -> tuple[FloatVector, int]:
    """Decrypt a ``secagg+he`` aggregate bundle, unmask it (:func:`unmask_rows`), decode it."""
    aggregate, material = unbundle(data)

    def unmask(rows: npt.NDArray[np.uint64], t: int, contributors: tuple[str, ...]) -> None:
        unmask_rows(rows, t, contributors, material, identities, plan_of, run_id=run_id, round_id=round_id)

    return open_sum(aggregate, keys, run_id=run_id, round_id=round_id, unmask=unmask)


__all__ = ["MAGIC", "UnmaskMaterial", "bundle", "open_masked", "seal_masked", "unbundle", "unmask_rows"]
