"""The relay core without a bridge: frames in on a real DEALER and real pipes, what it writes read back.

The test plays both neighbours of a machine's hot path: a ROUTER on loopback stands in for
the bridge, and the far ends of real ``multiprocessing`` pipes stand in for the clusters
(read and written here, synchronously). In between run the real pieces, on their own core
thread: :class:`SocketLink`, :class:`PipeConn` and :class:`ClusterRelay`.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson
import pytest
import zmq

from zmqcross._records import RecordReader, pack
from zmqcross._relaying import answer_frames, answers_frames, eval_route
from zmqcross.errors import ConnectionLost, ProtocolError
from zmqcross.protocol import (
    DEFAULT_LIMITS,
    EvalReply,
    EvalRequest,
    GuildRequest,
    Handover,
    Heartbeat,
    Message,
    Reply,
    decode,
    decode_header,
    dump,
    encode,
    load,
    read_header,
)
from zmqcross.relay import ClusterRelay, PipeConn, RelayCore, RouteTable, Serving, SocketLink

pytestmark = pytest.mark.timeout(30)

GUILD_ON_SHARD_1 = 1 << 22  # shard 1 of 2


class Cluster:
    """The far end of one pipe, played by the test: reads what the relay wrote, writes answers."""

    def __init__(self, end: Connection) -> None:
        self.end = end
        self.reader = RecordReader(DEFAULT_LIMITS)

    def read(self, timeout: float = 5.0) -> list[bytes]:
        end = time.monotonic() + timeout
        while True:
            for frames in self.reader.records():
                return frames
            left = end - time.monotonic()
            if left <= 0 or not self.end.poll(left):
                raise TimeoutError("the relay wrote nothing to this cluster")
            count = os.readv(self.end.fileno(), [self.reader.buffer()])
            if count == 0:
                raise EOFError("the relay closed this pipe")
            self.reader.advance(count)

    def write(self, frames: list[bytes]) -> None:
        os.writev(self.end.fileno(), pack(frames))


@dataclass
class Machine:
    """The relay's pieces on a core, and the test's stand-in for the bridge."""

    core: RelayCore
    router: zmq.Socket[Any]
    peer: bytes
    relay: ClusterRelay
    pipes: list[PipeConn]
    clusters: list[Cluster]
    delivered: queue.Queue[tuple[PipeConn, Message]] = field(default_factory=queue.Queue)
    closed: queue.Queue[tuple[PipeConn, Exception | None]] = field(default_factory=queue.Queue)

    def routes(self, *, ready: tuple[int, ...] = (0, 1), down: dict[int, int] | None = None) -> None:
        """Publish a table: cluster i runs shard i on pipe i; ``down`` = {cluster: shard down}."""
        serving = {}
        for cid, pipe in enumerate(self.pipes):
            gone = {down[cid]: ("disconnected", 12.0)} if down and cid in down else {}
            serving[cid] = Serving(
                cluster=cid,
                state="ready" if cid in ready else "starting",
                pipe=pipe if cid in ready else None,
                down=gone,
            )
        self.relay.routes = RouteTable(
            total_shards=2, everyone=(0, 1), mine=frozenset(serving), serving=serving, owners=dict(serving)
        )

    def send(self, msg: Message | list[bytes]) -> None:
        frames = msg if isinstance(msg, list) else encode(msg)
        self.router.send_multipart([self.peer, *frames])

    def receive(self, timeout: float = 5.0) -> Message:
        if not self.router.poll(int(timeout * 1000)):
            raise TimeoutError("the relay answered nothing")
        frames = self.router.recv_multipart()
        assert frames[0] == self.peer
        return decode(frames[1:])


def eval_frames(request_id: int, *, deadline_in: float = 5.0, **fields: Any) -> list[bytes]:
    return encode(EvalRequest(id=request_id, deadline=time.time() + deadline_in, script="1+1", **fields))


@pytest.fixture
def machine() -> Iterator[Machine]:
    core = RelayCore(name="test-relay")
    core.start()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"machine-1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    delivered: queue.Queue[tuple[PipeConn, Message]] = queue.Queue()
    relay = ClusterRelay(core, lambda conn, msg: delivered.put((conn, msg)))
    link: SocketLink

    def on_frames(frames: list[bytes]) -> None:  # what the client's core handler does, in short
        header = read_header(frames)
        post = lambda frames, reply_to: link.post(frames)  # noqa: E731
        if header["type"] == "eval":
            relay.dispatch_eval(eval_route(header, frames), post)
        else:
            msg = decode_header(header, frames)
            assert isinstance(msg, GuildRequest)
            relay.dispatch_guild(msg, post)

    link = SocketLink(core, dealer, on_frames)
    core.submit(link.attach)
    closed: queue.Queue[tuple[PipeConn, Exception | None]] = queue.Queue()
    mp = multiprocessing.get_context("spawn")
    pipes, clusters = [], []
    for cid in range(2):
        here, there = mp.Pipe(duplex=True)
        conn = PipeConn(
            core, here, on_frames=relay.from_pipe, on_closed=lambda c, e: closed.put((c, e)), name=f"cluster {cid}"
        )
        conn.start()
        pipes.append(conn)
        clusters.append(Cluster(there))
    link.send(encode(Heartbeat(sent_at=0.0, ready=True)))  # the ROUTER learns the DEALER's routing id
    assert router.poll(5000)
    peer = router.recv_multipart()[0]
    m = Machine(core, router, peer, relay, pipes, clusters, delivered, closed)
    m.routes()
    try:
        yield m
    finally:
        done = threading.Event()
        core.submit(lambda: (link.detach(), done.set()))
        done.wait(5)
        core.stop()
        dealer.close(0)
        router.close(0)
        ctx.term()


def answer(machine: Machine, cid: int, result: bytes = b"2") -> int:
    """Read the eval the relay forwarded to cluster ``cid`` and answer it; the forwarded id."""
    cluster = machine.clusters[cid]
    header = orjson.loads(cluster.read()[0])
    assert header["type"] == "eval" and "clusters" not in header
    cluster.write(answer_frames(header["id"], True, result))
    return int(header["id"])


def test_an_eval_fans_out_to_every_ready_pipe_and_comes_back_as_one_reply(machine: Machine) -> None:
    machine.send(eval_frames(7))
    for cid, cluster in enumerate(machine.clusters):
        header = orjson.loads(cluster.read()[0])
        cluster.write(answer_frames(header["id"], True, dump(cid * 10)))
    reply = machine.receive()
    assert isinstance(reply, EvalReply) and reply.reply_to == 7
    assert [(s.cluster, s.ok) for s in reply.slots] == [(0, True), (1, True)]
    assert [load(r) for r in reply.results] == [0, 10]
    assert machine.relay.in_flight == 0


def test_a_big_result_is_forwarded_as_the_same_bytes(machine: Machine) -> None:
    big = dump({"blob": "x" * 3_000_000})
    machine.send(eval_frames(1))
    for cid, cluster in enumerate(machine.clusters):
        header = orjson.loads(cluster.read()[0])
        cluster.write(answer_frames(header["id"], True, big if cid == 0 else b"1"))
    reply = machine.receive()
    assert isinstance(reply, EvalReply)
    assert reply.results[0] == big and reply.results[1] == b"1"


def test_a_silent_cluster_costs_its_own_slot_at_the_deadline(machine: Machine) -> None:
    machine.send(eval_frames(3, deadline_in=1.0))
    header = orjson.loads(machine.clusters[0].read()[0])
    machine.clusters[0].write(answer_frames(header["id"], True, b"2"))
    machine.clusters[1].read()  # and never answered
    started = time.monotonic()
    reply = machine.receive(timeout=3)
    assert 0.5 < time.monotonic() - started < 1.0  # a hop answers a little before its caller gives up
    assert isinstance(reply, EvalReply)
    assert [(s.cluster, s.ok) for s in reply.slots] == [(0, True), (1, False)]
    assert load(reply.results[1])["type"] == "RequestTimeout"


def test_a_cluster_not_ready_fails_its_slot_at_once_and_a_down_shard_fails_guild_evals(machine: Machine) -> None:
    machine.routes(ready=(0,))
    machine.send(eval_frames(4))
    answer(machine, 0)
    reply = machine.receive()
    assert isinstance(reply, EvalReply) and [s.ok for s in reply.slots] == [True, False]
    assert "cluster 1 is starting, not ready" in load(reply.results[1])["message"]

    machine.routes(down={1: 1})
    machine.send(eval_frames(5, clusters=(1,), guild_id=GUILD_ON_SHARD_1))
    reply = machine.receive()
    assert isinstance(reply, EvalReply) and [s.ok for s in reply.slots] == [False]
    assert "shard 1 of cluster 1, which is disconnected" in load(reply.results[0])["message"]


def test_a_dead_cluster_mid_eval_fails_its_slot_with_the_error_it_is_given(machine: Machine) -> None:
    machine.send(eval_frames(6))
    answer(machine, 0)
    machine.clusters[1].read()
    machine.core.submit(machine.relay.fail_pipe, machine.pipes[1], ConnectionLost("cluster 1 exited (code -9)"))
    reply = machine.receive()
    assert isinstance(reply, EvalReply) and [s.ok for s in reply.slots] == [True, False]
    assert "exited (code -9)" in load(reply.results[1])["message"]


def test_guild_requests_go_to_the_shards_cluster_and_time_out_alone(machine: Machine) -> None:
    request = GuildRequest(id=11, deadline=time.time() + 5, guild_id=GUILD_ON_SHARD_1, data=dump({"q": 1}))
    machine.send(request)
    forwarded = decode(machine.clusters[1].read())
    assert isinstance(forwarded, GuildRequest) and forwarded.data == request.data
    machine.clusters[1].write(encode(Reply(reply_to=forwarded.id, data=dump("pong"))))
    reply = machine.receive()
    assert isinstance(reply, Reply) and reply.reply_to == 11 and load(reply.data) == "pong"

    machine.send(GuildRequest(id=12, deadline=time.time() + 0.5, guild_id=0, data=dump(None)))
    machine.clusters[0].read()  # never answered
    reply = machine.receive()
    assert reply.type == "error" and reply.reply_to == 12  # type: ignore[union-attr]
    assert "request to cluster 0: no answer within" in reply.error.message  # type: ignore[union-attr]
    assert machine.relay.in_flight == 0


def test_what_is_not_an_answer_goes_to_the_manager_decoded(machine: Machine) -> None:
    machine.clusters[1].write(encode(Heartbeat(sent_at=1.5, ready=True)))
    conn, msg = machine.delivered.get(timeout=5)
    assert conn is machine.pipes[1] and isinstance(msg, Heartbeat) and msg.ready


def test_a_pipe_out_of_step_is_dropped_and_the_other_serves_on(machine: Machine) -> None:
    os.write(machine.clusters[0].end.fileno(), b"\x00\x00\x00\x08\x00\x00\x00\x05garbage!")
    conn, error = machine.closed.get(timeout=5)
    assert conn is machine.pipes[0] and "frame table runs past its end" in str(error)
    assert not machine.pipes[0].open
    machine.send(eval_frames(9, clusters=(1,)))
    answer(machine, 1)
    reply = machine.receive()
    assert isinstance(reply, EvalReply) and [s.ok for s in reply.slots] == [True]


def test_many_evals_in_one_burst_come_back_batched_and_complete(machine: Machine) -> None:
    for request_id in range(100, 164):
        machine.send(eval_frames(request_id))
    for cid in (0, 1):
        for _ in range(64):
            answer(machine, cid)
    got: set[int] = set()
    while len(got) < 64:
        msg = machine.receive()
        inner = [decode(frames) for frames in msg.messages()] if msg.type == "batch" else [msg]  # type: ignore[union-attr]
        for reply in inner:
            assert isinstance(reply, EvalReply) and all(s.ok for s in reply.slots)
            got.add(reply.reply_to)
    assert got == set(range(100, 164))


def test_core_timers_run_in_order_and_cancelled_ones_do_not(machine: Machine) -> None:
    fired: queue.Queue[str] = queue.Queue()
    core = machine.core

    def schedule() -> None:
        core.call_later(0.2, fired.put, "late")
        core.call_later(0.05, fired.put, "early")
        core.call_later(0.1, fired.put, "never").cancel()

    core.submit(schedule)
    assert [fired.get(timeout=2), fired.get(timeout=2)] == ["early", "late"]
    with pytest.raises(queue.Empty):
        fired.get(timeout=0.3)


def test_record_reader_refuses_a_record_over_the_limit_before_buffering_it() -> None:
    from zmqcross.protocol import Limits

    reader = RecordReader(Limits(max_message_bytes=1000, max_frames=4))
    buffer = reader.buffer()
    buffer[:4] = (10_000_000).to_bytes(4, "big")
    reader.advance(4)
    with pytest.raises(ProtocolError, match="over the limit"):
        list(reader.records())


def test_a_message_with_an_empty_frame_reaches_the_cluster_and_the_core_serves_on(machine: Machine) -> None:
    # A handover step with no fingerprints ends in an empty frame: once, writing it spun the core forever.
    assert machine.pipes[0].send(Handover(step="record", cluster_id=0))
    got = decode(machine.clusters[0].read())
    assert isinstance(got, Handover) and got.step == "record" and got.fingerprints == b""
    machine.send(eval_frames(21))
    answer(machine, 0)
    answer(machine, 1)
    reply = machine.receive()
    assert isinstance(reply, EvalReply) and [s.ok for s in reply.slots] == [True, True]


def test_cancelled_timers_do_not_pile_up_in_the_heap(machine: Machine) -> None:
    core = machine.core
    sizes: queue.Queue[int] = queue.Queue()

    def churn() -> None:
        for _ in range(10_000):  # an eval answered long before its deadline, 10,000 times
            core.call_later(60.0, lambda: None).cancel()
        sizes.put(len(core._timers))

    core.submit(churn)
    assert sizes.get(timeout=5) < 200


def replies(machine: Machine, count: int) -> dict[int, EvalReply]:
    """The next ``count`` eval replies, by the eval they answer, whether batched or not."""
    got: dict[int, EvalReply] = {}
    while len(got) < count:
        msg = machine.receive()
        inner = [decode(frames) for frames in msg.messages()] if msg.type == "batch" else [msg]  # type: ignore[union-attr]
        for reply in inner:
            assert isinstance(reply, EvalReply)
            got[reply.reply_to] = reply
    return got


def test_one_record_of_answers_fills_each_evals_own_slot(machine: Machine) -> None:
    # A cluster answers what it ran in one burst as one record; each answer goes to its own
    # eval, and one for an eval this pipe was never sent is ignored without losing the rest.
    machine.send(eval_frames(51))
    machine.send(eval_frames(52))
    ids = [[orjson.loads(cluster.read()[0])["id"] for _ in range(2)] for cluster in machine.clusters]
    machine.clusters[0].write(
        answers_frames([(ids[0][1], True, b"520"), (999_999, True, b"666"), (ids[0][0], True, b"510")])
    )
    machine.clusters[1].write(answers_frames([(ids[1][0], True, b"511"), (ids[1][1], False, b"521")]))
    got = replies(machine, 2)
    assert got[51].results == (b"510", b"511") and [s.ok for s in got[51].slots] == [True, True]
    assert got[52].results == (b"520", b"521") and [s.ok for s in got[52].slots] == [True, False]
    assert machine.relay.in_flight == 0


def test_a_malformed_reply_is_dropped_and_its_cluster_answers_at_the_deadline(machine: Machine) -> None:
    machine.send(eval_frames(31, deadline_in=1.0))
    answer(machine, 0)
    header = orjson.loads(machine.clusters[1].read()[0])
    bad = answer_frames(header["id"], True, b"2")
    machine.clusters[1].write([bad[0]])  # a head with no result frame
    reply = machine.receive(timeout=3)
    assert isinstance(reply, EvalReply) and [s.ok for s in reply.slots] == [True, False]
    assert load(reply.results[1])["type"] == "RequestTimeout"


def test_an_answer_fills_only_its_own_pipes_slot_and_only_once(machine: Machine) -> None:
    machine.send(eval_frames(41, deadline_in=1.0, clusters=[0]))
    header = orjson.loads(machine.clusters[0].read()[0])
    machine.clusters[1].write(answer_frames(header["id"], True, b"666"))  # not asked: ignored
    machine.clusters[0].write(answer_frames(header["id"], True, b"2"))
    machine.clusters[0].write(answer_frames(header["id"], True, b"3"))  # late: ignored
    reply = machine.receive()
    assert isinstance(reply, EvalReply) and [(s.cluster, s.ok) for s in reply.slots] == [(0, True)]
    assert reply.results == (b"2",)
    machine.send(eval_frames(42))
    assert answer(machine, 0) != header["id"]  # the relay moved on; nothing else was sent
    answer(machine, 1)
    assert isinstance(machine.receive(), EvalReply)


def test_a_result_over_the_frame_limit_becomes_an_error_in_its_slot(machine: Machine) -> None:
    machine.send(eval_frames(43))
    answer(machine, 0)
    answer(machine, 1, b"1" * (DEFAULT_LIMITS.max_frame_bytes + 1))
    reply = machine.receive()
    assert isinstance(reply, EvalReply) and [s.ok for s in reply.slots] == [True, False]
    error = load(reply.results[1])
    assert error["type"] == "MessageTooLarge" and "(max_frame_bytes)" in error["message"]
