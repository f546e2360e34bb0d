"""Binary payloads in segments (fedinfra.aggregation.blobs): every Flower object stays small,
the bytes come back exactly, and a hostile record is refused by name before it is joined."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from fedinfra.aggregation import blobs
from fedinfra.aggregation.blobs import SEGMENT_BYTES, STYPE, BlobError
from fedinfra.config.wire import CONFIG, DOC, HE_UPDATE
from fedinfra.coordinator import intake

pytestmark = pytest.mark.usefixtures("flower_run")

S = SEGMENT_BYTES


def _payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def _segment(data: bytes, **change: object) -> Array:
    fields: dict[str, object] = {"dtype": "uint8", "shape": (len(data),), "stype": STYPE, "data": data}
    fields.update(change)
    return Array(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, S - 1, S, S + 1, 3 * S + 5])
def test_a_payload_round_trips_in_segments_of_at_most_the_segment_size(n: int) -> None:
    data = _payload(n)
    records: dict[str, object] = {}
    blobs.put(records, HE_UPDATE, data)
    record = records["blob:he.update"]
    assert isinstance(record, ArrayRecord)
    sizes = [len(a.data) for a in record.values()]
    assert list(record.keys()) == [f"{i:06d}" for i in range(-(-n // S))]
    assert all(0 < s <= S for s in sizes)
    assert sum(sizes) == n
    assert blobs.take(records, HE_UPDATE, limit=n) == data


def test_through_flower_objects_no_object_grows_with_the_payload() -> None:
    """Deflated as Flower 1.41 pushes a message (one object per body), then inflated from those contents."""
    data = _payload(5 * S + 123, seed=1)
    records: dict[str, object] = {CONFIG: ConfigRecord({DOC: "{}"})}
    blobs.put(records, HE_UPDATE, data)
    msg = Message(RecordDict(records), dst_node_id=1, message_type="train")
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    assert max(len(c) for c in contents.values()) < S + 1024  # a segment and its object header
    back = inflate_object_from_contents(msg.object_id, contents)
    assert isinstance(back, Message)
    assert blobs.take(back.content.array_records, HE_UPDATE, limit=len(data)) == data


def test_one_byte_over_the_bound_is_refused_before_the_join_and_the_bound_itself_is_accepted() -> None:
    data = _payload(2 * S + 7)
    records: dict[str, object] = {}
    blobs.put(records, HE_UPDATE, data)
    assert blobs.take(records, HE_UPDATE, limit=len(data)) == data
    with pytest.raises(BlobError) as err:
        blobs.take(records, HE_UPDATE, limit=len(data) - 1)
    assert err.value.check == "reply.he.update:too_long"


def test_an_absent_payload_is_none_and_an_empty_one_is_never_sent() -> None:
    assert blobs.take({}, HE_UPDATE, limit=10) is None
    with pytest.raises(ValueError, match="empty payload"):
        blobs.to_record(b"")


@pytest.mark.parametrize(
    "record",
    [
        ArrayRecord({}),  # no segment
        ArrayRecord({"000001": _segment(b"ab")}),  # does not start at 0
        ArrayRecord({"000000": _segment(b"ab"), "000002": _segment(b"cd")}),  # a gap
        ArrayRecord({"000001": _segment(b"cd"), "000000": _segment(b"ab")}),  # out of order
        ArrayRecord({"0": _segment(b"ab")}),  # not six digits
        ArrayRecord({"000000": _segment(b"ab", dtype="int8")}),
        ArrayRecord({"000000": _segment(b"ab", stype="numpy.ndarray")}),
        ArrayRecord({"000000": _segment(b"ab", shape=(3,))}),  # declared shape is not the length
        ArrayRecord({"000000": _segment(b"ab", shape=(1, 2))}),
        ArrayRecord({"000000": _segment(b"")}),  # an empty segment
        ArrayRecord({"000000": _segment(b"\0" * (S + 1))}),  # longer than a segment may be
        ArrayRecord({"000000": Array(np.arange(4, dtype=np.uint8))}),  # an .npy array, not raw bytes
    ],
    ids=["empty", "from-1", "gap", "order", "name", "dtype", "stype", "shape", "2d", "empty-seg", "oversize", "npy"],
)
def test_a_malformed_record_is_refused_by_name(record: ArrayRecord) -> None:
    with pytest.raises(BlobError) as err:
        blobs.take({"blob:he.update": record}, HE_UPDATE, limit=2 * S)
    assert err.value.check == "reply.he.update:malformed"


def test_a_list_payload_reads_back_in_order_and_no_more_items_than_allowed() -> None:
    items = [_payload(n, seed=i) for i, n in enumerate((10, 12, 10))]
    records: dict[str, object] = {}
    blobs.put_list(records, "he.aggregates", items)
    assert blobs.take_list(records, "he.aggregates", limit=12, most=3) == items
    assert blobs.take_list({}, "he.aggregates", limit=12, most=3) == []
    with pytest.raises(BlobError, match=r"reply\.he\.aggregates:too_many"):
        blobs.take_list(records, "he.aggregates", limit=12, most=2)
    with pytest.raises(BlobError, match=r"reply\.he\.aggregates#1:too_long"):
        blobs.take_list(records, "he.aggregates", limit=11, most=3)
    del records["blob:he.aggregates#1"]  # a gap ends the list: item 2 is not read
    assert blobs.take_list(records, "he.aggregates", limit=12, most=3) == items[:1]


def _reply(records: dict[str, object]) -> Message:
    req = Message(RecordDict({}), dst_node_id=1, message_type="train")
    req.metadata.__dict__["_message_id"] = "1" * 64
    return Message(RecordDict(records), reply_to=req)


def test_the_coordinator_reads_a_payload_only_from_its_segments_and_within_its_bound() -> None:
    data = _payload(S + 9)
    records: dict[str, object] = {CONFIG: ConfigRecord({DOC: "{}", "other": 3})}
    blobs.put(records, HE_UPDATE, data)
    config = intake.reply_config(_reply(records), {HE_UPDATE: len(data)})
    assert config == {DOC: "{}", "other": 3, HE_UPDATE: data}
    with pytest.raises(intake.Rejected) as err:
        intake.reply_config(_reply(records), {HE_UPDATE: len(data) - 1})
    assert err.value.check == "reply.he.update:too_long"
    # The old wire format (the payload as a config value) is dropped, never read.
    smuggled = {CONFIG: ConfigRecord({DOC: "{}", HE_UPDATE: data})}
    assert HE_UPDATE not in intake.reply_config(_reply(smuggled), {HE_UPDATE: len(data)})
    # A payload the round does not expect is not joined.
    assert HE_UPDATE not in intake.reply_config(_reply(records), {})


def test_compressed_update_bound_is_the_longest_encoding_of_the_model() -> None:
    from fedinfra.aggregation.compression import UpdateCompressor, encode

    layout = (("w", (70, 3)), ("b", (3,)))
    n = 213
    bound = intake.compressed_update_bound(layout)
    rng = np.random.default_rng(0)
    update = {"w": rng.normal(size=(70, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    dense16 = encode(UpdateCompressor(clip=1.0, bits=16, rng=np.random.default_rng(0)).compress(update))
    assert len(dense16) <= bound < len(dense16) + (n + 7) // 8 + 1


def test_a_record_of_another_kind_under_a_payload_name_is_malformed() -> None:
    with pytest.raises(BlobError) as err:
        blobs.take({"blob:he.update": ConfigRecord({"000000": b"ab"})}, HE_UPDATE, limit=2 * S)
    assert err.value.check == "reply.he.update:malformed"


def test_the_empty_payload_error_says_to_send_none() -> None:
    with pytest.raises(ValueError, match=r"^an empty payload has no segments; send none instead$"):
        blobs.to_record(b"")


def test_the_segment_count_may_reach_but_not_exceed_its_most(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scaled down (4-byte segments, at most 2): the same arithmetic as 4 MiB and 10^6 segments."""
    monkeypatch.setattr(blobs, "SEGMENT_BYTES", 4)
    monkeypatch.setattr(blobs, "MAX_SEGMENTS", 2)
    record = blobs.to_record(b"abcdefgh")
    assert list(record.keys()) == ["000000", "000001"]
    assert blobs.take({"blob:k": record}, "k", limit=8) == b"abcdefgh"
    with pytest.raises(ValueError, match=r"^payload of 9 bytes needs more than 2 segments$"):
        blobs.to_record(b"abcdefghi")
    three = ArrayRecord({f"{i:06d}": _segment(b"ab") for i in range(3)})
    with pytest.raises(BlobError) as err:
        blobs.take({"blob:k": three}, "k", limit=100)
    assert err.value.check == "reply.k:malformed"


def test_the_segment_names_have_room_for_every_segment_allowed() -> None:
    assert len(f"{blobs.MAX_SEGMENTS - 1:06d}") == 6
    assert len(f"{blobs.MAX_SEGMENTS:06d}") > 6


def test_a_list_item_of_several_segments_reads_back_whole() -> None:
    items = [_payload(S + 1, seed=3), _payload(5, seed=4), _payload(2 * S + 3, seed=5)]
    records: dict[str, object] = {}
    blobs.put_list(records, "he.aggregates", items)
    assert [len(records[f"blob:he.aggregates#{i}"]) for i in range(3)] == [2, 1, 3]  # type: ignore[arg-type]
    assert blobs.take_list(records, "he.aggregates", limit=2 * S + 3, most=3) == items


@pytest.mark.parametrize("shape", [(1,), (8,), (213,), (72, 3)])
def test_compressed_update_bound_is_reached_by_a_sparse_update_naming_every_position(shape: tuple[int, ...]) -> None:
    """The longest a decodable encoding gets: 16-bit values at every position, sent with a bitmap."""
    from fedinfra.aggregation.compression import CompressedUpdate, decode, encode, layout_digest

    layout = (("w", shape),)
    n = int(np.prod(shape))
    full = CompressedUpdate(
        bits=16,
        step=1.0 / 32767,
        dim=n,
        digest=layout_digest(layout),
        values=np.full(n, -32767, dtype=np.int64),
        indices=np.arange(n, dtype=np.uint32),
    )
    blob = encode(full)
    assert decode(blob).indices is not None  # a well-formed reply, positions as a bitmap
    assert len(blob) == intake.compressed_update_bound(layout)


def test_a_reply_without_a_config_record_yields_only_its_payloads() -> None:
    data = _payload(33)
    records: dict[str, object] = {}
    blobs.put(records, HE_UPDATE, data)
    assert intake.reply_config(_reply(records), {HE_UPDATE: 33}) == {HE_UPDATE: data}
    assert intake.reply_config(_reply({}), {HE_UPDATE: 33}) == {}
