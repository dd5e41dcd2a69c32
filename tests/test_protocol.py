"""The wire protocol, fed frames directly: round trips, every rejection, fuzzing."""

from __future__ import annotations

import dataclasses
import typing

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqcross import protocol as p
from zmqcross.errors import MessageTooLarge, ProtocolError, RemoteError, SerializationError

SAMPLES: list[p.Message] = [
    p.Register(
        id=1,
        deadline=10.5,
        protocol=1,
        token="tok",
        machine_id="m1",
        agent="bot",
        initial_data={"a": [1, 2]},
        hosting=p.Hosting(plan_version="v", total_shards=4, cluster_list=(0, 1), shard_list=((0, 1), (2, 3))),
    ),
    p.Welcome(
        reply_to=1,
        client_id="m1",
        epoch="e",
        heartbeat_interval=1.0,
        heartbeat_timeout=4.0,
        permissions=("eval", "request"),
        plan_version="v",
        notice="hello",
    ),
    p.Ping(sent_at=1.25),
    p.Pong(sent_at=1.25),
    p.Ping(sent_at=1.25, mono=88.5),
    p.Pong(sent_at=1.25, mono=88.5, lease=10.0),
    p.Reregister(reason="restarted", reply_to=7),
    p.Goodbye(reason="bye", retry=False),
    p.Beacon(epoch="e", seq=3, plan_version=None),
    p.Send(data=b'{"x":1}'),
    p.Request(id=9, deadline=2.0, data=b"[1,2]", target="m2", origin="m1"),
    p.ShardDataRequest(id=4, deadline=3.0, max_clusters=2),
    p.Reply(reply_to=9, data=b'"ok"'),
    p.ErrorReply(
        reply_to=9, error=p.ErrorInfo(code="remote", type="KeyError", message="'x'", traceback="tb")
    ),
    p.EvalRequest(id=5, deadline=4.0, script="len(bot.guilds)", context={"q": '"'}, clusters=(0, 2)),
    p.EvalReply(
        reply_to=5, slots=(p.Slot(cluster=0, ok=True), p.Slot(cluster=2, ok=False)), results=(b"1", b"{}")
    ),
    p.GuildRequest(id=6, deadline=5.0, guild_id=(150000000000 + 1) << 22, data=b"{}"),
    p.Heartbeat(sent_at=1.0, ready=True, guilds=1250),
    p.Heartbeat(sent_at=1.0, ready=False, guilds=0, waiting="IDENTIFY of shard 3 queued at the bridge"),
    p.Lease(until=1234.5),
    p.Handover(step="retired", cluster_id=3, plan_version="v2", fingerprints=b"\x01" * 16),
    p.Assignment(
        total_shards=8,
        shard_list=((0, 1),),
        cluster_list=(0,),
        total_clusters=4,
        plan_version="v",
        reason="failover",
    ),
    p.Leaving(reason="SIGTERM"),
    p.Batch(sizes=(1, 2), frames=(b'{"type":"ping","sent_at":1.0}', b'{"type":"send"}', b"{}")),
]


def test_every_kind_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(typing.get_args(p.Message))


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.type)
def test_round_trip(msg: p.Message) -> None:
    frames = p.encode(msg)
    assert all(isinstance(f, bytes) for f in frames)
    assert orjson.loads(frames[0])["type"] == msg.type
    assert p.decode(frames) == msg


def test_body_frames_travel_untouched() -> None:
    payload = orjson.dumps({"big": "x" * 1000})
    frames = p.encode(p.Reply(reply_to=1, data=payload))
    assert frames[1] is payload  # relays forward these bytes; nothing re-encodes them


def test_optional_fields_are_omitted_and_defaulted() -> None:
    frames = p.encode(p.Request(id=1, deadline=1.0, data=b"1"))
    assert orjson.loads(frames[0]) == {"type": "request", "id": 1, "deadline": 1.0}
    assert p.decode([b'{"type":"goodbye","reason":"x"}']).retry is True  # type: ignore[union-attr]


def test_integer_is_accepted_where_a_number_is_expected() -> None:
    assert p.decode([b'{"type":"ping","sent_at":3}']) == p.Ping(sent_at=3.0)


@pytest.mark.parametrize(
    ("frames", "needle", "request_id"),
    [
        ([], "empty message", None),
        ([b"\xff\x00garbage"], "not valid JSON", None),
        ([b"[1,2]"], "must be a JSON object", None),
        ([b'{"type":"launch_missiles","id":5}'], "unknown message type 'launch_missiles'", 5),
        ([b'{"id":5}'], "unknown message type None", 5),
        ([b'{"type":"request","id":2,"deadline":1}'], "carries 1 body frame(s), not 0", 2),
        ([b'{"type":"request","id":2,"deadline":1}', b"1", b"2"], "not 2", 2),
        ([b'{"type":"request","id":2}', b"1"], "missing the field 'deadline'", 2),
        (
            [b'{"type":"request","id":2,"deadline":"soon"}', b"1"],
            "field 'deadline' must be a number, not 'soon'",
            2,
        ),
        (
            [b'{"type":"request","id":true,"deadline":1}', b"1"],
            "field 'id' must be an integer, not True",
            None,
        ),
        (
            [
                b'{"type":"welcome","reply_to":1,"client_id":"c","epoch":"e","heartbeat_interval":1,'
                b'"heartbeat_timeout":2,"permissions":"all"}'
            ],
            "field 'permissions' must be a list of str",
            None,
        ),
        ([b'{"type":"error","error":{"code":"remote","type":"X"}}'], "missing the field 'message'", None),
        (
            [
                b'{"type":"register","id":1,"deadline":1,"protocol":1,"token":"t","machine_id":"m","agent":"a",'
                b'"hosting":{"plan_version":"v","total_shards":1,"cluster_list":[0],"shard_list":[["0"]]}}'
            ],
            "field 'hosting'",
            1,
        ),
    ],
)
def test_rejections_say_what_is_wrong(frames: list[bytes], needle: str, request_id: int | None) -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode(frames)
    assert needle in str(info.value)
    assert info.value.request_id == request_id


def test_eval_reply_needs_a_frame_per_slot() -> None:
    header = orjson.dumps({"type": "eval_reply", "reply_to": 1, "slots": [{"cluster": 0, "ok": True}] * 2})
    with pytest.raises(ProtocolError, match="has 2 slots but 1 result frames"):
        p.decode([header, b"1"])


def test_batches_pack_small_messages_in_order_and_send_big_ones_alone() -> None:
    small = [p.encode(p.Reply(reply_to=i, data=b"1")) for i in range(p.BATCH_MESSAGES + 3)]
    big = p.encode(p.Reply(reply_to=-1, data=b"x" * p.BATCH_BYTES))
    sent = p.batches([small[0], big, *small[1:]])
    assert sent[0] == small[0] and sent[1] is big  # a lone message is not wrapped
    first, second = (p.decode(frames) for frames in sent[2:])
    assert isinstance(first, p.Batch) and isinstance(second, p.Batch)
    inner = [p.decode(frames) for batch in (first, second) for frames in batch.messages()]
    assert [m.reply_to for m in inner] == list(range(1, p.BATCH_MESSAGES + 3))  # type: ignore[union-attr]
    assert len(first.sizes) == p.BATCH_MESSAGES


@pytest.mark.parametrize(
    ("sizes", "frames", "needle"),
    [
        ([], [], "carries 1 to 256 messages, not 0"),
        ([2], [b"{}"], "a 'batch' of 1 frames cannot hold messages of [2] frames"),
        ([0, 1], [b"{}"], "cannot hold messages of [0, 1] frames"),
        ([1] * 257, [b"{}"] * 257, "carries 1 to 256 messages, not 257"),
    ],
)
def test_bad_batches_are_refused(sizes: list[int], frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode([orjson.dumps({"type": "batch", "sizes": sizes}), *frames])
    assert needle in str(info.value)


def test_readdress_keeps_the_body_and_turns_errors_into_replies() -> None:
    body = b'{"big": 1}'
    moved = p.readdress(p.Reply(reply_to=1, data=body), 99)
    assert moved == p.Reply(reply_to=99, data=body) and moved.data is body
    failed = p.readdress(RemoteError("boom"), 7)
    assert isinstance(failed, p.ErrorReply) and failed.reply_to == 7 and failed.error.message == "boom"


def test_an_answer_over_the_limits_becomes_an_error_saying_so() -> None:
    limits = p.Limits(max_frames=8, max_frame_bytes=1000, max_message_bytes=1500, max_header_bytes=1000)
    slots = (p.Slot(cluster=0, ok=True), p.Slot(cluster=1, ok=True))
    gathered = p.EvalReply(reply_to=5, slots=slots, results=(b"1" * 900, b"2" * 900))  # each part fits
    answer = p.decode(p.answer_frames(gathered, limits))
    assert isinstance(answer, p.ErrorReply) and answer.reply_to == 5
    error = answer.error.to_exception()
    assert isinstance(error, MessageTooLarge)
    assert "the answer to request 5 is too large to send: message is" in error.message
    small = p.Reply(reply_to=1, data=b"1")
    assert p.answer_frames(small, limits) == p.encode(small)
    with pytest.raises(MessageTooLarge, match="frame 1 is 2000 bytes"):  # not an answer: the sender hears it
        p.answer_frames(p.Request(id=1, deadline=1.0, data=b"x" * 2000), limits)


def test_limits_are_checked_before_parsing() -> None:
    limits = p.Limits(max_frames=3, max_frame_bytes=100, max_message_bytes=150, max_header_bytes=50)
    header = p.encode(p.Send(data=b"1"))[0]
    with pytest.raises(MessageTooLarge, match="4 frames; the limit is 3"):
        p.decode([header, b"1", b"2", b"3"], limits)
    with pytest.raises(MessageTooLarge, match="frame 1 is 101 bytes"):
        p.decode([header, b"1" * 101], limits)
    with pytest.raises(MessageTooLarge, match=r"message is \d+ bytes; the limit is 150"):
        p.decode([header, b"1" * 90, b"2" * 90], limits)
    with pytest.raises(MessageTooLarge, match="header is 60 bytes"):
        p.decode([b" " * 58 + b"{}", b"1"], limits)
    assert p.decode([header, b"1" * 90], limits) == p.Send(data=b"1" * 90)


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="max_frames must be a positive integer"):
        p.Limits(max_frames=0)
    with pytest.raises(ValueError, match="cannot exceed"):
        p.Limits(max_frame_bytes=10, max_header_bytes=20)


def test_dump_and_load() -> None:
    assert p.load(p.dump({1: {"a"}, "k": (1, 2)})) == {"1": ["a"], "k": [1, 2]}
    with pytest.raises(
        SerializationError, match="cannot send this value as JSON: a builtins.object is not JSON data"
    ):
        p.dump({"x": object()})
    with pytest.raises(ProtocolError, match="body frame is not valid JSON"):
        p.load(b"{nope")


def test_error_info_carries_the_remote_traceback() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        info = p.ErrorInfo.from_exception(exc)
    assert info.code == "remote" and info.type == "KeyError"
    assert info.traceback is not None and "test_error_info_carries_the_remote_traceback" in info.traceback
    again = p.decode(p.encode(p.ErrorReply(reply_to=1, error=info)))
    error = again.error.to_exception()  # type: ignore[union-attr]
    assert isinstance(error, RemoteError)
    assert error.remote_type == "KeyError"
    assert "Remote traceback" in str(error) and '{}["missing"]' in str(error)


# ------------------------------------------------------------------ fuzzing

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
kinds = st.sampled_from(sorted(p._KINDS) + ["nope", ""])  # noqa: SLF001 - the fuzzer aims at real kinds
headers = st.dictionaries(
    st.sampled_from(
        [
            "type",
            "id",
            "deadline",
            "data",
            "reply_to",
            "error",
            "reason",
            "sent_at",
            "token",
            "machine_id",
            "agent",
            "protocol",
            "hosting",
            "epoch",
            "seq",
            "permissions",
            "client_id",
            "heartbeat_interval",
            "heartbeat_timeout",
            "retry",
            "max_clusters",
        ]
    ),
    json_values,
    max_size=10,
).flatmap(lambda h: kinds.map(lambda k: {**h, "type": k}))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_fuzz_random_bytes_only_raise_protocol_error(frames: list[bytes]) -> None:
    try:
        p.decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=600, deadline=None)
@given(headers, st.lists(st.binary(max_size=16), max_size=3))
def test_fuzz_plausible_headers_only_raise_protocol_error(header: dict, body: list[bytes]) -> None:
    try:
        msg = p.decode([orjson.dumps(header), *body])
    except ProtocolError:
        return
    assert p.decode(p.encode(msg)) == msg  # whatever decodes re-encodes to the same message


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**40), st.floats(0, 1e10), json_values, st.binary(max_size=64))
def test_fuzz_valid_messages_round_trip(ident: int, deadline: float, data: object, blob: bytes) -> None:
    for msg in (
        p.Request(id=ident, deadline=deadline, data=blob),
        p.Reply(reply_to=ident, data=orjson.dumps(data)),
        p.Register(
            id=ident, deadline=deadline, protocol=1, token="t", machine_id="m", agent="a", initial_data=data
        ),
    ):
        assert p.decode(p.encode(msg)) == msg


def test_encode_each_equals_encoding_each_variant_alone() -> None:
    msg = p.EvalRequest(id=3, deadline=9.5, script="1+1", context={"k": [1, 2]}, guild_id=77)
    shares = [(0, 1), (4,), ()]
    expected = [p.decode(p.encode(dataclasses.replace(msg, clusters=share))) for share in shares]
    assert [p.decode(frames) for frames in p.encode_each(msg, "clusters", shares)] == expected


def test_encode_each_with_other_fields_set_or_cleared_equals_a_replaced_message() -> None:
    # The bridge re-addresses a caller's eval (its own id and deadline, no target list)
    # while it encodes it: the same bytes as encoding the replaced message.
    msg = p.EvalRequest(id=3, deadline=9.5, script="1+1", shards=(1, 2), clusters=(5,), context=[1])
    shares = [(0, 1), (4,)]
    expected = [
        p.decode(p.encode(dataclasses.replace(msg, id=8, deadline=4.25, shards=None, clusters=share)))
        for share in shares
    ]
    encoded = p.encode_each(msg, "clusters", shares, id=8, deadline=4.25, shards=None)
    assert [p.decode(frames) for frames in encoded] == expected
    with pytest.raises(TypeError, match="'eval' message has no field 'guild'"):
        p.encode_each(msg, "clusters", shares, guild=1)


def test_encode_each_refuses_what_encode_refuses() -> None:
    deep: object = []
    for _ in range(300):
        deep = [deep]
    msg = p.EvalRequest(id=3, deadline=9.5, script="1+1", context=deep)
    with pytest.raises(SerializationError):
        p.encode_each(msg, "clusters", [(0,)])
