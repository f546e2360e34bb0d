"""Big model: a 10M-parameter model, 10 sites, packed BFV 20-bit and secagg 20-bit vs plaintext FedAvg.

The model is an MLP 4096-2048-800-10 (10,037,866 float32 parameters, 40.2 MB; ``--quick``:
1024-768-512-10, 1,186,058). Ten sites each hold an update of it. Arms, all measured in this
run on the same updates, through the real codecs and the real round aggregators
(:func:`fedinfra.aggregation.rounds.start_round`, the coordinator's intake bounds):

* plaintext FedAvg (the baseline) - an ``ArrayRecord`` of float32 tensors per site;
* packed BFV 20-bit - ``seal_update`` at the site (TenSEAL/SEAL ciphertexts, Ed25519
  signature), ``EncryptedSum`` at the coordinator, ``open_sum`` at a site;
* secagg 20-bit - the SecAgg+ key stages, quantize + mask at the site, the coordinator's
  running sum of masked inputs and its unmasking.

How: a site's reply is a real Flower ``Message`` replying to a train message, deflated into
the objects Flower 1.41 pushes to the SuperLink (``push-object``: one HTTP body each) and
written to disk. The coordinator runs in its own process (``--coordinator``): it pushes ten
train messages to a disk-backed link standing in for the SuperLink and iterates the replies
with the coordinator's own :func:`fedinfra.coordinator.inbox.receive` (one reply pulled and
inflated at a time, as ``Coordinator._send`` does), checks each against the intake bound,
folds it with ``Aggregator.accept`` and hashes the audit subject, then finishes the round.
Its peak RSS (``VmHWM``, see :func:`rss_peak`) is the coordinator's alone: no site data ever
lives in that process. The SecAgg key stages (small JSON documents) are answered by the
sites in the parent and replayed to the coordinator.

Figures: bytes per parameter on the wire per site (the Flower objects of the reply, plus
the key-stage replies for secagg), the largest single object against Flower's 5 MiB array
chunk and the 64 MiB request body fedinfra's public proxy admits
(:class:`fedinfra.runtime.proxy.ProxySpec`), coordinator peak RSS, seconds per round (the
median site's encode, the coordinator's fold of ten replies and finish, a site's decode);
medians over repeated coordinator processes. Goal (issue 17): coordinator peak RSS <= 2x
one model's float32 size + 200 MB.

Run: ``python bench/big_model.py [--quick]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from _common import Report, parse_args

NUM_SITES = 10
CLIP = 0.05
EXAMPLE_CAP = 1000
RUN_ID = "bench-big"
ROUND = 1
SITES = [f"site{i:02d}" for i in range(NUM_SITES)]
ARMS = ("fedavg", "bfv", "secagg")
#: fedinfra's public proxy (nginx ``client_max_body_size``): the largest request body a site may push.
PROXY_MAX_BODY = 64 * 1024 * 1024
#: Flower 1.41 splits each array into chunks of this size (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``).
FLOWER_ARRAY_CHUNK = 5 * 1024 * 1024


def layout_of(quick: bool) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The MLP's tensors (names and shapes, in order)."""
    dims = (1024, 768, 512, 10) if quick else (4096, 2048, 800, 10)
    out: list[tuple[str, tuple[int, ...]]] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        out += [(f"fc{i + 1}.weight", (b, a)), (f"fc{i + 1}.bias", (b,))]
    return tuple(out)


def update_of(i: int, layout: Any) -> dict[str, np.ndarray]:
    """Site ``i``'s update: N(0, 0.01) clipped to the agreed bound, float32 (regenerated on demand)."""
    rng = np.random.default_rng(1000 + i)
    return {name: np.clip(rng.normal(0.0, 0.01, shape), -CLIP, CLIP).astype(np.float32) for name, shape in layout}


def count_of(i: int) -> int:
    return 600 + 37 * i


def job_for(arm: str) -> Any:
    from fedinfra.config import JobSpec

    sa: dict[str, Any] = {}
    if arm != "fedavg":
        sa = {"mode": arm, "quant_bits": 20, "clip": CLIP, "max_sites": NUM_SITES, "example_cap": EXAMPLE_CAP}
    return JobSpec.model_validate({"sites": {"count": NUM_SITES}, "secure_aggregation": sa})


def rss_now() -> int:
    """Resident set size of this process now, bytes (``/proc/self/status`` VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_peak() -> int:
    """Peak resident set size of this process image, bytes (``/proc/self/status`` VmHWM).

    Not ``getrusage``'s ``ru_maxrss``: Linux keeps that maximum across ``execve`` and folds
    in the address space the process had before it (``fs/exec.c``, ``exec_mmap``). Python's
    ``subprocess`` starts the coordinator by (v)fork and exec, so its ``ru_maxrss`` began at
    the parent's resident size: the parent holding the sites' data at ~470 MB, the coordinator
    reported 473 MB for a plaintext round whose own peak was 339 MB. VmHWM is the
    high-water mark of this image's own address space.
    """
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the wire: a reply as the objects Flower pushes ------------------------------------------------


def flower_identity() -> None:
    """What Flower's runtime sets in a ServerApp or ClientApp process before messages are built."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 4242
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1


def train_message(node: int) -> Any:
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    return Message(
        RecordDict({"config": ConfigRecord({"doc": "{}"})}), dst_node_id=node, message_type=MessageType.TRAIN
    )


def write_reply(path: Path, content: Any, node: int, incoming_id: str) -> tuple[int, int, str]:
    """Deflate the reply into Flower's objects and write them; return (bytes, largest object, id)."""
    from flwr.app import Message
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    incoming = train_message(node)
    incoming.metadata.__dict__["_message_id"] = incoming_id
    incoming.metadata.__dict__["_src_node_id"] = 0
    reply = Message(content, reply_to=incoming)
    objects = get_all_nested_objects(reply)
    total = largest = 0
    with path.open("wb") as fh:
        for obj_id, obj in objects.items():
            data = obj.deflate()
            fh.write(struct.pack(">H", len(obj_id)) + obj_id.encode() + struct.pack(">Q", len(data)))
            fh.write(data)
            total += len(data)
            largest = max(largest, len(data))
    return total, largest, reply.object_id


def read_objects(path: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with path.open("rb") as fh:
        while head := fh.read(2):
            (n,) = struct.unpack(">H", head)
            obj_id = fh.read(n).decode()
            (size,) = struct.unpack(">Q", fh.read(8))
            out[obj_id] = fh.read(size)
    return out


class DiskLink:
    """The SuperLink's side of ``Grid`` for the coordinator process: replies come from disk.

    ``pull_messages`` does what Flower's ``HttpGrid.pull_messages`` does with the objects it
    downloads: inflate every requested reply that has landed (all of them are here) from its
    object contents, checking their ids. It is the transport only.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        self.by_id = {r["incoming_id"]: r for r in self.manifest["replies"]}

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        ids = [r["incoming_id"] for r in self.manifest["replies"]]
        return ids[: len(list(messages))]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

        out = []
        for mid in message_ids:
            r = self.by_id.get(mid)
            if r is None:
                continue
            contents = read_objects(self.dir / r["file"])
            msg = inflate_object_from_contents(r["reply_id"], contents)
            del contents
            msg.metadata.__dict__["_message_id"] = r["reply_id"]
            out.append(msg)
        return out


# -- sites ---------------------------------------------------------------------------------------------


class SecAggSites:
    """The sites' side of SecAgg+: answers the stage documents as ``fedinfra.site.secagg`` does."""

    def __init__(self, job: Any) -> None:
        from fedinfra.crypto.secagg import SiteSession
        from fedinfra.crypto.secagg.local import identities

        self.job = job
        self.ids = identities(SITES)
        self.sessions = {n: SiteSession.start(n, run_id=RUN_ID, round_id=ROUND) for n in SITES}
        self.stage_cpu = dict.fromkeys(SITES, 0.0)
        self.stage_bytes = dict.fromkeys(SITES, 0)

    def _plan(self, name: str) -> Any:
        from fedinfra.config.secagg_plan import plan_for_roster

        s, sa = self.sessions[name], self.job.secure_aggregation
        return plan_for_roster(
            s.sampled,
            len(s.roster.entries),
            max_dropouts=sa.max_dropouts,
            max_colluders=sa.max_colluders,
            min_contributors=sa.min_contributors,
        )

    def answer(self, name: str, document: str) -> str:
        from fedinfra.config.wire_secagg import StageReply, StageRequest
        from fedinfra.crypto.secagg import Roster

        t0 = time.process_time()
        req = StageRequest.model_validate_json(document)
        s = self.sessions[name]
        if req.stage == "advertise":
            e = s.advertise(self.ids.private[name])
            reply = StageReply(
                stage="advertise", site=name, c_pk=e.c_pk.hex(), s_pk=e.s_pk.hex(), signature=e.sig.hex()
            )
        elif req.stage == "share":
            roster = Roster.from_json([list(r) for r in req.roster])
            s.sampled, s.roster = req.n, roster
            p = self._plan(name)
            s.roster = None
            boxes, commit = s.share(p, roster, self.ids.public)
            reply = StageReply(
                stage="share", site=name, boxes={k: v.hex() for k, v in boxes.items()}, commitment=commit.hex()
            )
        elif req.stage == "consistency":
            reply = StageReply(
                stage="consistency",
                site=name,
                signature=s.consistency(self._plan(name), req.u3, self.ids.private[name]).hex(),
            )
        else:
            sigs = {k: bytes.fromhex(v) for k, v in req.signatures.items()}
            shares = s.unmask(self._plan(name), req.u3, sigs, self.ids.public)
            reply = StageReply(
                stage="unmask", site=name, shares={k: (kind, v.hex()) for k, (kind, v) in shares.items()}
            )
        doc = reply.model_dump_json()
        self.stage_cpu[name] += time.process_time() - t0
        self.stage_bytes[name] += len(doc)
        return doc

    def masked(self, name: str, document: str, update: dict[str, np.ndarray], n: int, i: int) -> bytes:
        from fedinfra.config.wire_secagg import StageRequest
        from fedinfra.crypto.quantize import flatten
        from fedinfra.crypto.secagg import codec

        req = StageRequest.model_validate_json(document)
        sa = self.job.secure_aggregation
        values, _ = flatten(update)
        segs = codec.encode(values, n, sa, np.random.default_rng(i))
        bits = codec.widths(sa)
        self.sessions[name].mask(
            self._plan(name), segs, bits, u2=req.u2, shares_for_me={k: bytes.fromhex(v) for k, v in req.shares.items()}
        )
        return codec.to_wire(segs, bits)


def sites_phase(arm: str, layout: Any, directory: Path, kits: Path) -> dict[str, Any]:
    """Every site encodes its update and writes its reply; returns sizes, timings, stage answers."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    from fedinfra.aggregation import blobs
    from fedinfra.aggregation.rounds import Reply, RoundSpec, start_round
    from fedinfra.config.wire import ARRAYS, CONFIG, DOC, HE_UPDATE, SECAGG, SECAGG_UPDATE
    from fedinfra.crypto import seal_update
    from fedinfra.crypto.kits import load_site_kit

    job = job_for(arm)
    directory.mkdir(parents=True, exist_ok=True)
    replies, encode_s, payload = [], [], []
    stages: dict[str, dict[str, str]] = {}
    sa_sites = agg = None
    if arm == "secagg":
        sa_sites = SecAggSites(job)
        agg = start_round(RoundSpec(run_id=RUN_ID, round=ROUND, layout=layout, job=job, sites=tuple(SITES)))
        for stage in agg.stages_before():
            stages[stage.name] = {n: sa_sites.answer(n, doc) for n, doc in stage.payloads.items()}
            for n, answer in stages[stage.name].items():
                stage.collect(n, answer)
            stage.close()
    for i, name in enumerate(SITES):
        update = update_of(i, layout)
        n = count_of(i)
        t0 = time.perf_counter()
        if arm == "fedavg":
            content = RecordDict(
                {ARRAYS: ArrayRecord({k: Array(v) for k, v in update.items()}), CONFIG: ConfigRecord({DOC: "{}"})}
            )
            payload.append(sum(v.nbytes for v in update.values()))
        elif arm == "bfv":
            keys = load_site_kit(kits / "sites" / name)
            blob = seal_update(update, n, keys, run_id=RUN_ID, round_id=ROUND)
            records: dict[str, Any] = {CONFIG: ConfigRecord({DOC: "{}"})}
            blobs.put(records, HE_UPDATE, blob)  # in segments, as fedinfra.site.app sends it
            content = RecordDict(records)
            payload.append(len(blob))
        else:
            assert sa_sites is not None
            assert agg is not None
            extra = agg.train_extra(name)
            assert extra is not None
            blob = sa_sites.masked(name, extra[SECAGG], update, n, i)
            records = {CONFIG: ConfigRecord({DOC: "{}"})}
            blobs.put(records, SECAGG_UPDATE, blob)
            content = RecordDict(records)
            payload.append(len(blob))
        incoming_id = hashlib.sha256(f"{arm}/{name}".encode()).hexdigest()
        size, largest, reply_id = write_reply(directory / f"{name}.bin", content, i + 1, incoming_id)
        encode_s.append(time.perf_counter() - t0)
        replies.append(
            {
                "site": name,
                "weight": n,
                "file": f"{name}.bin",
                "incoming_id": incoming_id,
                "reply_id": reply_id,
                "bytes": size,
                "largest_object": largest,
            }
        )
        if arm == "secagg":  # the parent's own round, only to get the after-stage documents the sites answer
            assert agg is not None
            agg.accept(Reply(site=name, weight=1.0, config={SECAGG_UPDATE: blob}))
        del content, update
    if arm == "secagg":
        assert sa_sites is not None
        assert agg is not None
        for stage in agg.stages_after():
            stages[stage.name] = {n: sa_sites.answer(n, doc) for n, doc in stage.payloads.items()}
            for n, answer in stages[stage.name].items():
                stage.collect(n, answer)
            stage.close()
        for i, name in enumerate(SITES):
            encode_s[i] += sa_sites.stage_cpu[name]
    manifest = {"arm": arm, "replies": replies, "stages": stages}
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    stage_bytes = [0 if sa_sites is None else sa_sites.stage_bytes[n] for n in SITES]
    return {
        "encode_s": encode_s,
        "wire_bytes": [r["bytes"] + b for r, b in zip(replies, stage_bytes, strict=True)],
        "payload_bytes": payload,
        "largest_object": max(r["largest_object"] for r in replies),
    }


# -- the coordinator (its own process) --------------------------------------------------------------


def coordinator_main(arm: str, directory: Path, kits: Path, quick: bool) -> int:
    """One round's coordinator side; prints one JSON line of figures."""
    from flwr.app import Message

    from fedinfra.aggregation.rounds import Reply, RoundSpec, start_round
    from fedinfra.config.wire import ARRAYS, HE_UPDATE, SECAGG_UPDATE
    from fedinfra.coordinator import intake
    from fedinfra.coordinator.inbox import pin_mmap_threshold, receive
    from fedinfra.crypto.kits import load_coordinator_kit

    pin_mmap_threshold()  # as Coordinator.run does
    layout = layout_of(quick)
    job = job_for(arm)
    public = load_coordinator_kit(kits / "coordinator") if arm == "bfv" else None
    link = DiskLink(directory)
    stages = link.manifest["stages"]
    weights = {r["site"]: r["weight"] for r in link.manifest["replies"]}
    messages: list[Message] = [train_message(i + 1) for i in range(NUM_SITES)]
    if arm == "bfv":
        bound = intake.he_update_bound(public.params, layout)  # type: ignore[union-attr]
    elif arm == "secagg":
        bound = intake.secagg_update_bound(job.secure_aggregation, layout)
    rss_before = rss_now()
    t0 = time.perf_counter()
    agg = start_round(
        RoundSpec(run_id=RUN_ID, round=ROUND, layout=layout, job=job, he_public=public, sites=tuple(SITES))
    )
    for stage in agg.stages_before():
        for name, _document in stage.payloads.items():
            stage.collect(name, stages[stage.name][name])
        stage.close()
    t_fold = time.perf_counter()
    folded_n = 0
    site_of = {r["reply_id"]: r["site"] for r in link.manifest["replies"]}
    for reply in receive(link, link.push_messages(messages), timeout_s=600.0, collect=True):
        name = site_of[reply.metadata.message_id]
        bounds = {HE_UPDATE: bound} if arm == "bfv" else {SECAGG_UPDATE: bound} if arm == "secagg" else {}
        config = intake.reply_config(reply, bounds)  # as Coordinator._train does: bounded, then joined
        folded = agg.accept(
            Reply(
                site=name,
                weight=float(weights[name]),
                config=config,
                arrays=reply.content.array_records.get(ARRAYS),
            )
        )
        del folded, config  # its sha256 is the audit subject of update.received
        folded_n += 1
    fold_s = time.perf_counter() - t_fold
    for stage in agg.stages_after():
        for name, _document in stage.payloads.items():
            stage.collect(name, stages[stage.name][name])
        stage.close()
    t_finish = time.perf_counter()
    result = agg.finish()
    finish_s = time.perf_counter() - t_finish
    total_s = time.perf_counter() - t0
    peak = rss_peak()
    if result.ciphertext is not None:
        (directory / "aggregate.bin").write_bytes(result.ciphertext)
        out_bytes = len(result.ciphertext)
    else:
        assert result.mean is not None
        np.save(directory / "mean.npy", np.concatenate([result.mean[n].reshape(-1) for n, _ in layout]))
        out_bytes = 0
    if folded_n != NUM_SITES or len(result.sites) != NUM_SITES:
        raise RuntimeError(f"{arm}: folded {folded_n} replies, the aggregate holds {result.sites}")
    print(
        json.dumps(
            {
                "rss_before_replies": rss_before,
                "peak_rss": peak,
                "fold_s": fold_s,
                "finish_s": finish_s,
                "coordinator_s": total_s,
                "aggregate_bytes": out_bytes,
            }
        )
    )
    return 0


def run_coordinator(arm: str, directory: Path, kits: Path, quick: bool) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--coordinator",
        arm,
        "--dir",
        str(directory),
        "--kits",
        str(kits),
    ] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"coordinator process for {arm} failed:\n{out.stderr[-4000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- the parent ---------------------------------------------------------------------------------------


def _timing(samples: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": float(len(samples)),
    }


def exact_mean(layout: Any) -> np.ndarray:
    acc: np.ndarray | None = None
    total = 0
    for i in range(NUM_SITES):
        u = update_of(i, layout)
        flat = np.concatenate([u[n].reshape(-1) for n, _ in layout]).astype(np.float64) * count_of(i)
        acc = flat if acc is None else acc + flat
        total += count_of(i)
    assert acc is not None
    return acc / total


def main(argv: list[str] | None = None) -> int:
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--coordinator", choices=ARMS)
    pre.add_argument("--dir", type=Path)
    pre.add_argument("--kits", type=Path)
    known, rest = pre.parse_known_args(argv)
    args = parse_args(__doc__.splitlines()[0], rest)
    flower_identity()
    if known.coordinator:
        return coordinator_main(known.coordinator, known.dir, known.kits, args.quick)

    from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
    from fedinfra.crypto import open_sum
    from fedinfra.crypto.kits import build_kits, load_site_kit, write_kits

    layout = layout_of(args.quick)
    n_params = sum(int(np.prod(s)) for _, s in layout)
    model_bytes = 4 * n_params
    repeats = 2  # coordinator processes per arm (a 10M BFV round takes ~1 min on 2 busy cores)
    rss_goal = 2 * model_bytes + 200 * 1000**2
    report = Report(
        name="big_model",
        description=__doc__.splitlines()[0],
        params={
            "n_params": n_params,
            "model_float32_bytes": model_bytes,
            "sites": NUM_SITES,
            "clip": CLIP,
            "example_cap": EXAMPLE_CAP,
            "layout": [[n, list(s)] for n, s in layout],
            "coordinator_runs": repeats,
            "rss_goal_bytes": rss_goal,
            "proxy_max_body": PROXY_MAX_BODY,
            "flower_array_chunk": FLOWER_ARRAY_CHUNK,
        },
    )
    print(
        f"{n_params:,} parameters ({model_bytes / 1e6:.1f} MB float32) x {NUM_SITES} sites; "
        f"coordinator runs per arm: {repeats}"
    )
    work = Path(tempfile.mkdtemp(prefix="fedinfra-bigmodel-", dir=os.environ.get("BIG_MODEL_TMP")))
    results: dict[str, dict[str, Any]] = {}
    try:
        kits = work / "kits"
        spec = SecureAggSpec(mode="bfv", quant_bits=20, clip=CLIP, max_sites=NUM_SITES, example_cap=EXAMPLE_CAP)
        write_kits(build_kits(ConsortiumSpec(name="bench", sites=SITES, secure_aggregation=spec)), kits)
        exact = exact_mean(layout)
        for arm in ARMS:
            print(f"--- {arm}", flush=True)
            d = work / arm
            site = sites_phase(arm, layout, d, kits)
            runs = [run_coordinator(arm, d, kits, args.quick) for _ in range(repeats)]
            decode_s = [0.0]
            if arm == "bfv":
                keys = load_site_kit(kits / "sites" / SITES[0])
                agg_bytes = (d / "aggregate.bin").read_bytes()
                decode_s = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    mean, _ = open_sum(agg_bytes, keys, run_id=RUN_ID, round_id=ROUND)
                    decode_s.append(time.perf_counter() - t0)
                del agg_bytes
            else:
                mean = np.load(d / "mean.npy")
            err = float(np.max(np.abs(np.asarray(mean, dtype=np.float64) - exact)))
            del mean
            shutil.rmtree(d)
            results[arm] = {
                "bytes_per_param": statistics.mean(site["wire_bytes"]) / n_params,
                "payload_bytes_per_param": statistics.mean(site["payload_bytes"]) / n_params,
                "largest_object_bytes": site["largest_object"],
                "fits_proxy_body": site["largest_object"] <= PROXY_MAX_BODY,
                "aggregate_bytes": runs[0]["aggregate_bytes"],
                "peak_rss_bytes": statistics.median(r["peak_rss"] for r in runs),
                "rss_before_replies_bytes": statistics.median(r["rss_before_replies"] for r in runs),
                "max_abs_error": err,
                "encode": _timing(site["encode_s"]),
                "fold": _timing([r["fold_s"] for r in runs]),
                "finish": _timing([r["finish_s"] for r in runs]),
                "coordinator": _timing([r["coordinator_s"] for r in runs]),
                "decode": _timing(decode_s),
            }
            r = results[arm]
            round_samples = [
                statistics.median(site["encode_s"]) + run["coordinator_s"] + statistics.median(decode_s) for run in runs
            ]
            r["round"] = _timing(round_samples)
            print(
                f"  {arm}: {r['bytes_per_param']:.3f} bytes/param/site on the wire "
                f"(payload {r['payload_bytes_per_param']:.3f}), "
                f"largest object {r['largest_object_bytes'] / 2**20:.1f} MiB, "
                f"coordinator peak RSS {r['peak_rss_bytes'] / 1e6:.0f} MB "
                f"(before the replies {r['rss_before_replies_bytes'] / 1e6:.0f} MB), max error {err:.2e}",
                flush=True,
            )
        base = results["fedavg"]
        report.baseline(
            "fedavg_round", base["round"], label="plaintext FedAvg round (site encode + coordinator fold/finish)"
        )
        report.baseline("fedavg_coord", base["coordinator"], label="plaintext FedAvg coordinator (10 replies)")
        for arm, label in (("bfv", "packed BFV 20-bit"), ("secagg", "secagg 20-bit")):
            r = results[arm]
            report.figure(
                f"{arm}_round",
                r["round"],
                label=f"{label} round (site encode + coordinator + site decode)",
                against=["fedavg_round"],
            )
            report.figure(
                f"{arm}_coord",
                r["coordinator"],
                label=f"{label} coordinator (10 replies + finish)",
                against=["fedavg_coord"],
            )
            report.figure(f"{arm}_encode", r["encode"], label=f"{label} site encode (median site)", against=[])
            if arm == "bfv":
                report.figure("bfv_decode", r["decode"], label="packed BFV 20-bit site decode (open_sum)", against=[])
        for arm, r in results.items():
            bpp_ratio = r["bytes_per_param"] / base["bytes_per_param"]
            rss_ratio = r["peak_rss_bytes"] / base["peak_rss_bytes"]
            r["bytes_ratio_vs_fedavg"], r["rss_ratio_vs_fedavg"] = bpp_ratio, rss_ratio
            print(
                f"  {arm}: bytes/param {r['bytes_per_param']:.3f} = {bpp_ratio:.2f}x plaintext FedAvg; "
                f"peak RSS {r['peak_rss_bytes'] / 1e6:.0f} MB = {rss_ratio:.2f}x plaintext FedAvg's"
            )
            met = r["peak_rss_bytes"] <= rss_goal
            report.goals[f"{arm}_coordinator_peak_rss"] = {
                "value_mb": r["peak_rss_bytes"] / 1e6,
                "at_most_mb": rss_goal / 1e6,
                "met": met,
            }
            print(
                f"goal {arm} coordinator peak RSS <= 2x model + 200 MB ({rss_goal / 1e6:.0f} MB): "
                f"{r['peak_rss_bytes'] / 1e6:.0f} MB: {'met' if met else 'NOT MET'}"
            )
            report.goals[f"{arm}_largest_object_fits_proxy"] = {
                "value_mib": r["largest_object_bytes"] / 2**20,
                "at_most_mib": PROXY_MAX_BODY / 2**20,
                "met": bool(r["fits_proxy_body"]),
            }
        report.params["results"] = results
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
