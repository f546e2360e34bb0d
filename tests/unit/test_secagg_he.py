"""``secagg+he``: masks modulo the BFV plain modulus, summed as ciphertexts, removed by the sites.

The coordinator drives the real aggregator (``start_round``), the sites answer with the real
protocol sessions and :func:`seal_masked`; the sum is opened with :func:`open_masked` and,
for exactness, compared slot by slot with the plaintext integer sum of the same packed rows.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import numpy as np
import pytest

from fedinfra.aggregation.rounds import Reply, RoundSpec, UpdateRejected, start_round
from fedinfra.config import JobSpec
from fedinfra.config.secagg import ConsortiumSpec
from fedinfra.config.secagg_plan import plan_for_roster
from fedinfra.config.wire import HE_UPDATE, SECAGG
from fedinfra.config.wire_secagg import StageReply, StageRequest
from fedinfra.crypto import envelope, generate_consortium
from fedinfra.crypto.codec import CODECS, _secret_key, context_for, open_sum
from fedinfra.crypto.secagg import Roster, SecAggAbandoned, SiteSession, he
from fedinfra.crypto.secagg.he import MAGIC, bundle, open_masked, seal_masked, unbundle, unmask_rows
from fedinfra.crypto.secagg.local import identities
from fedinfra.errors import CryptoError

LAYOUT = (("w", (5, 60)), ("b", (5,)))
N_VALUES = 305


def _job(sites: int, dropouts: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "sites": {"count": sites},
            "secure_aggregation": {
                "mode": "secagg+he",
                "max_dropouts": dropouts,
                "max_colluders": 1,
                "example_cap": 10,
                "max_sites": 8,
            },
        }
    )


_KITS: dict[tuple[str, ...], tuple] = {}


def _kits(names: tuple[str, ...], job: JobSpec):
    if names not in _KITS:
        _KITS[names] = generate_consortium(
            ConsortiumSpec(name="sahe", sites=list(names), secure_aggregation=job.secure_aggregation)
        )
    return _KITS[names]


def _plan_of(job: JobSpec):
    sa = job.secure_aggregation

    def plan_of(sampled: int, roster: int):
        return plan_for_roster(
            sampled,
            roster,
            max_dropouts=sa.max_dropouts,
            max_colluders=sa.max_colluders,
            min_contributors=sa.min_contributors,
        )

    return plan_of


class _Site:
    """A site answering the stage documents as fedinfra.site.secagg does."""

    def __init__(self, name: str, job: JobSpec, keys, ids) -> None:
        self.name, self.job, self.keys, self.ids = name, job, keys, ids
        self.session = SiteSession.start(name, run_id="run", round_id=1)
        self.plan_of = _plan_of(job)

    def _plan(self):
        return self.plan_of(self.session.sampled, len(self.session.roster.entries))

    def answer(self, document: str) -> str:
        req = StageRequest.model_validate_json(document)
        if req.stage == "advertise":
            e = self.session.advertise(self.ids.private[self.name])
            return StageReply(
                stage="advertise", site=self.name, c_pk=e.c_pk.hex(), s_pk=e.s_pk.hex(), signature=e.sig.hex()
            ).model_dump_json()
        if req.stage == "share":
            roster = Roster.from_json([list(r) for r in req.roster])
            self.session.sampled = req.n
            p = self.plan_of(req.n, len(roster.entries))
            boxes, commit = self.session.share(p, roster, self.ids.public)
            return StageReply(
                stage="share", site=self.name, boxes={k: v.hex() for k, v in boxes.items()}, commitment=commit.hex()
            ).model_dump_json()
        if req.stage == "consistency":
            sig = self.session.consistency(self._plan(), req.u3, self.ids.private[self.name])
            return StageReply(stage="consistency", site=self.name, signature=sig.hex()).model_dump_json()
        sigs = {k: bytes.fromhex(v) for k, v in req.signatures.items()}
        shares = self.session.unmask(self._plan(), req.u3, sigs, self.ids.public)
        return StageReply(
            stage="unmask", site=self.name, shares={k: (kind, v.hex()) for k, (kind, v) in shares.items()}
        ).model_dump_json()

    def sealed(self, document: str, values: np.ndarray, n_examples: int, seed: int) -> bytes:
        req = StageRequest.model_validate_json(document)
        return seal_masked(
            _update(values),
            n_examples,
            self.keys,
            self.session,
            self._plan(),
            u2=req.u2,
            shares_for_me={k: bytes.fromhex(v) for k, v in req.shares.items()},
            run_id="run",
            round_id=1,
            rng=np.random.default_rng(seed),
        )


def _values(i: int) -> np.ndarray:
    return np.random.default_rng(100 + i).uniform(-1, 1, N_VALUES)


def _update(flat: np.ndarray) -> dict[str, np.ndarray]:
    """The flat values as the model's named tensors (the layout the aggregate is bound to)."""
    return {"w": flat[:300].reshape(5, 60), "b": flat[300:]}


def _round(names, dropouts=1, drop_after_share=(), drop_before_unmask=()):
    job = _job(len(names), dropouts)
    public, keys = _kits(tuple(names), job)
    ids = identities(list(names))
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=tuple(names), he_public=public))
    sites = {n: _Site(n, job, keys[n], ids) for n in names}
    for stage in agg.stages_before():
        for name, doc in stage.payloads.items():
            stage.collect(name, sites[name].answer(doc))
        stage.close()
    blobs = {}
    for i, name in enumerate(names):
        extra = agg.train_extra(name)
        if name in drop_after_share or extra is None:
            continue
        blobs[name] = sites[name].sealed(extra[SECAGG], _values(i), 3 + i, seed=i)
        agg.accept(Reply(site=name, weight=1.0, config={HE_UPDATE: blobs[name]}))
    for stage in agg.stages_after():
        for name, doc in stage.payloads.items():
            if name not in drop_before_unmask:
                stage.collect(name, sites[name].answer(doc))
        stage.close()
    return job, keys, ids, agg, blobs


def _expected_rows(params, names, survivors):
    total = None
    for i, name in enumerate(names):
        if name not in survivors:
            continue
        rows = CODECS["bfv"].encode(params, _values(i), float(3 + i), np.random.default_rng(i)).astype(object)
        total = rows if total is None else total + rows
    return total


@pytest.mark.parametrize(
    ("names", "dropouts", "after_share", "before_unmask"),
    [
        (("a", "b", "c", "d"), 1, (), ()),
        (("a", "b", "c", "d"), 1, ("c",), ()),
        (("a", "b", "c", "d"), 1, (), ("a",)),
        (("s1", "s2", "s3", "s4", "s5", "s6"), 2, ("s2", "s5"), ()),
        (("s1", "s2", "s3", "s4", "s5", "s6"), 2, ("s6",), ("s1",)),
    ],
)
def test_the_unmasked_decrypted_sum_is_the_plaintext_integer_sum(names, dropouts, after_share, before_unmask):
    job, keys, ids, agg, _ = _round(names, dropouts, after_share, before_unmask)
    out = agg.finish()
    assert out.mean is None  # the coordinator holds no plaintext
    assert out.ciphertext is not None
    survivors = [n for n in names if n not in after_share]
    assert out.details["survivors"] == survivors
    site = keys[names[-1]]
    seen = {}

    def capture(rows, t, contributors):
        _, material = unbundle(out.ciphertext)
        unmask_rows(rows, t, contributors, material, ids.public, _plan_of(job), run_id="run", round_id=1)
        seen["rows"] = rows.copy()

    aggregate, _ = unbundle(out.ciphertext)
    open_sum(aggregate, site, run_id="run", round_id=1, unmask=capture)

    expected = _expected_rows(site.params, names, survivors)
    assert seen["rows"].astype(object).tolist() == expected.tolist()
    mean, total = open_masked(out.ciphertext, site, ids.public, _plan_of(job), run_id="run", round_id=1)
    assert total == sum(3 + i for i, n in enumerate(names) if n in survivors)
    exact = sum(_values(i) * (3 + i) for i, n in enumerate(names) if n in survivors) / total
    assert np.max(np.abs(mean - exact)) < 1e-4


def test_a_colluding_he_key_holder_sees_only_uniform_slots():
    # The coordinator colludes with site d, which holds the HE key: it decrypts a's
    # ciphertext and strips the a-d pairwise mask (d's own). What is left of an all-zero
    # update is PRG(b_a) + PRG(s_ab) + PRG(s_ac) mod t: chi-square over 16 buckets.
    from scipy.stats import chisquare

    from fedinfra.crypto.secagg import prg
    from fedinfra.crypto.secagg.protocol import MOD_LABEL, pair_seed

    names = ("a", "b", "c", "d")
    job = _job(4, 1)
    _, keys = _kits(names, job)
    ids = identities(list(names))
    ctx = context_for(keys["d"].params)
    t = ctx.plain_modulus
    counts = np.zeros(16, dtype=np.int64)
    plain_counts = np.zeros(16, dtype=np.int64)
    for rnd in range(1, 9):
        sessions = {n: SiteSession.start(n, run_id="chi", round_id=rnd) for n in names}
        roster = Roster(tuple(sessions[n].advertise(ids.private[n]) for n in names))
        p = _plan_of(job)(4, 4)
        boxes = {n: s.share(p, roster, ids.public)[0] for n, s in sessions.items()}
        zero = np.zeros(N_VALUES)
        blob = seal_masked(
            _update(zero),
            5,
            keys["a"],
            sessions["a"],
            p,
            u2=list(names),
            shares_for_me={m: b["a"] for m, b in boxes.items()},
            run_id="chi",
            round_id=rnd,
        )
        _, cts, _, _ = envelope.decode(blob, kind=envelope.KIND_UPDATE)
        rows = ctx.decrypt(_secret_key(keys["d"]), ctx.load_ciphertexts(cts)).reshape(-1)
        seed = pair_seed(sessions["d"].s_sk, roster.entries[0].s_pk)
        label = f"pair\x00chi\x00{rnd}\x00a\x00d" + MOD_LABEL
        prg.apply_masks_mod(rows, t, [(seed, label, True)])  # a added +mask (a < d)
        counts += np.bincount((rows.astype(object) * 16 // t).astype(np.int64), minlength=16)
        plain = CODECS["bfv"].encode(keys["a"].params, zero, 5.0, np.random.default_rng(rnd)).reshape(-1)
        plain_counts += np.bincount((plain.astype(object) * 16 // t).astype(np.int64), minlength=16)

    assert chisquare(counts).pvalue > 1e-3
    assert chisquare(plain_counts).pvalue < 1e-6  # the same statistic sees an unmasked update


def test_the_coordinator_cannot_open_or_read_the_aggregate():
    _, _, _, agg, _ = _round(("a", "b", "c", "d"))
    out = agg.finish()

    assert out.mean is None
    assert agg.hides_aggregate
    with pytest.raises(CryptoError, match="no HE secret key"):
        open_sum(unbundle(out.ciphertext)[0], object(), run_id="run", round_id=1)  # type: ignore[arg-type]


def test_an_update_sent_under_another_sites_name_is_rejected_and_leaves_no_trace():
    names = ("a", "b", "c", "d")
    job = _job(4, 1)
    public, keys = _kits(names, job)
    ids = identities(list(names))
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=names, he_public=public))
    sites = {n: _Site(n, job, keys[n], ids) for n in names}
    for stage in agg.stages_before():
        for name, doc in stage.payloads.items():
            stage.collect(name, sites[name].answer(doc))
        stage.close()
    blob_b = sites["b"].sealed(agg.train_extra("b")[SECAGG], _values(1), 4, seed=1)

    with pytest.raises(UpdateRejected, match="another site"):
        agg.accept(Reply(site="a", weight=1.0, config={HE_UPDATE: blob_b}))
    assert agg._unmasker.u3 == []
    assert len(agg._sum) == 0


def _material_attack(mutate):
    names = ("a", "b", "c", "d")
    job, keys, ids, agg, _ = _round(names)
    out = agg.finish()
    aggregate, material = unbundle(out.ciphertext)
    forged = bundle(aggregate, mutate(material, ids))
    return lambda: open_masked(forged, keys["a"], ids.public, _plan_of(job), run_id="run", round_id=1)


def test_sites_refuse_material_with_a_swapped_key():
    def swap(m, ids):
        other = SiteSession.start("b", run_id="run", round_id=1).advertise()
        entries = list(m.roster.entries)
        entries[1] = replace(entries[1], s_pk=other.s_pk)
        return replace(m, roster=Roster(tuple(entries)))

    with pytest.raises(CryptoError, match="not signed by its pinned identity key"):
        _material_attack(swap)()


def test_sites_refuse_a_survivor_list_without_t_signatures():
    def strip(m, ids):
        keep = dict(list(m.signatures.items())[:2])
        return replace(m, signatures=keep)

    with pytest.raises(SecAggAbandoned, match="2 valid survivor signatures"):
        _material_attack(strip)()


def test_sites_refuse_when_the_contributors_are_not_the_signed_survivors():
    def shrink(m, ids):
        return replace(m, u3=m.u3[:3])

    with pytest.raises(
        CryptoError, match=r"^aggregate rejected: its contributors are not the survivor list the sites signed$"
    ):
        _material_attack(shrink)()


@pytest.mark.parametrize(
    ("mode", "with_kit", "message"),
    [
        ("secagg+he", False, "secure_aggregation.mode = 'secagg+he' but the coordinator kit has no HE parameters"),
        ("bfv", False, "secure_aggregation is on but the coordinator kit has no HE parameters"),
        (
            "bfv",
            True,
            "the coordinator kit is for 'secagg+he', the job asks for 'bfv'; "
            "use the kit made for this job's secure_aggregation.mode",
        ),
    ],
)
def test_an_encrypted_round_refuses_a_kit_without_he_or_for_another_mode(mode, with_kit, message):
    """One kit check (``modes.encrypted_sum``) serves ``bfv`` and ``secagg+he``, messages unchanged.

    A pin for the refactor of #13 (it passes on the code before it too): the two aggregators
    had their own copies of this check; the messages users see must not move.
    """
    from fedinfra.config.secagg import SecureAggSpec
    from fedinfra.errors import ConfigError

    names = ("a", "b", "c", "d")
    he_job = _job(4, 1)
    public, _ = _kits(names, he_job)  # a secagg+he kit
    job = he_job
    if mode == "bfv":
        job = he_job.model_copy(update={"secure_aggregation": SecureAggSpec.model_validate({"mode": "bfv"})})
    spec = RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=names, he_public=public if with_kit else None)

    with pytest.raises(ConfigError) as info:
        start_round(spec)

    assert str(info.value) == message


# -- evaluation sums beside the ciphertext, and the refusals of the encrypted train wave ---------------------


def _started(names=("a", "b", "c", "d"), eval_size=0, silent=()):
    job = _job(len(names), 1)
    public, keys = _kits(tuple(names), job)
    ids = identities(list(names))
    spec = RoundSpec(
        run_id="run", round=1, layout=LAYOUT, job=job, sites=tuple(names), he_public=public, eval_size=eval_size
    )
    agg = start_round(spec)
    sites = {n: _Site(n, job, keys[n], ids) for n in names}
    for stage in agg.stages_before():
        for name, doc in stage.payloads.items():
            if name not in silent:
                stage.collect(name, sites[name].answer(doc))
        stage.close()
    return job, agg, sites


def _eval_wire(site: _Site, document: str, evaluation: np.ndarray) -> bytes:
    """The masked evaluation sums as fedinfra.site.secagg sends them beside the ciphertext (SECAGG_EVAL)."""
    from fedinfra.crypto.secagg import codec as sa_codec

    req = StageRequest.model_validate_json(document)
    bits = sa_codec.widths(site.job.secure_aggregation, int(evaluation.shape[0]))
    empty = np.zeros(0, dtype=np.uint64)
    segments = [empty, empty.copy(), evaluation]
    site.session.mask(
        site._plan(), segments, bits, u2=req.u2, shares_for_me={k: bytes.fromhex(v) for k, v in req.shares.items()}
    )
    return sa_codec.to_wire(segments, bits)


def test_the_survivors_evaluation_sums_are_unmasked_beside_the_encrypted_sum():
    from fedinfra.config.wire import SECAGG_EVAL
    from fedinfra.crypto.secagg import codec as sa_codec

    names = ("a", "b", "c", "d")
    job, agg, sites = _started(eval_size=2)
    sa = job.secure_aggregation
    evals = {n: np.array([1.5 * (i + 1), 0.25 * i]) for i, n in enumerate(names)}
    for i, name in enumerate(names[:3]):  # d drops after sharing
        doc = agg.train_extra(name)[SECAGG]
        blob = sites[name].sealed(doc, _values(i), 3 + i, seed=i)
        masked_eval = _eval_wire(sites[name], doc, sa_codec.encode_eval(evals[name], sa))
        folded = agg.accept(Reply(site=name, weight=1.0, config={HE_UPDATE: blob, SECAGG_EVAL: bytearray(masked_eval)}))
        assert folded.kind == "update.ciphertext"
    for stage in agg.stages_after():
        for name, doc in stage.payloads.items():
            stage.collect(name, sites[name].answer(doc))
        stage.close()

    out = agg.finish()

    assert out.sites == ("a", "b", "c")
    assert out.details["dropped"] == ["d"]
    assert out.evaluation is not None
    np.testing.assert_allclose(out.evaluation, evals["a"] + evals["b"] + evals["c"])


def test_an_encrypted_round_without_evaluation_sums_reports_none():
    _, _, _, agg, _ = _round(("a", "b", "c", "d"))
    out = agg.finish()
    assert out.evaluation is None
    assert out.sites == ("a", "b", "c", "d")


def test_masked_evaluation_sums_must_be_present_and_of_the_exact_length():
    from fedinfra.config.wire import SECAGG_EVAL
    from fedinfra.crypto.secagg import codec as sa_codec

    job, agg, sites = _started(eval_size=2)
    doc = agg.train_extra("a")[SECAGG]
    blob = sites["a"].sealed(doc, _values(0), 3, seed=0)
    masked_eval = _eval_wire(sites["a"], doc, sa_codec.encode_eval(np.array([1.0, 2.0]), job.secure_aggregation))
    assert len(masked_eval) == 16

    for config, check, message in [
        ({HE_UPDATE: blob}, "missing", "reply carries no masked evaluation sums"),
        ({HE_UPDATE: blob, SECAGG_EVAL: "text"}, "missing", "reply carries no masked evaluation sums"),
        ({HE_UPDATE: blob, SECAGG_EVAL: masked_eval[:-1]}, "encoding", "masked evaluation sums: 15 bytes, expected 16"),
        (
            {HE_UPDATE: blob, SECAGG_EVAL: masked_eval + b"\0"},
            "encoding",
            "masked evaluation sums: 17 bytes, expected 16",
        ),
    ]:
        with pytest.raises(UpdateRejected) as info:
            agg.accept(Reply(site="a", weight=1.0, config=config))
        assert (info.value.check, str(info.value)) == (check, message)
    assert len(agg._sum) == 0
    assert agg._unmasker.u3 == []
    agg.accept(Reply(site="a", weight=1.0, config={HE_UPDATE: blob, SECAGG_EVAL: masked_eval}))
    assert agg._unmasker.u3 == ["a"]


def test_the_encrypted_train_wave_refuses_by_name_what_the_protocol_does_not_allow():
    names = ("a", "b", "c", "d")
    job = _job(4, 1)
    public, _ = _kits(names, job)
    early = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=names, he_public=public))
    with pytest.raises(UpdateRejected) as info:
        early.accept(Reply(site="a", weight=1.0, config={HE_UPDATE: b"x"}))
    assert (info.value.check, str(info.value)) == ("protocol", "encrypted input before the key stages completed")
    with pytest.raises(
        SecAggAbandoned, match=r"^secure aggregation: the key stages did not complete; round abandoned$"
    ):
        early.finish()

    _, agg, sites = _started(silent=("d",))
    blob = sites["a"].sealed(agg.train_extra("a")[SECAGG], _values(0), 3, seed=0)
    with pytest.raises(CryptoError) as cut:
        envelope.decode(blob[:-1], kind=envelope.KIND_UPDATE)
    forged = blob[:-1] + bytes([blob[-1] ^ 1])  # the header reads, the signature does not verify
    with pytest.raises(CryptoError) as unsigned:
        agg._sum.add(forged)
    blob_b = sites["b"].sealed(agg.train_extra("b")[SECAGG], _values(1), 4, seed=1)
    refusals = [
        (Reply(site="a", weight=1.0, config={}), "missing", "reply carries no encrypted masked update"),
        (
            Reply(site="a", weight=1.0, config={HE_UPDATE: blob_b}),
            "protocol",
            "the encrypted update names another site than the sender",
        ),
        (Reply(site="a", weight=1.0, config={HE_UPDATE: forged}), "ciphertext", str(unsigned.value)),
        (
            Reply(site="a", weight=1.0, config={HE_UPDATE: "text"}),
            "missing",
            "reply carries no encrypted masked update",
        ),
        (
            Reply(site="d", weight=1.0, config={HE_UPDATE: blob}),
            "protocol",
            "site 'd' did not share keys or already sent its input",
        ),
        (Reply(site="a", weight=1.0, config={HE_UPDATE: blob[:-1]}), "ciphertext", str(cut.value)),
    ]
    for reply, check, message in refusals:
        with pytest.raises(UpdateRejected) as info:
            agg._accept(reply)
        assert (info.value.check, str(info.value)) == (check, message)
    assert len(agg._sum) == 0
    folded = agg.accept(Reply(site="a", weight=1.0, config={HE_UPDATE: blob}))
    assert folded.subject[0] == "update.ciphertext"
    with pytest.raises(UpdateRejected) as info:
        agg._accept(Reply(site="a", weight=1.0, config={HE_UPDATE: blob}))  # past the base class's replay check
    assert (info.value.check, str(info.value)) == ("protocol", "site 'a' did not share keys or already sent its input")


def test_an_encrypted_round_cannot_finish_between_the_key_stages():
    names = ("a", "b", "c", "d")
    job = _job(4, 1)
    public, keys = _kits(names, job)
    ids = identities(list(names))
    agg = start_round(RoundSpec(run_id="run", round=1, layout=LAYOUT, job=job, sites=names, he_public=public))
    sites = {n: _Site(n, job, keys[n], ids) for n in names}
    advertise = next(agg.stages_before())
    for name, doc in advertise.payloads.items():
        advertise.collect(name, sites[name].answer(doc))
    advertise.close()  # a plan and a roster, no shares yet

    assert agg.plan is not None
    assert agg.roster is not None
    with pytest.raises(SecAggAbandoned, match=r"^secure aggregation: the key stages did not complete; round abandoned"):
        agg.finish()


# -- the aggregate bundle: framing and canonical material, on a real BFV aggregate ------------------------


@pytest.fixture(scope="module")
def finished_round():
    """A finished four-site round: its real (TenSEAL BFV) aggregate and unmasking material."""
    _, _, _, agg, _ = _round(("a", "b", "c", "d"))
    return unbundle(agg.finish().ciphertext)


NOT_OURS = r"^aggregate rejected: not a secagg\+he aggregate \(unmasking material missing\)$"
TRUNCATED = r"^aggregate rejected: unmasking material truncated or too large$"
MALFORMED = r"^aggregate rejected: malformed unmasking material$"


def test_the_unmasking_material_is_canonical_json_whatever_the_insertion_order(finished_round):
    """Protects the material's one byte form (sorted keys, no spaces): the same material, the same bytes."""
    _, material = finished_round
    doc = material.to_json()
    shuffled = replace(
        material,
        commitments=dict(reversed(list(material.commitments.items()))),
        signatures=dict(reversed(list(material.signatures.items()))),
        responses={h: dict(reversed(list(s.items()))) for h, s in reversed(list(material.responses.items()))},
    )

    assert doc == json.dumps(json.loads(doc), sort_keys=True, separators=(",", ":")).encode()
    assert doc.startswith(b'{"commitments":{"a":"')
    assert shuffled.to_json() == doc
    assert type(material).from_json(doc) == material


def test_the_bundle_is_magic_length_material_aggregate(finished_round):
    """Protects the framing: magic, the material's length as 8 big-endian bytes, the material, the ciphertext."""
    aggregate, material = finished_round
    doc = material.to_json()

    data = bundle(aggregate, material)

    assert data == b"fedinfra-secagg-he/1\n" + len(doc).to_bytes(8, "big") + doc + aggregate
    assert unbundle(data) == (aggregate, material)
    assert unbundle(bundle(b"", material)) == (b"", material)  # material that ends the data is whole


@pytest.mark.parametrize(
    "data",
    [b"", MAGIC + bytes(7), b"fedinfra-secagg-he/2\n" + bytes(64), bytes(200)],
    ids=["empty", "short", "other-version", "no-magic"],
)
def test_data_that_is_not_a_bundle_is_refused_by_name(data):
    """Protects the first check: short data, or data of any length without the magic, is not an aggregate."""
    with pytest.raises(CryptoError, match=NOT_OURS):
        unbundle(data)


def test_a_truncated_or_oversized_material_is_refused_before_it_is_parsed(finished_round):
    """Protects the length field: a material cut short, or declared above the bound (64 MiB) or 2^63, is refused."""
    aggregate, material = finished_round
    whole = bundle(b"", material)
    big = he.MAX_MATERIAL_BYTES + 1

    with pytest.raises(CryptoError, match=TRUNCATED):
        unbundle(whole[:-1])
    with pytest.raises(CryptoError, match=TRUNCATED):
        unbundle(MAGIC + struct.pack(">Q", 2**63 + 5) + whole[len(MAGIC) + 8 :] + aggregate)
    with pytest.raises(CryptoError, match=TRUNCATED):
        unbundle(MAGIC + struct.pack(">Q", big) + bytes(big))


def test_a_material_of_exactly_the_bound_is_read(finished_round):
    """Protects the bound's edge: material of exactly MAX_MATERIAL_BYTES (JSON padded with spaces) is accepted."""
    aggregate, material = finished_round
    doc = material.to_json()
    padded = doc + b" " * (he.MAX_MATERIAL_BYTES - len(doc))

    got = unbundle(MAGIC + struct.pack(">Q", len(padded)) + padded + aggregate)

    assert got == (aggregate, material)


@pytest.mark.parametrize(
    "doc",
    [
        b"",
        b"not json",
        b"{}",
        b'{"responses": {"a": {"b": ["x", "00"]}}}',
        b'{"responses": {"a": {"b": ["b", "zz"]}}}',
    ],
    ids=["empty", "not-json", "no-keys", "share-kind", "share-hex"],
)
def test_malformed_unmasking_material_is_refused_by_name(doc):
    """Protects the parser: empty, non-JSON or incomplete material, an unknown share kind, a non-hex share."""
    with pytest.raises(CryptoError, match=MALFORMED):
        unbundle(MAGIC + struct.pack(">Q", len(doc)) + doc)


def test_a_share_of_an_unknown_kind_is_refused_even_in_otherwise_whole_material(finished_round):
    """Protects the share kinds: only self-mask seeds ("b") and pair keys ("s") are material."""
    _, material = finished_round
    doc = json.loads(material.to_json())
    holder = next(iter(doc["responses"]))
    owner = next(iter(doc["responses"][holder]))
    doc["responses"][holder][owner][0] = "c"

    with pytest.raises(CryptoError, match=MALFORMED):
        type(material).from_json(json.dumps(doc).encode())
