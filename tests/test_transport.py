"""transport.py fed by hand on a real event loop: write coalescing (Cork, Outbox), receiving within limits."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from zmqcross import protocol as p
from zmqcross import _transport
from zmqcross._transport import CORK, DISCARD_SLICE, Outbox, Oversized, Pump, RoutedReceiver, new_context


def reply(n: int) -> list[bytes]:
    return p.encode(p.Reply(reply_to=n, data=b"1"))


def opened(sent: list[tuple[str, list[bytes]]]) -> list[tuple[str, list[int]]]:
    """Each send as (peer, reply ids it carried)."""
    out = []
    for key, frames in sent:
        msg = p.decode(frames)
        inner = [p.decode(f) for f in msg.messages()] if isinstance(msg, p.Batch) else [msg]
        out.append((key, [m.reply_to for m in inner]))  # type: ignore[union-attr]
    return out


async def test_a_lone_message_leaves_at_once_and_a_burst_leaves_batched() -> None:
    sent: list[tuple[str, list[bytes]]] = []
    box = Outbox(lambda key, frames: sent.append((key, frames)))
    box.put("a", reply(1))
    assert opened(sent) == [("a", [1])]  # not a loop turn later
    for n in (2, 3, 4):
        box.put("a", reply(n))
    box.put("b", reply(5))  # another peer's first message of this turn: at once too
    assert opened(sent) == [("a", [1]), ("b", [5])]
    await asyncio.sleep(0)
    assert opened(sent) == [("a", [1]), ("b", [5]), ("a", [2, 3, 4])]
    box.put("a", reply(6))  # a new turn: at once again
    assert opened(sent)[-1] == ("a", [6])


async def test_under_the_cork_everything_waits_for_its_release_in_order() -> None:
    sent: list[tuple[str, list[bytes]]] = []
    box = Outbox(lambda key, frames: sent.append((key, frames)))
    with CORK:
        box.put("a", reply(1))
        box.put("b", reply(2))
        box.put("a", reply(3))
        assert sent == []
        box.flush_key("b")  # what a direct send to b does first: b's held messages keep their place
        assert opened(sent) == [("b", [2])]
    assert opened(sent) == [("b", [2]), ("a", [1, 3])]


async def test_one_failing_writer_does_not_hold_back_the_others() -> None:
    sent: list[tuple[str, list[bytes]]] = []

    def broken(key: str, frames: list[bytes]) -> None:
        raise RuntimeError("socket gone")

    first, second = Outbox(broken), Outbox(lambda key, frames: sent.append((key, frames)))
    with CORK:
        first.put("x", reply(1))
        second.put("y", reply(2))
    assert opened(sent) == [("y", [2])]
    assert not CORK.held


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_new_contexts_run_their_io_thread_under_sched_batch() -> None:
    before = set(os.listdir("/proc/self/task"))  # other tests' contexts may have threads of their own
    ctx = new_context()
    sock = ctx.socket(zmq.DEALER)  # libzmq starts its threads with the first socket
    try:
        def policy(tid: str) -> int:
            return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[38])

        def io_threads() -> list[str]:
            return [
                tid for tid in set(os.listdir("/proc/self/task")) - before
                if Path(f"/proc/self/task/{tid}/comm").read_text().startswith("ZMQbg/IO")
            ]

        for _ in range(100):  # each thread names itself once it runs
            if io_threads():
                break
            time.sleep(0.01)
        assert io_threads() and all(policy(tid) == os.SCHED_BATCH for tid in io_threads())
        assert policy(str(os.getpid())) != os.SCHED_BATCH  # the caller's own thread is left alone
    finally:
        sock.close(0)
        ctx.term()


# ---------------------------------------------------------------- RoutedReceiver and Pump


@pytest.fixture
def router_pair() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    """A ROUTER and a DEALER connected over loopback TCP, both plain sockets."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()


def received(router: zmq.Socket[Any], receiver: RoutedReceiver) -> tuple[list[object], int]:
    """Call ``receiver`` until it returns something; that, and how many calls returned None."""
    assert router.poll(5000)
    nones = 0
    while (result := receiver(router)) is None:
        nones += 1
    return ([result] if isinstance(result, Oversized) else [result[1]]), nones


def test_a_message_within_the_limits_comes_whole(router_pair) -> None:
    router, dealer = router_pair
    dealer.send_multipart([b"head", b"a", b"bc"])
    receiver = RoutedReceiver(p.Limits(max_frames=3, max_message_bytes=7, max_header_bytes=4))
    assert received(router, receiver) == ([[b"head", b"a", b"bc"]], 0)


def test_too_many_frames_are_read_in_slices_and_dropped(router_pair) -> None:
    router, dealer = router_pair
    dealer.send_multipart([b"head"] + [b"x"] * 5000)
    dealer.send_multipart([b"next"])
    receiver = RoutedReceiver(p.Limits(max_frames=4))
    [result], nones = received(router, receiver)
    assert isinstance(result, Oversized) and result.reason == "message has 5001 frames; the limit is 4"
    assert nones == (5001 - 4) // DISCARD_SLICE  # one call per slice, none kept meanwhile
    assert not receiver.discarding
    assert received(router, receiver) == ([[b"next"]], 0)  # the socket is at a message boundary again


@pytest.mark.parametrize(
    ("frames", "total"),
    [([b"h", b"x" * 60, b"y" * 60], 121), ([b"h", b"x" * 200, b"y", b"z"], 203)],
    ids=["by the last frame", "with frames still to come"],
)
def test_too_many_bytes_are_dropped(router_pair, frames: list[bytes], total: int) -> None:
    router, dealer = router_pair
    dealer.send_multipart(frames)
    receiver = RoutedReceiver(p.Limits(max_message_bytes=100, max_frame_bytes=1000, max_header_bytes=100))
    [result], _ = received(router, receiver)
    assert isinstance(result, Oversized)
    assert result.reason == f"message is {total} bytes; the limit is 100 (max_message_bytes)"


async def test_the_pump_lets_the_loop_run_while_it_discards(router_pair, monkeypatch) -> None:
    router, dealer = router_pair
    monkeypatch.setattr(_transport, "DRAIN_SECONDS", 0.0)  # one receive call per loop turn
    handled: list[object] = []
    turns_before: list[int] = []
    turns = 0

    def handle(message: object) -> None:
        handled.append(message)
        turns_before.append(turns)

    pump = Pump(router, handle, receive=RoutedReceiver(p.Limits(max_frames=4)), name="test")
    pump.start()
    try:
        dealer.send_multipart([b"head"] + [b"x"] * (20 * DISCARD_SLICE))
        dealer.send_multipart([b"after"])
        while len(handled) < 2:
            await asyncio.sleep(0)
            turns += 1
            assert turns < 100_000, "the pump never finished"
    finally:
        pump.stop()
    oversized, after = handled
    assert isinstance(oversized, Oversized) and "the limit is 4" in oversized.reason
    assert after[1] == [b"after"]  # type: ignore[index]
    # Other work ran between the slices of the discard: 20 slices, one per drain, and a drain
    # runs once or twice a loop turn (scheduled, and again when the socket's FD signals).
    assert turns_before[0] >= 5


async def test_the_pump_looks_before_it_reads_and_never_reads_an_empty_socket(router_pair) -> None:
    # A read of an empty socket raises zmq.Again: 8.5 us here against 2 us to look at
    # ZMQ_EVENTS first, and the bridge's ROUTER pump drains once per machine's reply.
    router, dealer = router_pair
    handled: list[list[bytes]] = []
    empty_reads = 0

    def receive(sock: zmq.Socket[Any]) -> list[bytes]:
        nonlocal empty_reads
        try:
            return _transport.receive_frames(sock)
        except zmq.Again:
            empty_reads += 1
            raise

    pump = Pump(router, handled.append, receive=receive, name="test")
    pump.start()
    try:
        for n in range(5):
            dealer.send_multipart([b"m", str(n).encode()])
            async with asyncio.timeout(5):
                while len(handled) <= n:
                    await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # drains scheduled after the last message have run
    finally:
        pump.stop()
    assert [frames[1:] for frames in handled] == [[b"m", str(n).encode()] for n in range(5)]
    assert empty_reads == 0
