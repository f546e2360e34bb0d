"""The site's replay cache: only a byte-identical replay of a round is free (issue 20).

:mod:`fedinfra.site.replay` stores each reply, keyed by run, round and the digest of the
global model it was trained from, before the reply leaves. A request for the same (run,
round, model) is answered with the stored release - post-processing of an output already
published, so it costs no privacy budget (Dwork & Roth 2014, Prop. 2.1) - and anything
else is trained and accounted again (sequential composition, Thm. 3.16). An unreadable
file must therefore read as *absent* (train and spend again: over-counting, never
under-counting), and a reply must come back exactly as it was sent.

These tests call ``store``, ``load`` and ``model_digest`` directly, without training; the
end-to-end replay through :func:`fedinfra.site.round.run_round` is in test_site_replay.py.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from fedinfra.config.wire import TrainReport
from fedinfra.site import replay
from fedinfra.site.home import SiteHome

RUN = "run-1"
DIGEST = "a" * 64
OTHER = "b" * 64


@pytest.fixture
def home(tmp_path: Path) -> SiteHome:
    return SiteHome(root=tmp_path / "home", kit=None)


def _report(rnd: int = 1, loss: float = 0.25) -> TrainReport:
    return TrainReport(
        site="site-a",
        round=rnd,
        num_examples=128,
        train_loss=loss,
        details={"epsilon_total": 1.5, "clipped": 3},
        run_id=RUN,
        model_digest=DIGEST,
    )


def _update() -> dict[str, np.ndarray]:
    return {
        "layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "layer.bias": np.array([-1.5, 2.25], dtype=np.float64),
        "steps": np.array([3], dtype=np.int64),
    }


def _reply_file(home: SiteHome, rnd: int = 1) -> Path:
    """Where a site keeps round ``rnd``'s reply: what a restarted site reads back."""
    return home.run_dir(RUN) / "replies" / f"round-{rnd:06d}.npz"


def _write_npz(path: Path, meta: object | None, **arrays: np.ndarray) -> None:
    """A reply file written by hand (an older or damaged site's file)."""
    if meta is not None:
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


# -- a stored reply comes back exactly --------------------------------------------------------


def test_a_stored_reply_comes_back_bit_identical(home: SiteHome) -> None:
    update, blob = _update(), bytes(range(256)) * 3
    replay.store(home, RUN, DIGEST, _report(), update=update, blob=blob, blob_kind="ciphertext")

    loaded = replay.load(home, RUN, 1, DIGEST)

    assert loaded is not None
    report, got, got_blob, kind = loaded
    assert report == _report()
    assert got is not None
    assert sorted(got) == sorted(update)
    for name, arr in update.items():
        assert got[name].dtype == arr.dtype
        assert got[name].shape == arr.shape
        assert got[name].tobytes() == arr.tobytes()
    assert got_blob == blob
    assert kind == "ciphertext"


def test_a_reply_without_update_or_blob_comes_back_without_them(home: SiteHome) -> None:
    replay.store(home, RUN, DIGEST, _report(), update=None, blob=None, blob_kind="")

    assert replay.load(home, RUN, 1, DIGEST) == (_report(), None, None, "")


def test_a_compressed_reply_keeps_its_kind_and_has_no_update(home: SiteHome) -> None:
    replay.store(home, RUN, DIGEST, _report(), update=None, blob=b"\x00\x01zz", blob_kind="compressed")

    assert replay.load(home, RUN, 1, DIGEST) == (_report(), None, b"\x00\x01zz", "compressed")


# -- only the same (run, round, model) is replayed ------------------------------------------------


def test_nothing_stored_is_no_reply(home: SiteHome) -> None:
    assert replay.load(home, RUN, 1, DIGEST) is None


def test_a_reply_is_replayed_only_for_its_run_round_and_model(home: SiteHome) -> None:
    replay.store(home, RUN, DIGEST, _report(rnd=2), update=_update(), blob=None, blob_kind="")

    assert replay.load(home, RUN, 2, DIGEST) is not None
    assert replay.load(home, RUN, 2, OTHER) is None  # another model: a new release
    assert replay.load(home, RUN, 1, DIGEST) is None
    assert replay.load(home, RUN, 3, DIGEST) is None
    assert replay.load(home, RUN, 20, DIGEST) is None
    assert replay.load(home, "run-2", 2, DIGEST) is None


def test_a_new_release_of_a_round_replaces_the_old_one(home: SiteHome) -> None:
    replay.store(home, RUN, DIGEST, _report(loss=0.25), update=_update(), blob=None, blob_kind="")
    replay.store(home, RUN, OTHER, _report(loss=0.5), update=None, blob=b"new", blob_kind="compressed")

    assert replay.load(home, RUN, 1, DIGEST) is None
    assert replay.load(home, RUN, 1, OTHER) == (_report(loss=0.5), None, b"new", "compressed")


def test_the_reply_file_is_private_to_the_site_and_nothing_else_is_left(home: SiteHome) -> None:
    replay.store(home, RUN, DIGEST, _report(rnd=7), update=_update(), blob=b"x", blob_kind="compressed")

    path = _reply_file(home, 7)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_temp_file_left_by_a_crashed_store_does_not_spoil_the_next(home: SiteHome) -> None:
    # A crash between open and rename leaves a longer temp file; the next store starts it afresh.
    leftover = _reply_file(home).with_suffix(".tmp")
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(os.urandom(1 << 20))

    replay.store(home, RUN, DIGEST, _report(), update=_update(), blob=None, blob_kind="")

    assert replay.load(home, RUN, 1, DIGEST) is not None


# -- an unreadable or foreign file is absent (the round is trained and accounted again) ----------


def test_a_reply_of_format_1_without_a_blob_kind_is_read(home: SiteHome) -> None:
    meta = {"format": 1, "digest": DIGEST, "report": _report().model_dump(mode="json")}
    _write_npz(_reply_file(home), meta, **{"u:w": np.ones(3, np.float32)})

    loaded = replay.load(home, RUN, 1, DIGEST)

    assert loaded is not None
    report, update, blob, kind = loaded
    assert report == _report()
    assert update is not None
    assert np.array_equal(update["w"], np.ones(3, np.float32))
    assert (blob, kind) == (None, "")


def _meta(**change: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "format": 1,
        "digest": DIGEST,
        "report": _report().model_dump(mode="json"),
        "blob_kind": "",
    }
    meta.update(change)
    return meta


@pytest.mark.parametrize(
    "damage",
    [
        "empty",  # EOFError
        "truncated",  # zipfile.BadZipFile
        "not npz",  # ValueError
        "a directory",  # OSError
        "no meta",  # KeyError
        "meta not json",  # ValueError (JSONDecodeError)
        "report invalid",  # ValueError (pydantic ValidationError)
        "report missing",  # KeyError
        "format 2",
        "format missing",
        "digest missing",
    ],
)
def test_an_unreadable_or_foreign_reply_file_reads_as_absent(home: SiteHome, damage: str) -> None:
    path = _reply_file(home)
    if damage in {"empty", "truncated", "not npz", "a directory"}:
        replay.store(home, RUN, DIGEST, _report(), update=_update(), blob=b"b", blob_kind="compressed")
        data = path.read_bytes()
        if damage == "empty":
            path.write_bytes(b"")
        elif damage == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif damage == "not npz":
            path.write_bytes(b"this is not a reply" * 10)
        else:
            path.unlink()
            path.mkdir()
    elif damage == "no meta":
        _write_npz(path, None, **{"u:w": np.ones(3, np.float32)})
    elif damage == "meta not json":
        _write_npz(path, None, __meta__=np.frombuffer(b"{not json", dtype=np.uint8))
    elif damage == "report invalid":
        _write_npz(path, _meta(report={**_report().model_dump(mode="json"), "round": 0}))
    elif damage == "report missing":
        meta = _meta()
        del meta["report"]
        _write_npz(path, meta)
    elif damage == "format 2":
        _write_npz(path, _meta(format=2))
    elif damage == "format missing":
        meta = _meta()
        del meta["format"]
        _write_npz(path, meta)
    else:
        meta = _meta()
        del meta["digest"]
        _write_npz(path, meta)

    assert replay.load(home, RUN, 1, DIGEST) is None


def test_a_reply_file_holding_a_pickled_object_is_absent_and_never_unpickled(home: SiteHome) -> None:
    # The reply file is read back with allow_pickle=False: an object array would run code on load.
    _write_npz(_reply_file(home), _meta(), **{"u:w": np.array([{"a": 1}], dtype=object)})

    assert replay.load(home, RUN, 1, DIGEST) is None


# -- the model digest -------------------------------------------------------------------------


def _model() -> dict[str, np.ndarray]:
    return {
        "fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 3,
        "fc.bias": np.array([0.5, -0.25, 1.0], dtype=np.float32),
    }


def test_the_model_digest_is_pinned() -> None:
    # The digest keys the stored replies on disk: a digest that changed between versions of the
    # site would make a resumed run train (and spend) a round again.
    assert replay.model_digest(_model()) == "2b4745f18e45067b54210794a05a61135f22ef4fbeee3fd995334fb8f4babea6"


def test_the_model_digest_does_not_depend_on_the_order_of_the_names() -> None:
    model = _model()
    reordered = {name: model[name] for name in reversed(list(model))}

    assert list(reordered) != list(model)
    assert replay.model_digest(reordered) == replay.model_digest(model)


def test_the_model_digest_changes_with_any_value() -> None:
    model = _model()
    changed = {**model, "fc.bias": model["fc.bias"].copy()}
    changed["fc.bias"][2] = np.nextafter(np.float32(1.0), np.float32(2.0))

    assert replay.model_digest(changed) != replay.model_digest(model)


def test_the_model_digest_of_a_strided_view_is_that_of_its_values() -> None:
    model = _model()
    view = {**model, "fc.weight": np.asfortranarray(model["fc.weight"])}

    assert replay.model_digest(view) == replay.model_digest(model)
