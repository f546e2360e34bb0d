"""SecAgg / SecAgg+ in four stages, as pure state machines (no transport).

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017 (figure 4), with the neighbour graph of Bell et al., CCS 2020:

1. **advertise** - each site makes two X25519 key pairs: ``c`` for the share channel, ``s``
   for masks, and a 32-byte self-mask seed ``b`` (OS CSPRNG); it sends the public keys,
   signed with its long-term Ed25519 identity key (the one the key ceremony pinned).
2. **share** - given the roster of public keys, a site first checks every entry's signature
   against the consortium's pinned identity keys (:func:`verify_roster`: a coordinator
   cannot swap a site's keys for its own, nor add a sybil site - Bonawitz et al., CCS 2017,
   section 6.2, the actively secure variant), then Shamir-shares ``b`` and ``s^SK``
   t-of-(k+1) among its neighbourhood (itself included) and seals each share to its holder
   (X25519 + HKDF + ChaCha20-Poly1305); it also commits to ``b`` (SHA-256) so the
   coordinator can check a reconstruction.
3. **mask** - ``y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2} ±PRG(s_uv)  (mod 2^bits)`` with
   ``+`` when ``u < v``: the pairwise masks cancel in the sum over surviving pairs.
4. **consistency** - told the survivors ``U3``, each survivor signs ``U3`` (with the run,
   round and roster digest) once per round; **unmask** - shown ``U3`` with at least ``t``
   valid signatures of members of ``U3`` over that same list, each survivor reveals, for
   every neighbour ``v``, its share of ``b_v`` if ``v`` survived and of ``s_v^SK`` if
   ``v`` dropped - never both for one ``v`` - and refuses outright when ``U3`` holds
   fewer than ``max(t, min_contributors)`` sites or is not a subset of ``U2``.

The coordinator (:class:`Unmasker`) adds the masked inputs modulo ``2^bits``, rebuilds
``b_u`` of survivors and ``s_v^SK`` of dropped sites from ``t`` shares
(:func:`recover_masks`), removes their masks and gets the exact integer sum; too few
shares -> :class:`SecAggAbandoned`, nothing released. Under ``secagg+he`` the same masks
are drawn modulo the BFV plain modulus (:meth:`SiteSession.mask_mod`) and every site
removes them after decrypting (:mod:`fedinfra.crypto.secagg.he`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedinfra.crypto import _sign
from fedinfra.crypto.secagg import _primitives, prg, shamir
from fedinfra.crypto.secagg.plan import SecAggPlan, graph_seed, neighbours
from fedinfra.errors import CryptoError

U64 = npt.NDArray[np.uint64]
#: Label suffix of masks drawn modulo a prime (``secagg+he``): never the stream of a 2^bits mask.
MOD_LABEL = "\x00mod"
#: A masked vector is split into segments, each with its own modulus 2^bits.
Segments = list[U64]


class SecAggAbandoned(CryptoError):
    """The round cannot be unmasked (too few survivors or shares): nothing is released."""


@dataclass(frozen=True)
class RosterEntry:
    """One site's public keys for a round, and its identity signature over them."""

    name: str
    c_pk: bytes
    s_pk: bytes
    sig: bytes = b""

    @property
    def keys(self) -> tuple[str, bytes, bytes]:
        """Name and the two public keys (what the signature covers with run and round)."""
        return self.name, self.c_pk, self.s_pk


@dataclass(frozen=True)
class Roster:
    """The sites of a round, sorted by name; index i is Shamir x-coordinate i + 1."""

    entries: tuple[RosterEntry, ...]

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        if names != sorted(set(names)):
            raise CryptoError("secure aggregation: roster names must be unique and sorted")
        keys = [e.c_pk for e in self.entries] + [e.s_pk for e in self.entries]
        if len(set(keys)) != len(keys) or any(len(k) != _primitives.KEY_BYTES for k in keys):
            raise CryptoError("secure aggregation: roster keys must be distinct 32-byte X25519 keys")

    def index(self, name: str) -> int:
        """0-based index of ``name``; :class:`CryptoError` if absent."""
        for i, e in enumerate(self.entries):
            if e.name == name:
                return i
        raise CryptoError(f"secure aggregation: site {name!r} is not in the round's roster")

    @property
    def names(self) -> list[str]:
        """Site names in roster order."""
        return [e.name for e in self.entries]

    def digest(self) -> bytes:
        """SHA-256 of the roster (names and keys), binding the graph and the shares to it."""
        h = hashlib.sha256(b"fedinfra/secagg/v1/roster\x00")
        for e in self.entries:
            h.update(e.name.encode() + b"\x00" + e.c_pk + e.s_pk)
        return h.digest()

    def to_json(self) -> list[list[str]]:
        """JSON form: ``[[name, c_pk hex, s_pk hex, signature hex], ...]``."""
        return [[e.name, e.c_pk.hex(), e.s_pk.hex(), e.sig.hex()] for e in self.entries]

    @classmethod
    def from_json(cls, data: object) -> Roster:
        """Parse :meth:`to_json`; malformed input raises :class:`CryptoError`."""
        try:
            assert isinstance(data, list)
            entries = tuple(
                RosterEntry(str(n), bytes.fromhex(c), bytes.fromhex(s), bytes.fromhex(sig)) for n, c, s, sig in data
            )
        except (AssertionError, ValueError, TypeError) as exc:
            raise CryptoError("secure aggregation: malformed roster") from exc
        return cls(entries)


def _ctx(run_id: str, round_id: int) -> str:
    return f"{run_id}\x00{round_id}"


def _pair_label(run_id: str, round_id: int, a: str, b: str) -> str:
    lo, hi = sorted((a, b))
    return f"pair\x00{_ctx(run_id, round_id)}\x00{lo}\x00{hi}"


def _self_label(run_id: str, round_id: int, name: str) -> str:
    return f"self\x00{_ctx(run_id, round_id)}\x00{name}"


def _share_aad(run_id: str, round_id: int, sender: str, holder: str) -> bytes:
    return f"fedinfra/secagg/v1/share\x00{_ctx(run_id, round_id)}\x00{sender}\x00{holder}".encode()


def pair_seed(private: bytes, peer_public: bytes) -> bytes:
    """The pairwise seed ``s_uv``: X25519 agreement of ``s_u^SK`` with ``s_v^PK``."""
    return _primitives.agree(private, peer_public)


def _keys_digest(run_id: str, round_id: int, name: str, c_pk: bytes, s_pk: bytes) -> bytes:
    return hashlib.sha256(
        b"fedinfra/secagg/v1/keys\x00" + f"{_ctx(run_id, round_id)}\x00{name}\x00".encode() + c_pk + s_pk
    ).digest()


def sign_entry(entry: RosterEntry, signing_key: bytes, *, run_id: str, round_id: int) -> RosterEntry:
    """``entry`` signed with the site's Ed25519 identity key (RFC 8032) for this run and round.

    The signature covers the site's name, both public keys, the run and the round, so it
    cannot be moved to another name, key pair or round.
    """
    digest = _keys_digest(run_id, round_id, entry.name, entry.c_pk, entry.s_pk)
    return RosterEntry(entry.name, entry.c_pk, entry.s_pk, _sign.sign(signing_key, digest))


def verify_roster(roster: Roster, identities: Mapping[str, bytes], *, run_id: str, round_id: int) -> None:
    """Refuse a roster holding a key not signed by the pinned identity of the site it names.

    ``identities`` (site -> Ed25519 public key) is the consortium's directory from the site's
    own kit, pinned by the key ceremony - never from the coordinator. A name outside it is a
    sybil site; a signature that fails is a swapped key (a coordinator in the middle).
    Bonawitz et al., CCS 2017, section 6.2: with a PKI for the users' signing keys the server
    can neither impersonate users nor simulate extra ones.
    """
    for e in roster.entries:
        public = identities.get(e.name)
        if public is None:
            raise CryptoError(
                f"secure aggregation: roster site {e.name!r} has no pinned identity key in this site's kit "
                "(sybil site); round refused"
            )
        try:
            _sign.verify(public, _keys_digest(run_id, round_id, e.name, e.c_pk, e.s_pk), e.sig)
        except CryptoError:
            raise CryptoError(
                f"secure aggregation: the keys advertised for {e.name!r} are not signed by its pinned identity key "
                "(swapped keys); round refused"
            ) from None


def _survivors_digest(run_id: str, round_id: int, roster: Roster, u3: Sequence[str]) -> bytes:
    listing = "\x00".join(sorted(set(u3))).encode()
    return hashlib.sha256(
        b"fedinfra/secagg/v1/survivors\x00" + f"{_ctx(run_id, round_id)}\x00".encode() + roster.digest() + listing
    ).digest()


def verify_survivors(
    roster: Roster,
    u3: Sequence[str],
    signatures: Mapping[str, bytes],
    identities: Mapping[str, bytes],
    *,
    run_id: str,
    round_id: int,
    need: int,
) -> None:
    """Refuse unless at least ``need`` members of ``u3`` signed this very ``u3`` (and roster).

    The consistency check of SecAgg (Bonawitz et al., CCS 2017, figure 4, round 3): honest
    sites sign one survivor list per round, so a coordinator cannot show "v dropped" to some
    holders and "v survived" to others and collect both of v's secrets.
    """
    digest = _survivors_digest(run_id, round_id, roster, u3)
    valid = 0
    for signer, sig in signatures.items():
        public = identities.get(signer)
        if signer not in u3 or public is None:
            continue
        try:
            _sign.verify(public, digest, sig)
        except CryptoError:
            continue
        valid += 1
    if valid < need:
        raise SecAggAbandoned(
            f"secure aggregation: {valid} valid survivor signatures over this survivor list, fewer than {need}; "
            "refused (the coordinator may be showing different lists to different sites)"
        )


def _check_segments(segments: Sequence[U64], bits: Sequence[int]) -> None:
    if len(segments) != len(bits):
        raise CryptoError("secure aggregation: segment count does not match the widths")
    for seg, b in zip(segments, bits, strict=True):
        if seg.dtype != np.uint64 or (b < 64 and seg.size and int(seg.max()) >> b):
            raise CryptoError("secure aggregation: a value exceeds its segment's width")


def add_masks(segments: Segments, bits: Sequence[int], *, seeds: Sequence[tuple[bytes, str, bool]]) -> None:
    """Add (or subtract) ``PRG(seed, label + segment)`` to every segment, in place."""
    for i, (seg, b) in enumerate(zip(segments, bits, strict=True)):
        prg.apply_masks(seg, b, [(seed, f"{label}\x00{i}", subtract) for seed, label, subtract in seeds])


@dataclass
class SiteSession:
    """One site's secrets and view of one round (kept at the site between stages)."""

    name: str
    run_id: str
    round_id: int
    c_sk: bytes
    s_sk: bytes
    b_seed: bytes
    roster: Roster | None = None
    u2: tuple[str, ...] = ()
    received: dict[str, bytes] = field(default_factory=dict)
    unmasked: bool = False
    #: Sites the coordinator said it sampled (>= roster size; only raises the threshold).
    sampled: int = 0
    #: The one survivor list this site signed this round (the consistency check).
    u3_signed: tuple[str, ...] = ()

    @classmethod
    def start(cls, name: str, *, run_id: str, round_id: int) -> SiteSession:
        """Stage 1 keys: fresh X25519 pairs and self-mask seed from the OS CSPRNG."""
        c_sk, _ = _primitives.new_keypair()
        s_sk, _ = _primitives.new_keypair()
        return cls(name, run_id, round_id, c_sk, s_sk, secrets.token_bytes(32))

    def advertise(self, signing_key: bytes = b"") -> RosterEntry:
        """Stage 1: the public keys this site sends, signed with ``signing_key`` (its identity)."""
        entry = RosterEntry(self.name, _primitives.public_of(self.c_sk), _primitives.public_of(self.s_sk))
        if signing_key:
            entry = sign_entry(entry, signing_key, run_id=self.run_id, round_id=self.round_id)
        return entry

    def _neighbourhood(self, p: SecAggPlan, roster: Roster) -> list[int]:
        me = roster.index(self.name)
        nb = neighbours(p, graph_seed(self.run_id, self.round_id, roster.digest()))[me]
        return sorted(nb | {me})

    def share(
        self, p: SecAggPlan, roster: Roster, identities: Mapping[str, bytes]
    ) -> tuple[dict[str, bytes], bytes]:
        """Stage 2: sealed shares of ``b`` and ``s^SK`` for each holder, and the commitment to ``b``.

        Every roster entry must be signed by the pinned identity key of the site it names
        (``identities``, from the site's kit): :func:`verify_roster`.
        """
        if roster.entries[roster.index(self.name)].keys != self.advertise().keys:
            raise CryptoError("secure aggregation: the roster does not carry this site's keys")
        if len(roster.entries) != p.n:
            raise CryptoError("secure aggregation: roster size differs from the plan")
        verify_roster(roster, identities, run_id=self.run_id, round_id=self.round_id)
        self.roster = roster
        holders = self._neighbourhood(p, roster)
        count = len(roster.entries)
        b_shares = shamir.split(int.from_bytes(self.b_seed, "big"), threshold=p.t, count=count)
        s_shares = shamir.split(int.from_bytes(self.s_sk, "big"), threshold=p.t, count=count)
        out: dict[str, bytes] = {}
        for j in holders:
            holder = roster.entries[j]
            plain = shamir.to_bytes(b_shares[j][1]) + shamir.to_bytes(s_shares[j][1])
            aad = _share_aad(self.run_id, self.round_id, self.name, holder.name)
            key = _primitives.hkdf(_primitives.agree(self.c_sk, holder.c_pk), aad)
            out[holder.name] = _primitives.seal(key, plain, aad)
        return out, commitment(self.b_seed)

    def mask(
        self,
        p: SecAggPlan,
        segments: Segments,
        bits: Sequence[int],
        *,
        u2: Sequence[str],
        shares_for_me: Mapping[str, bytes],
    ) -> Segments:
        """Stage 3: mask ``segments`` (in place, modulo ``2^bits``) against neighbours that shared (``u2``)."""
        _check_segments(segments, bits)
        add_masks(segments, bits, seeds=self._mask_seeds(p, u2, shares_for_me))
        return segments

    def mask_mod(
        self,
        p: SecAggPlan,
        values: U64,
        modulus: int,
        *,
        u2: Sequence[str],
        shares_for_me: Mapping[str, bytes],
    ) -> U64:
        """Stage 3 modulo ``modulus`` (the BFV plain modulus t, ``secagg+he``): mask ``values`` in place."""
        if values.dtype != np.uint64 or (values.size and int(values.max()) >= modulus):
            raise CryptoError("secure aggregation: a value exceeds the plain modulus")
        seeds = self._mask_seeds(p, u2, shares_for_me)
        prg.apply_masks_mod(values, modulus, [(s, label + MOD_LABEL, sub) for s, label, sub in seeds])
        return values

    def check_mask_request(self, p: SecAggPlan, u2: Sequence[str], shares_for_me: Mapping[str, bytes]) -> set[str]:
        """Refuse a stage-3 request this site must not mask for; returns its neighbours. Changes nothing.

        Shared before share, ``u2`` naming this site and only roster members, at least
        ``max(t, min_contributors)`` sites in ``u2`` (fewer would let the coordinator learn
        too much from the unmasking: Bonawitz et al., CCS 2017, figure 4, round 2), and the
        shares received exactly from the sharing neighbours. None of this depends on the
        input, so a site checks it before it trains or charges its privacy ledger.
        """
        if self.roster is None:
            raise CryptoError("secure aggregation: mask before share")
        roster = self.roster
        if self.name not in u2 or not set(u2) <= set(roster.names):
            raise CryptoError("secure aggregation: the list of sharing sites is inconsistent with the roster")
        if len(set(u2)) < max(p.t, p.min_contributors):
            raise SecAggAbandoned(
                f"secure aggregation: only {len(set(u2))} sites shared keys, fewer than "
                f"max(t={p.t}, min_contributors={p.min_contributors})"
            )
        holders = {roster.entries[j].name for j in self._neighbourhood(p, roster)}
        if set(shares_for_me) != holders & set(u2):
            raise CryptoError("secure aggregation: shares received do not match the sharing neighbours")
        return holders

    def _mask_seeds(
        self, p: SecAggPlan, u2: Sequence[str], shares_for_me: Mapping[str, bytes]
    ) -> list[tuple[bytes, str, bool]]:
        holders = self.check_mask_request(p, u2, shares_for_me)
        roster = self.roster
        assert roster is not None  # checked above
        self.u2 = tuple(sorted(set(u2)))
        self.received = dict(shares_for_me)
        seeds = [(self.b_seed, _self_label(self.run_id, self.round_id, self.name), False)]
        for v in sorted(holders & set(u2) - {self.name}):
            peer = roster.entries[roster.index(v)]
            seeds.append(
                (pair_seed(self.s_sk, peer.s_pk), _pair_label(self.run_id, self.round_id, self.name, v), v < self.name)
            )
        return seeds

    def _check_u3(self, p: SecAggPlan, u3: Sequence[str]) -> None:
        if self.roster is None or not self.u2:
            raise CryptoError("secure aggregation: unmask before mask")
        survivors = set(u3)
        if len(survivors) != len(u3) or not survivors <= set(self.u2) or self.name not in survivors:
            raise CryptoError("secure aggregation: the survivor list is inconsistent with this round")
        floor = max(p.t, p.min_contributors)
        if len(survivors) < floor:
            raise SecAggAbandoned(
                f"secure aggregation: {len(survivors)} survivors, fewer than max(t={p.t}, "
                f"min_contributors={p.min_contributors}); this site refuses to unmask"
            )

    def consistency(self, p: SecAggPlan, u3: Sequence[str], signing_key: bytes) -> bytes:
        """Stage 4a: sign the survivor list ``u3`` - one list per round, never a second one."""
        self._check_u3(p, u3)
        listing = tuple(sorted(u3))
        if self.u3_signed and self.u3_signed != listing:
            raise CryptoError("secure aggregation: this site already signed another survivor list this round")
        assert self.roster is not None
        self.u3_signed = listing
        return _sign.sign(signing_key, _survivors_digest(self.run_id, self.round_id, self.roster, listing))

    def unmask(
        self,
        p: SecAggPlan,
        u3: Sequence[str],
        signatures: Mapping[str, bytes],
        identities: Mapping[str, bytes],
    ) -> dict[str, tuple[str, bytes]]:
        """Stage 4b: per neighbour, ``("b", share)`` if it survived or ``("s", share)`` if it dropped.

        Only for the survivor list this site signed, shown with at least ``t`` valid
        signatures of survivors over it (:func:`verify_survivors`); once per round.
        """
        if self.unmasked:
            raise CryptoError("secure aggregation: this site already answered the unmask request")
        self._check_u3(p, u3)
        assert self.roster is not None
        if tuple(sorted(u3)) != self.u3_signed:
            raise CryptoError("secure aggregation: unmask asked for a survivor list this site did not sign")
        verify_survivors(
            self.roster, u3, signatures, identities, run_id=self.run_id, round_id=self.round_id, need=p.t
        )
        survivors = set(u3)
        self.unmasked = True
        out: dict[str, tuple[str, bytes]] = {}
        for sender, sealed in sorted(self.received.items()):
            aad = _share_aad(self.run_id, self.round_id, sender, self.name)
            peer = self.roster.entries[self.roster.index(sender)]
            plain = _primitives.open_sealed(_primitives.hkdf(_primitives.agree(self.c_sk, peer.c_pk), aad), sealed, aad)
            half = shamir.SHARE_BYTES
            out[sender] = ("b", plain[:half]) if sender in survivors else ("s", plain[half:])
        return out

    # -- persistence between stages (the site's own state) --------------------------------------

    def to_bytes(self) -> bytes:
        """Serialize (secrets included: keep it in the site's state only)."""
        doc = {
            "name": self.name,
            "run_id": self.run_id,
            "round_id": self.round_id,
            "c_sk": self.c_sk.hex(),
            "s_sk": self.s_sk.hex(),
            "b_seed": self.b_seed.hex(),
            "roster": self.roster.to_json() if self.roster else None,
            "u2": list(self.u2),
            "received": {k: v.hex() for k, v in self.received.items()},
            "unmasked": self.unmasked,
            "sampled": self.sampled,
            "u3_signed": list(self.u3_signed),
        }
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SiteSession:
        """Inverse of :meth:`to_bytes`."""
        d = json.loads(data)
        return cls(
            d["name"],
            d["run_id"],
            int(d["round_id"]),
            bytes.fromhex(d["c_sk"]),
            bytes.fromhex(d["s_sk"]),
            bytes.fromhex(d["b_seed"]),
            Roster.from_json(d["roster"]) if d["roster"] else None,
            tuple(d["u2"]),
            {k: bytes.fromhex(v) for k, v in d["received"].items()},
            bool(d["unmasked"]),
            int(d.get("sampled", 0)),
            tuple(d.get("u3_signed", ())),
        )


def commitment(b_seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed (checked after reconstruction)."""
    return hashlib.sha256(b"fedinfra/secagg/v1/b\x00" + b_seed).digest()


class Unmasker:
    """The coordinator's side: sum masked inputs, then remove the masks from survivors' shares."""

    def __init__(
        self,
        p: SecAggPlan,
        roster: Roster,
        *,
        run_id: str,
        round_id: int,
        u2: Sequence[str],
        commitments: Mapping[str, bytes],
        sizes: Sequence[int],
        bits: Sequence[int],
    ) -> None:
        self.plan, self.roster, self.run_id, self.round_id = p, roster, run_id, round_id
        self.u2 = tuple(sorted(set(u2)))
        self.commitments = dict(commitments)
        self.bits = list(bits)
        self.sizes = list(sizes)
        # Segments of at most 32 bits are summed in uint32 (wrap-around is arithmetic modulo
        # 2^32, a multiple of 2^bits) and reduced once, by the unmasking in finish(); wider ones in uint64.
        self.sum: list[npt.NDArray[Any]] = [
            np.zeros(n, dtype=np.uint32 if b <= 32 else np.uint64) for n, b in zip(sizes, bits, strict=True)
        ]
        self.u3: list[str] = []
        self._graph = neighbours(p, graph_seed(run_id, round_id, roster.digest()))
        self._finished = False

    def add(self, site: str, segments: list[npt.NDArray[Any]]) -> None:
        """Fold one masked input in; checked completely first (a rejected one leaves no trace).

        Values are read modulo ``2^bits``: every residue is a valid masked value (the masks
        are uniform), so higher bits carry nothing and are dropped when the sum is reduced.
        """
        if self._finished:
            raise CryptoError("secure aggregation: this sum was already unmasked; no input is added after it")
        if site not in self.u2 or site in self.u3:
            raise CryptoError(f"secure aggregation: site {site!r} did not share keys or already sent its input")
        if len(segments) != len(self.sizes) or [s.shape[0] for s in segments] != self.sizes:
            raise CryptoError("secure aggregation: masked input has the wrong length")
        if any(s.dtype.kind != "u" for s in segments):
            raise CryptoError("secure aggregation: masked input is not unsigned integers")
        for acc, seg in zip(self.sum, segments, strict=True):
            np.add(acc, seg if seg.dtype == acc.dtype else seg.astype(acc.dtype), out=acc)
        self.u3.append(site)

    def holders(self, site: str) -> set[str]:
        """Names holding shares of ``site``'s secrets (its neighbourhood)."""
        i = self.roster.index(site)
        return {self.roster.entries[j].name for j in self._graph[i] | {i}}

    def finish(self, responses: Mapping[str, Mapping[str, tuple[str, bytes]]]) -> list[npt.NDArray[Any]]:
        """Remove every mask using the survivors' ``responses``; :class:`SecAggAbandoned` if short.

        The running sums themselves are unmasked in place (:func:`add_masks` reduces them
        modulo ``2^bits`` as it removes the masks) and handed over, in the
        dtype they were summed in (uint32 for segments of up to 32 bits, else uint64; every
        value below ``2^bits``): the old uint64 copy of a 10M-value sum was 80 MB at the
        coordinator's peak (issue 17). An :class:`Unmasker` therefore finishes once; if the
        shares fall short (:class:`SecAggAbandoned`) nothing has changed and it may be retried.
        """
        if self._finished:
            raise CryptoError("secure aggregation: this sum was already unmasked")
        corrections = recover_masks(
            self.plan,
            self.roster,
            run_id=self.run_id,
            round_id=self.round_id,
            u2=self.u2,
            u3=self.u3,
            commitments=self.commitments,
            responses=responses,
        )
        self._finished = True
        out, self.sum = self.sum, []  # the caller owns them now
        add_masks(out, self.bits, seeds=corrections)  # also reduces every sum modulo 2^bits
        return out


def recover_masks(
    p: SecAggPlan,
    roster: Roster,
    *,
    run_id: str,
    round_id: int,
    u2: Sequence[str],
    u3: Sequence[str],
    commitments: Mapping[str, bytes],
    responses: Mapping[str, Mapping[str, tuple[str, bytes]]],
) -> list[tuple[bytes, str, bool]]:
    """The ``(seed, label, subtract)`` triples that remove every mask left in the survivors' sum.

    Rebuilds ``b_u`` of each survivor (checked against its commitment) and ``s_v^SK`` of each
    site in ``u2`` but not ``u3`` (checked against its advertised key) from ``t`` shares of
    its holders; used by the coordinator (``secagg``, modulo ``2^bits``) and by every site
    after decryption (``secagg+he``, modulo t). Too few survivors or shares, or a rebuilt
    secret that does not match -> :class:`SecAggAbandoned`: nothing is released.
    """
    survivors = set(u3)
    if len(survivors) < max(p.t, p.min_contributors):
        raise SecAggAbandoned(
            f"secure aggregation: {len(survivors)} survivors, fewer than "
            f"max(t={p.t}, min_contributors={p.min_contributors}); round abandoned"
        )
    if not survivors <= set(u2) or not set(u2) <= set(roster.names):
        raise SecAggAbandoned("secure aggregation: the survivor list is inconsistent with the roster")
    graph = neighbours(p, graph_seed(run_id, round_id, roster.digest()))

    def holders(site: str) -> set[str]:
        i = roster.index(site)
        return {roster.entries[j].name for j in graph[i] | {i}}

    def rebuild(owner: str, kind: str) -> bytes:
        shares: list[shamir.Share] = []
        for holder in sorted(holders(owner) & set(responses)):
            got = responses[holder].get(owner)
            if got is None or got[0] != kind:
                continue
            try:
                shares.append((roster.index(holder) + 1, shamir.from_bytes(got[1])))
            except CryptoError:
                continue
            if len(shares) == p.t:
                break
        if len(shares) < p.t:
            raise SecAggAbandoned(
                f"secure aggregation: {len(shares)} shares of {owner!r}, fewer than t={p.t}; round abandoned"
            )
        value = shamir.combine(shares)
        if value >> 256:
            raise SecAggAbandoned(f"secure aggregation: shares of {owner!r} are inconsistent")
        return value.to_bytes(32, "big")

    corrections: list[tuple[bytes, str, bool]] = []
    for u in sorted(survivors):
        b = rebuild(u, "b")
        if not secrets.compare_digest(commitment(b), commitments.get(u, b"")):
            raise SecAggAbandoned(f"secure aggregation: the self-mask of {u!r} does not match its commitment")
        corrections.append((b, _self_label(run_id, round_id, u), True))
    for v in sorted(set(u2) - survivors):
        s_sk = rebuild(v, "s")
        entry = roster.entries[roster.index(v)]
        if _primitives.public_of(s_sk) != entry.s_pk:
            raise SecAggAbandoned(f"secure aggregation: the mask key of dropped site {v!r} does not match its key")
        for u in sorted(holders(v) & survivors):
            peer = roster.entries[roster.index(u)]
            # u added +PRG(s_uv) if u < v, else -PRG(s_uv): undo it.
            corrections.append((pair_seed(s_sk, peer.s_pk), _pair_label(run_id, round_id, u, v), u < v))
    return corrections
