"""zmqcross._relaying: a machine reads evals and eval replies from their headers alone."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqcross import protocol as p
from zmqcross.errors import ProtocolError
from zmqcross._relaying import (
    answer_frames,
    answers_frames,
    eval_route,
    forward_eval,
    full_reply,
    read_answers,
    reply_slots,
)

pytestmark = pytest.mark.timeout(60)


def read(frames: list[bytes]) -> dict:
    return p.read_header(frames)


def test_an_eval_is_forwarded_with_its_own_id_and_deadline_and_nothing_else_changed() -> None:
    sent = p.EvalRequest(
        id=41,
        deadline=1000.5,
        function="def f(bot, c):\n    return c",
        function_name="f",
        context={"guild": 629145651778682880, "names": ["a", "é"]},
        clusters=(3, 1),
        shards=(7,),
    )
    frames = p.encode(sent)
    route = eval_route(read(frames), frames)
    assert (route.id, route.deadline, route.clusters) == (41, 1000.5, (3, 1))
    onward = p.decode(forward_eval(route, 7, 999.0))
    assert onward == p.EvalRequest(
        id=7, deadline=999.0, function=sent.function, function_name="f", context=sent.context, shards=(7,)
    )


def test_reply_slots_pass_the_result_frames_untouched() -> None:
    results = (b'{"big":"' + b"x" * 1000 + b'"}', b"2")
    frames = p.encode(
        p.EvalReply(
            reply_to=9, slots=(p.Slot(cluster=4, ok=True), p.Slot(cluster=5, ok=False)), results=results
        )
    )
    reply = reply_slots(read(frames), frames)
    assert (reply.reply_to, reply.slots) == (9, [(4, True), (5, False)])
    assert all(a is b for a, b in zip(reply.results, results, strict=True))
    assert full_reply(reply) == p.decode(frames)


answer = st.tuples(st.integers(0, 2**64 - 1), st.booleans(), st.binary(max_size=64))


@given(answers=st.lists(answer, min_size=1, max_size=20))
def test_a_clusters_answers_read_back_as_written(answers: list[tuple[int, bool, bytes]]) -> None:
    frames = answers_frames(answers)
    assert read_answers(frames) == answers
    assert all(frame is result for frame, (_, _, result) in zip(frames[1:], answers, strict=True))


def test_one_answer_is_the_fixed_ten_byte_head_and_its_result() -> None:
    frames = answer_frames(5, True, b"2")
    assert frames == answers_frames([(5, True, b"2")])
    assert len(frames[0]) == 10 and frames[1] == b"2"


def test_json_messages_are_not_answers_and_broken_answers_say_why() -> None:
    assert read_answers(p.encode(p.Heartbeat(sent_at=1.0, ready=True))) is None
    head = answers_frames([(5, True, b"2"), (6, False, b"3")])[0]
    broken = ([head], [head, b"2"], [head, b"2", b"3", b"4"], [head[:-1], b"2", b"3"], [head + b"x", b"2", b"3"])
    for frames in broken:
        with pytest.raises(ProtocolError, match="an eval answer record is a tag byte, 9 bytes per answer"):
            read_answers(frames)


@pytest.mark.parametrize(
    ("header", "body", "reader", "needle"),
    [
        (
            {"type": "eval", "id": 1, "deadline": 1, "clusters": ["a"]},
            [],
            eval_route,
            "field 'clusters' must be",
        ),
        ({"type": "eval", "id": 1}, [], eval_route, "missing the field 'deadline'"),
        ({"type": "eval", "id": 1, "deadline": 1}, [b"extra"], eval_route, "carries 0 body frame(s), not 1"),
        ({"type": "ping", "sent_at": 1}, [], eval_route, "expected an 'eval' message, not 'ping'"),
        (
            {"type": "eval_reply", "reply_to": 1, "slots": [{"cluster": 0, "ok": True}] * 2},
            [b"1"],
            reply_slots,
            "has 2 slots but 1 result frames",
        ),
        (
            {"type": "eval_reply", "reply_to": 1, "slots": [{"cluster": "0", "ok": True}]},
            [b"1"],
            reply_slots,
            "cluster",
        ),
        (
            {"type": "reply", "reply_to": 1},
            [b"1"],
            reply_slots,
            "expected an 'eval_reply' message, not 'reply'",
        ),
    ],
)
def test_malformed_ones_get_the_error_decode_gives(
    header: dict, body: list[bytes], reader, needle: str
) -> None:
    frames = [orjson.dumps(header), *body]
    with pytest.raises(ProtocolError) as info:
        reader(read(frames), frames)
    assert needle in info.value.message


json_leaf = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=3)
ints = st.lists(st.integers(0, 9), max_size=3)
slots = st.lists(st.fixed_dictionaries({"cluster": st.integers(0, 9), "ok": st.booleans()}), max_size=3)
valid_eval = st.fixed_dictionaries(
    {"type": st.just("eval"), "id": st.integers(0, 99), "deadline": st.integers(0, 9) | st.floats(0, 9)},
    optional={
        "script": st.text(max_size=3),
        "context": json_leaf,
        "clusters": ints,
        "shards": ints,
        "guild_id": st.integers(0, 9),
        "function": st.text(max_size=3),
        "function_name": st.text(max_size=3),
    },
)
valid_reply = st.fixed_dictionaries(
    {"type": st.just("eval_reply"), "reply_to": st.integers(0, 99), "slots": slots}
)
field_values = json_leaf | st.lists(st.integers(0, 9) | json_leaf, max_size=3) | slots
damage = st.dictionaries(
    st.sampled_from(["id", "deadline", "script", "context", "clusters", "guild_id", "reply_to", "slots"]),
    field_values,
    max_size=2,
)
# Valid headers with up to two fields replaced, and about as many body frames as they need.
eval_headers = st.tuples(valid_eval | valid_reply, st.just({}) | damage, st.integers(-1, 1)).map(
    lambda t: ({**t[0], **t[1]}, max(0, len(t[0].get("slots", [])) + t[2]))
)


@settings(max_examples=500, deadline=None)
@given(eval_headers)
def test_the_readers_accept_exactly_what_decode_accepts(case: tuple[dict, int]) -> None:
    header, frame_count = case
    frames = [orjson.dumps(header), *(b"%d" % i for i in range(frame_count))]
    reader = eval_route if header["type"] == "eval" else reply_slots
    try:
        expected = p.decode(frames)
    except ProtocolError as exc:
        with pytest.raises(ProtocolError) as info:
            reader(read(frames), frames)
        assert info.value.message == exc.message
        return
    got = reader(read(frames), frames)
    if isinstance(expected, p.EvalRequest):
        assert (got.id, got.deadline, got.clusters) == (expected.id, expected.deadline, expected.clusters)
    else:
        assert isinstance(expected, p.EvalReply)
        assert got.slots == [(s.cluster, s.ok) for s in expected.slots]
        assert tuple(got.results) == expected.results
