"""Pipe framing between a machine and its clusters: records survive any split, bad lengths are refused."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from zmqcross import protocol as p
from zmqcross._records import RecordReader
from zmqcross._relaying import read_answers
from zmqcross._transport import CORK
from zmqcross.cluster._pipe import PipeEnd, open_pipe, pack, unpack
from zmqcross.protocol import Limits


def feed(end: PipeEnd, data: bytes, cuts: list[int]) -> None:
    """Deliver ``data`` the way a transport would, in pieces cut at ``cuts``."""
    position = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        piece = data[position:cut]
        while piece:
            buffer = end.get_buffer(len(piece))
            n = min(len(buffer), len(piece))
            buffer[:n] = piece[:n]
            end.buffer_updated(n)
            piece = piece[n:]
        position = max(position, cut)


def test_pack_and_unpack() -> None:
    frames = [b"header", b"", b"x" * 1000]
    record = b"".join(pack(frames))
    (length,) = struct.unpack(">I", record[:4])
    assert length == len(record) - 4
    assert unpack(memoryview(record)[4:]) == frames


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    st.lists(st.integers(0, 5000), max_size=12),
    st.integers(1, 4),
)
def test_records_survive_any_split(bodies: list[bytes], cuts: list[int], copies: int) -> None:
    got: list[p.Message] = []
    end = PipeEnd(got.append, lambda exc: None, name="test")
    sent = [p.Send(data=body) for body in bodies] * copies
    stream = b"".join(piece for msg in sent for piece in pack(p.encode(msg)))
    feed(end, stream, [c % (len(stream) + 1) for c in cuts])
    assert got == sent


def test_big_record_grows_the_buffer() -> None:
    got: list[p.Message] = []
    end = PipeEnd(got.append, lambda exc: None, name="test")
    big = p.Reply(reply_to=1, data=b"7" * 5_000_000)
    feed(end, b"".join(pack(p.encode(big))), [100, 70_000, 3_000_000])
    assert got == [big]


async def test_bogus_length_is_refused_before_buffering() -> None:
    closed: list[object] = []
    here, there = multiprocessing.Pipe()
    limits = Limits(max_frame_bytes=1024, max_message_bytes=4096, max_header_bytes=512)
    end = await open_pipe(here, PipeEnd(lambda m: None, closed.append, limits=limits, name="test"))
    os.write(there.fileno(), struct.pack(">I", 2**31))  # claims a 2 GiB record
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed and not end.open
    there.close()


async def test_corrupt_frame_table_closes_the_pipe() -> None:
    closed: list[object] = []
    here, there = multiprocessing.Pipe()
    end = await open_pipe(here, PipeEnd(lambda m: None, closed.append, name="test"))
    os.write(there.fileno(), struct.pack(">II", 4, 99))  # a 4-byte record claiming 99 frames
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed and not end.open
    there.close()


async def records_from(there: multiprocessing.connection.Connection, count: int) -> list[list[bytes]]:
    """The next ``count`` records written to the far end ``there`` of a pipe."""
    reader = RecordReader(p.DEFAULT_LIMITS)
    got: list[list[bytes]] = []
    async with asyncio.timeout(5):
        while len(got) < count:
            if not there.poll():
                await asyncio.sleep(0.005)
                continue
            buffer = reader.buffer()
            n = os.readv(there.fileno(), [buffer])
            reader.advance(n)
            got.extend(reader.records())
    return got


def shape(record: list[bytes]) -> object:
    """A record as the answers it carries, or its message type."""
    answers = read_answers(record)
    return answers if answers is not None else p.decode(record).type


async def test_answers_written_in_one_burst_leave_as_one_record_in_order() -> None:
    here, there = multiprocessing.Pipe()
    end = await open_pipe(here, PipeEnd(lambda m: None, lambda exc: None, name="test"))
    with CORK:  # as while a cluster handles one read's evals
        end.send_answer(1, True, b"10")
        end.send_answer(2, False, b"20")
        end.send(p.Heartbeat(sent_at=1.0, ready=True))  # answers before it leave before it
        end.send_answer(3, True, b"30")
    end.send_answer(4, True, b"40")  # outside a burst: at once, alone
    got = await records_from(there, 4)
    assert [shape(record) for record in got] == [
        [(1, True, b"10"), (2, False, b"20")],
        "heartbeat",
        [(3, True, b"30")],
        [(4, True, b"40")],
    ]
    end.close()
    there.close()


async def test_a_record_of_answers_stays_within_the_frame_and_size_limits() -> None:
    here, there = multiprocessing.Pipe()
    limits = Limits(max_frames=3, max_frame_bytes=1000, max_message_bytes=1500, max_header_bytes=500)
    end = await open_pipe(here, PipeEnd(lambda m: None, lambda exc: None, limits=limits, name="test"))
    with CORK:
        for n in range(5):  # two results a record by frames (head + 2)
            end.send_answer(n, True, b"x")
        for n in range(5, 8):  # two results of 800 bytes are over 1500 with their head
            end.send_answer(n, True, b"y" * 800)
    got = await records_from(there, 5)
    counts = [len(shape(record)) for record in got]  # type: ignore[arg-type]
    assert counts == [2, 2, 2, 1, 1]  # the last "x" shares a record with the first "y"
    assert [answer[0] for record in got for answer in shape(record)] == list(range(8))  # type: ignore[union-attr]
    assert all(sum(map(len, record)) <= limits.max_message_bytes for record in got)
    end.close()
    there.close()
