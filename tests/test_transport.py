"""The write coalescing of transport.py: Cork and Outbox, fed by hand on a real event loop."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import zmq

from zmqcross import protocol as p
from zmqcross._transport import CORK, Outbox, new_context


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
