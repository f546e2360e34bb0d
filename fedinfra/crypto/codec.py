"""Recipes: :func:`seal_update` (site), :class:`EncryptedSum` (coordinator), :func:`open_sum` (site).

Weighted mean without revealing weights (issue 5): a site with ``n`` examples sends
``w * x`` with ``w = n / example_cap`` and encrypts ``n`` and a count of one alongside; the
coordinator adds ciphertexts only; a site decrypts ``sum w_i x_i``, ``sum n_i`` and the number
of contributions and divides. Dropouts need nothing special: the sum covers whoever replied.

Distributed DP composes by order of operations: the privacy library clips and noises the float
update first; :func:`seal_update` then clips to the agreed bound, quantizes with unbiased
stochastic rounding and encrypts. All three are post-processing of the noised value, so the DP
guarantee is unchanged (Dwork and Roth 2014, proposition 2.1). Choose ``clip`` a few noise
standard deviations above the DP clip norm's per-coordinate range so it rarely binds; the
added error is bounded by :meth:`HEParams.mean_error_bound`.
"""

from __future__ import annotations

import io
import math
import secrets
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from fedinfra.crypto import _sign, envelope
from fedinfra.crypto._seal import REJECTED, SealContext
from fedinfra.crypto.kits import PublicParams, SiteKeys
from fedinfra.crypto.params import TRAILER_SLOTS, HEParams
from fedinfra.crypto.quantize import (
    dequantize_sum,
    flatten,
    pack_lanes,
    quant_max,
    quantize,
    secure_generator,
    unpack_lanes,
)
from fedinfra.errors import ConfigError, CryptoError
from fedinfra.types import FloatVector

OverClip = Literal["clip", "reject"]


@lru_cache(maxsize=8)
def _context(scheme: str, plain_bits: int) -> SealContext:
    return SealContext(scheme, plain_bits if scheme == "bfv" else None)


def context_for(params: HEParams) -> SealContext:
    """Return the (cached) SEAL context of ``params``; it holds no key."""
    return _context(params.scheme, params.spec.plain_bits)


# -- scheme codecs (registry by name) -------------------------------------------------------------


class SchemeCodec(Protocol):
    """Turns a weighted float update into slot rows and a decrypted sum back into floats."""

    def encode(
        self, params: HEParams, values: npt.NDArray[np.float64], weight: float, rng: np.random.Generator
    ) -> npt.NDArray[Any]:
        """Return ``(ciphertexts, slots)`` rows for one update (trailer included)."""
        ...

    def decode(self, params: HEParams, rows: npt.NDArray[Any], n_values: int) -> tuple[Any, float, int]:
        """Return ``(sum of w*x, sum of n, contributions)``; raise on inconsistent plaintext."""
        ...


def _rows(params: HEParams, slots: npt.NDArray[Any], n_values: int) -> npt.NDArray[Any]:
    total = params.ciphertext_count(n_values) * params.slots
    out = np.zeros(total, dtype=slots.dtype)
    out[: slots.shape[0]] = slots
    return out.reshape(-1, params.slots)


class _BFV:
    def encode(
        self, params: HEParams, values: npt.NDArray[np.float64], weight: float, rng: np.random.Generator
    ) -> npt.NDArray[Any]:
        s = params.spec
        q = quantize(values, clip=s.clip, quant_bits=s.quant_bits, rng=rng, weight=weight / s.example_cap)
        slots = pack_lanes(q, lane_bits=s.lane_bits, lanes=s.lanes_per_slot)
        trailer = np.array([int(weight), 1], dtype=np.uint64)
        return _rows(params, np.concatenate([slots, trailer]), values.shape[0])

    def decode(self, params: HEParams, rows: npt.NDArray[Any], n_values: int) -> tuple[Any, float, int]:
        s = params.spec
        flat = rows.reshape(-1)
        data = params.data_slots(n_values)
        total, sites = int(flat[data]), int(flat[data + 1])
        if not 1 <= sites <= s.max_sites or not 1 <= total <= sites * s.example_cap:
            raise CryptoError(REJECTED)
        if np.any(flat[data + TRAILER_SLOTS :]) or np.any(flat[:data] >> np.uint64(s.lane_bits * s.lanes_per_slot)):
            raise CryptoError(REJECTED)
        lanes = unpack_lanes(flat[:data], lane_bits=s.lane_bits, lanes=s.lanes_per_slot, count=n_values)
        if lanes.size and float(lanes.max()) > sites * 2 * quant_max(s.quant_bits):
            raise CryptoError(REJECTED)
        return dequantize_sum(lanes, sites=sites, clip=s.clip, quant_bits=s.quant_bits), float(total), sites


class _CKKS:
    def encode(
        self, params: HEParams, values: npt.NDArray[np.float64], weight: float, rng: np.random.Generator
    ) -> npt.NDArray[Any]:
        y = values * (weight / params.spec.example_cap)
        if y.shape[0] % 2:
            y = np.concatenate([y, np.zeros(1)])
        slots = y[0::2] + 1j * y[1::2]
        trailer = np.array([weight / params.spec.example_cap + 1j, 0], dtype=np.complex128)
        return _rows(params, np.concatenate([slots, trailer]), values.shape[0])

    def decode(self, params: HEParams, rows: npt.NDArray[Any], n_values: int) -> tuple[Any, float, int]:
        flat = rows.reshape(-1)
        data = params.data_slots(n_values)
        t = flat[data]
        total = round(t.real * params.spec.example_cap)
        sites = round(t.imag)
        if not 1 <= sites <= params.spec.max_sites or not 1 <= total <= sites * params.spec.example_cap:
            raise CryptoError(REJECTED)
        inter = np.empty(2 * data, dtype=np.float64)
        inter[0::2] = flat[:data].real
        inter[1::2] = flat[:data].imag
        return inter[:n_values], float(total), sites


#: Scheme codecs by ``secure_aggregation.mode``.
CODECS: dict[str, SchemeCodec] = {"bfv": _BFV(), "ckks": _CKKS()}


# -- site: encrypt --------------------------------------------------------------------------------------


def _secret_key(keys: SiteKeys) -> Any:
    if "sk" not in keys._cache:
        keys._cache["sk"] = context_for(keys.params).load_secret_key(keys.he_secret_key)
    return keys._cache["sk"]


def _check_values(values: npt.NDArray[np.float64], params: HEParams, over_clip: OverClip) -> npt.NDArray[np.float64]:
    if values.shape[0] == 0:
        raise ConfigError("update is empty; nothing to encrypt")
    peak = max(float(values.max()), -float(values.min()))  # NaN propagates, two passes, no copy
    if not math.isfinite(peak):
        raise ConfigError("update contains NaN or infinity; check the training step")
    if params.scheme == "ckks":
        if peak > params.spec.ckks_max_abs:
            raise ConfigError(
                f"update value {peak:.3g} exceeds secure_aggregation.ckks_max_abs="
                f"{params.spec.ckks_max_abs:g}; CKKS does not clip: raise the bound or clip first"
            )
        return values
    if peak > params.spec.clip:
        if over_clip == "reject":
            raise ConfigError(
                f"update value {peak:.3g} exceeds secure_aggregation.clip={params.spec.clip:g}; "
                "clip the update or raise the agreed bound"
            )
        values = np.clip(values, -params.spec.clip, params.spec.clip)
    return values


def seal_update(
    update: Any,
    num_examples: int,
    keys: SiteKeys,
    *,
    run_id: str,
    round_id: int,
    rng: np.random.Generator | None = None,
    over_clip: OverClip = "clip",
    mask: Callable[[npt.NDArray[np.uint64], int], None] | None = None,
) -> bytes:
    """Encrypt one site's update for ``run_id``/``round_id`` and sign it.

    ``update`` is a flat float vector or a dict of named arrays (flattened in insertion
    order); values above the agreed ``clip`` are clipped (``over_clip="clip"``) or refused
    (``"reject"``). ``rng`` drives stochastic rounding; by default a generator seeded from the
    OS CSPRNG (inject one only in tests). ``mask(rows, t)`` (``secagg+he``) masks the BFV slot
    rows in place modulo the plain modulus t before they are encrypted.
    """
    params = keys.params
    s = params.spec
    if not isinstance(num_examples, int | np.integer) or not 1 <= int(num_examples) <= s.example_cap:
        raise ConfigError(
            f"num_examples={num_examples} must be an integer in [1, secure_aggregation.example_cap={s.example_cap}]"
        )
    if round_id < 0 or round_id >= 2**64:
        raise ConfigError(f"round_id={round_id} must be a non-negative 64-bit integer")
    values, layout = flatten(update)
    values = _check_values(values, params, over_clip)
    rows = CODECS[params.scheme].encode(params, values, float(int(num_examples)), rng or secure_generator())
    ctx = context_for(params)
    if mask is not None:
        if params.scheme != "bfv":
            raise ConfigError("masking under encryption needs BFV slots (secure_aggregation.mode = 'secagg+he')")
        mask(rows, ctx.plain_modulus)
    blobs = ctx.encrypt(_secret_key(keys), rows)
    header = envelope.Header(
        kind=envelope.KIND_UPDATE,
        scheme=params.scheme,
        param_id=params.param_id,
        run_id=run_id,
        round_id=round_id,
        n_values=values.shape[0],
        layout=envelope.layout_digest(layout),
        nonce=secrets.token_bytes(envelope.NONCE_BYTES),
        sites=(keys.site_id,),
    )
    body = envelope.encode(header, blobs)
    return body + _sign.sign(keys.signing_key, envelope.digest(envelope.KIND_UPDATE, body))


# -- coordinator: validate and add ------------------------------------------------------------------------


class EncryptedSum:
    """Streaming sum of encrypted updates of one round (memory O(model), not O(sites x model)).

    ``layout`` (the job's model: names and shapes in order) fixes the update's size and layout
    digest before any reply arrives; without it the first accepted reply sets them (kept for
    callers that sum vectors of a known size only).

    :meth:`add` refuses, with :class:`CryptoError` and without changing the sum, a reply that
    is malformed, truncated, tampered, signed by an unknown site, made under other parameters
    or another kit, meant for another run or round, a replay, or one more than ``max_sites``.
    Messages name the public bound that was crossed; checks on the ciphertext itself share one
    message. The coordinator audits each refusal as ``update.rejected``.
    """

    def __init__(
        self,
        public: PublicParams,
        *,
        run_id: str,
        round_id: int,
        layout: list[tuple[str, tuple[int, ...]]] | None = None,
    ) -> None:
        self._public = public
        self._params = public.params
        self._ctx = context_for(public.params)
        self.run_id = run_id
        self.round_id = round_id
        self._acc: list[Any] | None = None
        self._n_values = 0
        self._layout = b""
        self._fixed = layout is not None
        if layout is not None:
            # The layout comes from the job's model, never from the first reply (issue 13).
            self._n_values = sum(math.prod(shape) for _, shape in layout)
            self._layout = envelope.layout_digest(layout)
        self._sites: list[str] = []
        self._nonces: set[bytes] = set()

    @property
    def sites(self) -> tuple[str, ...]:
        """Sites whose updates are in the sum, in arrival order."""
        return tuple(self._sites)

    def __len__(self) -> int:
        return len(self._sites)

    def _check_header(self, h: envelope.Header) -> str:
        p = self._params
        if h.scheme != p.scheme or h.param_id != p.param_id:
            raise CryptoError("update rejected: made under other HE parameters or another kit")
        if h.run_id != self.run_id or h.round_id != self.round_id:
            raise CryptoError(
                f"update rejected: meant for run {h.run_id!r} round {h.round_id}, "
                f"this sum is run {self.run_id!r} round {self.round_id} (stale or replayed)"
            )
        if len(h.sites) != 1 or h.sites[0] not in self._public.site_keys:
            raise CryptoError("update rejected: sender is not a site of this kit")
        site = h.sites[0]
        if site in self._sites or h.nonce in self._nonces:
            raise CryptoError(f"update rejected: site {site!r} already contributed to this round (replay)")
        if len(self._sites) >= p.spec.max_sites:
            raise CryptoError(
                f"update rejected: the sum already holds max_sites={p.spec.max_sites} replies, "
                "the most the parameters were sized for"
            )
        if (self._fixed or self._acc is not None) and (h.n_values != self._n_values or h.layout != self._layout):
            raise CryptoError(
                f"update rejected: carries {h.n_values} values, the sum holds {self._n_values} (model mismatch)"
            )
        if h.n_values == 0 or h.n_values >= 2**40:
            raise CryptoError("update rejected: value count out of range")
        return site

    def add(self, data: bytes) -> str:
        """Validate one encrypted update and fold it in; return the contributing site id."""
        header, blobs, prefix, signature = envelope.decode(data, kind=envelope.KIND_UPDATE)
        site = self._check_header(header)
        if len(blobs) != self._params.ciphertext_count(header.n_values):
            raise CryptoError(REJECTED)
        digest = envelope.digest(envelope.KIND_UPDATE, prefix)
        _sign.verify(self._public.site_keys[site], digest, signature)
        if self._acc is None:
            self._acc = self._ctx.load_ciphertexts(blobs)
            self._n_values, self._layout = header.n_values, header.layout
        else:
            # One ciphertext parsed at a time, all or nothing (SealContext.add_blobs_inplace).
            self._ctx.add_blobs_inplace(self._acc, blobs)
        self._sites.append(site)
        self._nonces.add(header.nonce)
        return site

    def to_bytes(self) -> bytes:
        """Serialize the encrypted aggregate for the sites (with a SHA-256 integrity trailer)."""
        if self._acc is None:
            raise ConfigError("no valid encrypted updates to aggregate this round")
        header = envelope.Header(
            kind=envelope.KIND_AGGREGATE,
            scheme=self._params.scheme,
            param_id=self._params.param_id,
            run_id=self.run_id,
            round_id=self.round_id,
            n_values=self._n_values,
            layout=self._layout,
            nonce=secrets.token_bytes(envelope.NONCE_BYTES),
            sites=tuple(self._sites),
        )
        # Written into one growing buffer, ciphertext by ciphertext, and returned without a
        # copy (BytesIO.getvalue hands over its buffer): the old join of a list of saved
        # ciphertexts, then ``body + digest``, held the 80 MB aggregate three times (issue 17).
        out = io.BytesIO()
        envelope.write(out, header, self._ctx.iter_saved(self._acc), count=len(self._acc))
        with out.getbuffer() as body:
            trailer = envelope.digest(envelope.KIND_AGGREGATE, body)
        out.write(trailer)
        return out.getvalue()


# -- site: decrypt the aggregate ----------------------------------------------------------------------------


def open_sum(
    agg: bytes,
    keys: SiteKeys,
    *,
    run_id: str,
    round_id: int,
    unmask: Callable[[npt.NDArray[np.uint64], int, tuple[str, ...]], None] | None = None,
) -> tuple[FloatVector, int]:
    """Decrypt an aggregate: return ``(weighted mean as float32, total examples)``.

    Refuses an aggregate of another kit, run or round, a corrupted one, or one whose
    encrypted contribution count disagrees with its header (:class:`CryptoError`).
    ``unmask(rows, t, contributors)`` (``secagg+he``) removes the sites' masks from the
    decrypted slot rows in place, modulo the plain modulus t, before they are decoded.
    """
    if not isinstance(keys, SiteKeys):
        raise CryptoError("cannot decrypt: this kit holds no HE secret key (only site kits do)")
    params = keys.params
    header, blobs, prefix, trailer = envelope.decode(agg, kind=envelope.KIND_AGGREGATE)
    if not secrets.compare_digest(envelope.digest(envelope.KIND_AGGREGATE, prefix), trailer):
        raise CryptoError("aggregate rejected: corrupted or truncated")
    if header.scheme != params.scheme or header.param_id != params.param_id:
        raise CryptoError("aggregate rejected: made under other HE parameters or another kit")
    if header.run_id != run_id or header.round_id != round_id:
        raise CryptoError(
            f"aggregate rejected: for run {header.run_id!r} round {header.round_id}, "
            f"expected run {run_id!r} round {round_id} (stale or replayed)"
        )
    if not 0 < header.n_values < 2**40 or len(blobs) != params.ciphertext_count(header.n_values):
        raise CryptoError(REJECTED)
    ctx = context_for(params)
    rows = ctx.decrypt(_secret_key(keys), ctx.load_ciphertexts(blobs))
    if unmask is not None:
        if params.scheme != "bfv":
            raise CryptoError("aggregate rejected: masked aggregates need BFV slots")
        unmask(rows, ctx.plain_modulus, header.sites)
    weighted, total, sites = CODECS[params.scheme].decode(params, rows, header.n_values)
    if sites != len(header.sites):
        raise CryptoError(REJECTED)
    weighted *= params.spec.example_cap / total
    mean = weighted.astype(np.float32)
    return mean, math.floor(total)
